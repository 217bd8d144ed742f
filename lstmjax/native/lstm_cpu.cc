// lstmjax/native/lstm_cpu.cc -- hand-fused single-layer LSTM recurrences for the CPU (AVX-512, on
// XLA's own thread pool), exposed as two XLA FFI handlers so that jax.jit can call them as custom
// calls (`jax.ffi.ffi_call`). Build (with ffi_support.h and lstm_simd.h beside it):
//   g++ -O3 -march=native -shared -fPIC -std=c++17 -I<jax.ffi.include_dir()> -o liblstm.so lstm_cpu.cc
// Requires AVX-512F (the caller checks the CPU before loading the library).
//
// Model. All arrays float32, C (row-major) order. Gate order (i, f, g, o) in blocks of H along the
// 4H axis ("original layout": column k*H + j is gate k of hidden unit j). For t = 0 .. T-1, with
// h_{-1} = h0, c_{-1} = c0:
//   z_t = x_t @ w_x + h_{t-1} @ w_h + b                       (B, 4H)
//   i = sigmoid(z_i)  f = sigmoid(z_f)  g = tanh(z_g)  o = sigmoid(z_o)
//   c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t)          where valid[t, b] != 0
//   c_t = c_{t-1};               h_t = h_{t-1}                where valid[t, b] == 0 (the state is held)
//   ys[t] = h_t (the state: a caller that wants zero outputs on held steps masks ys itself)
//
// LstmForwardHandler
//   args:    xs (T,B,D), valid (T,B) uint8, w_x (D,4H), w_h (H,4H), b (4H,), h0 (B,H), c0 (B,H)
//   attrs:   threads (int32), save (int32, 0 or 1)
//   results: ys (T,B,H), c_last (B,H) = c_{T-1}, gates, cs
//            save = 1: gates (T,B,4H) = post-activation [i f g o] in original layout (on a held step:
//                      computed from the held state, and not used by the backward), cs (T,B,H) = c_t
//            save = 0: gates and cs must have shape (0,) and are not written (inference path: the
//                      workspace is O(weights + threads), never O(T)); c_last doubles as the running c.
// LstmBackwardHandler (backpropagation through time, no weight gradients: the caller computes
// those as large matrix products from dz)
//   args:    w_h (H,4H), gates (T,B,4H), cs (T,B,H), c0 (B,H), valid (T,B) uint8, ct_ys (T,B,H), ct_h (B,H),
//            ct_c (B,H) (gates, cs and valid as given to and saved by the forward; ct_* the cotangents of
//            ys, h_{T-1}, c_{T-1})
//   attrs:   threads (int32)
//   results: dz (T,B,4H) = d loss / d z_t in original layout, dh0 (B,H), dc0 (B,H). dz may be the
//            same buffer as gates (lstmjax aliases them): each unit's gates at step t are read just
//            before its dz_t is written there, and never again.
//   For t = T-1 .. 0:
//     dh_t = ct_ys[t] + (t == T-1 ? ct_h : dz_{t+1} @ w_h^T)
//     dc_t = (t == T-1 ? ct_c : dc_{t+1} * f_{t+1}) + dh_t * o_t * (1 - tanh(c_t)^2)
//     dz_i = dc_t g i (1-i), dz_f = dc_t c_{t-1} f (1-f), dz_g = dc_t i (1-g^2), dz_o = dh_t tanh(c_t) o (1-o)
//   dh0 = dz_0 @ w_h^T, dc0 = dc_0 * f_0. tanh(c_t) is recomputed from cs.
//   On a held step (valid[t, b] == 0) row b passes its cotangents through unchanged: dz_t = 0, the
//   cotangent of h_{t-1} is dh_t (kept aside in a per-call buffer, since the recurrent product of
//   the next step down overwrites it with dz_t @ w_h^T = 0) and that of c_{t-1} is the carried dc.
//
// Constraints (checked; a violation returns kInvalidArgument with a message naming the dimension,
// the value received and what is required): T >= 1; B >= 4 and B % 4 == 0; D >= 1; H >= 32 and
// H % 32 == 0; every buffer has exactly the rank and dimensions listed above; threads in [1, 256];
// save in {0, 1}. (The Python wrapper pads B and H, so these are not hit in normal use.)
//
// Threading. No threads of our own and no OpenMP: the work is shared out over XLA's intra-op thread
// pool (ffi::ThreadPool), with at most `threads` workers (the attribute is the caller's cap; the
// pool's size caps it too). With nb = B/4 blocks of 4 rows and nt workers, worker k owns row blocks
// [k*nb/nt, (k+1)*nb/nt) (possibly none) for every step. Rows are independent in the recurrence,
// so the time loops need no barrier; the weight packing before them is shared out by panels. The
// calling thread works too and items are handed out by an atomic counter, so a call completes
// even when every pool thread is busy (parallel_for). (An earlier version used OpenMP: its worker
// threads, a second runtime beside PyTorch's, made PyTorch's nn.LSTM in the same process twice as
// slow, 12.9 -> 25.9 ms a training step at H = 128.) Re-entrant and thread-safe: no static or
// global state; each call allocates its own workspace (packed weights, per-worker scratch) with
// aligned_alloc and frees it (kResourceExhausted if that fails), so XLA may run several of these
// calls at once.
//
// Column layout inside the forward: for hidden-unit block p (16 units) the packed [w_x; w_h]
// panel p holds the 64 columns [i(16 units) f(16) g(16) o(16)], so one 64-column panel of
// pre-activations holds all four gates of 16 units; it is computed into a small per-thread scratch
// (still in L1) and the nonlinearities and state update run right away, writing the gates to their
// original-layout positions. The pre-activations are never written to T-sized arrays. The backward
// recurrent product dz_{t+1} @ w_h^T uses w_h^T packed into 32-column panels (rows in original
// order, since dz is stored in original layout), each followed at once by the elementwise step of
// those 32 units.
//
// Numerics. exp is a Cephes-style polynomial (argument clamped to [-87, 87], relative error about
// 1e-7); sigmoid = 1/(1+exp(-x)) and tanh = 1 - 2/(1+exp(2x)) use it with a 14-bit reciprocal plus
// one Newton step. Measured against float64: sigmoid 2e-7 relative; tanh 3e-7 absolute (1.4e-6
// relative for |x| > 0.1; near 0 only the absolute error is small, the form 1 - 2s cancels).
// Saturation: sigmoid(+inf) = 1, sigmoid(-inf) = 0 (to within 2e-38), tanh(+-inf) = +-1 exactly.
// NaN propagates: the clamp in exp is written so that MAXPS/MINPS return the NaN operand, so a NaN
// anywhere in the inputs gives NaN (never a finite number) in every output it affects, as in a
// plain JAX implementation. Overall the results differ from a float64 computation about as much as
// a plain float32 one does (max abs ~1e-6 for well-conditioned sizes).
// The MXCSR is left as the caller set it (on XLA's threads subnormals are flushed to zero, as in
// XLA's own kernels).
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "ffi_support.h"
#include "lstm_simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kFwdMR = 8;  // forward micro-kernel rows (x 2 zmm = 32 columns)
constexpr int kBwdMR = 8;  // backward recurrent micro-kernel rows (x 2 zmm = 32 columns)

using namespace lstm_simd;        // exp512, sigm512, tanh512, ukr (lstm_simd.h)
using namespace native_support;  // Workspace, check_*, parallel_for (ffi_support.h)

// ---------------------------------------------------------------- forward
// One row block of MR rows at step t, hidden-unit panel p: pre-activations of the panel's 64
// interleaved columns into Z (MR x 64), then the nonlinearities and state update (rows whose
// vt entry is 0 keep their state).
template <int MR>
__attribute__((always_inline)) inline void fwd_block(int D, int H, const float* xt, const uint8_t* vt, const float* hp,
                                                     const float* Wpp, const float* bip, float* Z, float* cst,
                                                     float* yt, float* gt, float* cst_save, int p) {
  const long G4 = 4L * H;
  for (int cs = 0; cs < 64; cs += 32)
    ukr<MR, 2>(D, xt, D, Wpp + cs, 64, H, hp, H, Wpp + (size_t)D * 64 + cs, 64, bip + cs, 0, Z + cs, 64);
  for (int r = 0; r < MR; ++r) {
    const float* z = Z + r * 64;
    const size_t hi = (size_t)r * H + p * 16;
    __m512 ig = sigm512(_mm512_load_ps(z));
    __m512 fg = sigm512(_mm512_load_ps(z + 16));
    __m512 gg = tanh512(_mm512_load_ps(z + 32));
    __m512 og = sigm512(_mm512_load_ps(z + 48));
    __m512 c = _mm512_loadu_ps(cst + hi), h;
    if (vt[r]) {
      c = _mm512_fmadd_ps(fg, c, _mm512_mul_ps(ig, gg));
      h = _mm512_mul_ps(og, tanh512(c));
    } else {
      h = _mm512_loadu_ps(hp + hi);
    }
    _mm512_storeu_ps(cst + hi, c);
    _mm512_storeu_ps(yt + hi, h);
    if (gt) {
      float* g = gt + (size_t)r * G4 + p * 16;
      _mm512_storeu_ps(g, ig);
      _mm512_storeu_ps(g + H, fg);
      _mm512_storeu_ps(g + 2 * H, gg);
      _mm512_storeu_ps(g + 3 * H, og);
      _mm512_storeu_ps(cst_save + hi, c);
    }
  }
}

ffi::Error LstmForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::U8> valid, ffi::Buffer<ffi::F32> wx, ffi::Buffer<ffi::F32> wh,
                       ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                       int32_t threads, int32_t save, ffi::ResultBuffer<ffi::F32> ys,
                       ffi::ResultBuffer<ffi::F32> c_last, ffi::ResultBuffer<ffi::F32> gates,
                       ffi::ResultBuffer<ffi::F32> cs_out) {
  constexpr const char* fn = "LstmForward";
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "xs", xs, 3, "(T, B, D)"));
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "w_h", wh, 2, "(H, 4H)"));
  const int64_t T64 = xs.dimensions()[0], B64 = xs.dimensions()[1], D64 = xs.dimensions()[2],
                H64 = wh.dimensions()[0];
  NATIVE_RETURN_IF_ERROR(check_dims(fn, T64, B64, D64, H64, 4, "xs.shape[0]", "xs.shape[1]", "xs.shape[2]", "w_h.shape[0]"));
  NATIVE_RETURN_IF_ERROR(check_threads(fn, threads));
  if (save != 0 && save != 1)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      std::string(fn) + ": attribute save = " + std::to_string(save) + " must be 0 or 1");
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "valid", valid, {T64, B64}, "(T, B)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "w_x", wx, {D64, 4 * H64}, "(D, 4H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "w_h", wh, {H64, 4 * H64}, "(H, 4H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "b", bias, {4 * H64}, "(4H,)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "h0", h0, {B64, H64}, "(B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "c0", c0, {B64, H64}, "(B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "result ys", *ys, {T64, B64, H64}, "(T, B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "result c_last", *c_last, {B64, H64}, "(B, H)"));
  if (save) {
    NATIVE_RETURN_IF_ERROR(check_shape(fn, "result gates", *gates, {T64, B64, 4 * H64}, "(T, B, 4H)", " with save=1"));
    NATIVE_RETURN_IF_ERROR(check_shape(fn, "result cs", *cs_out, {T64, B64, H64}, "(T, B, H)", " with save=1"));
  } else {
    NATIVE_RETURN_IF_ERROR(check_shape(fn, "result gates", *gates, {0}, "empty", " with save=0"));
    NATIVE_RETURN_IF_ERROR(check_shape(fn, "result cs", *cs_out, {0}, "empty", " with save=0"));
  }
  const int T = (int)T64, B = (int)B64, D = (int)D64, H = (int)H64;
  const int G4 = 4 * H, KX = D + H, NP = H / 16;

  // workspace: packed [w_x; w_h] panels (NP x KX x 64), interleaved bias, per-thread Z scratch
  const size_t oWp = 0, oBI = oWp + round16((size_t)KX * G4), oZ = oBI + round16(G4),
               zsz = round16((size_t)kFwdMR * 64), total = oZ + (size_t)threads * zsz;
  Workspace ws(total);
  if (!ws.p) return allocation_error(fn, total);
  float* Wp = ws.p + oWp;
  float* BI = ws.p + oBI;
  const float* X = xs.typed_data();
  const uint8_t* V = valid.typed_data();
  const float* WX = wx.typed_data();
  const float* WH = wh.typed_data();
  const float* BS = bias.typed_data();
  const float* H0 = h0.typed_data();
  const float* C0 = c0.typed_data();
  float* Y = ys->typed_data();
  float* CL = c_last->typed_data();
  float* GT = save ? gates->typed_data() : nullptr;
  float* CS = save ? cs_out->typed_data() : nullptr;

  const int nt = workers_for(pool, threads);
  // ---- pack (16 interleaved columns = 16 contiguous original columns)
  parallel_for(pool, nt, NP, [&](int p) {
    for (int k = 0; k < KX; ++k) {
      const float* src = k < D ? WX + (size_t)k * G4 : WH + (size_t)(k - D) * G4;
      float* dst = Wp + ((size_t)p * KX + k) * 64;
      for (int g = 0; g < 4; ++g) _mm512_store_ps(dst + 16 * g, _mm512_loadu_ps(src + g * H + p * 16));
    }
    for (int g = 0; g < 4; ++g) _mm512_store_ps(BI + p * 64 + 16 * g, _mm512_loadu_ps(BS + g * H + p * 16));
  });
  // ---- the time loop: worker k owns row blocks [k*nb/nt, (k+1)*nb/nt) for every step
  parallel_for(pool, nt, nt, [&](int tid) {
    const RowRange rows = rows_of_worker(tid, nt, B);
    const int r0 = rows.first, BR = rows.count;
    float* Z = ws.p + oZ + (size_t)tid * zsz;
    float* cst = CL + (size_t)r0 * H;  // running c_t of these rows, in c_last
    if (BR > 0) std::memcpy(cst, C0 + (size_t)r0 * H, sizeof(float) * BR * H);
    for (int t = 0; t < T && BR > 0; ++t) {
      const float* xt = X + ((size_t)t * B + r0) * D;
      const uint8_t* vt = V + (size_t)t * B + r0;
      const float* hp = t ? Y + ((size_t)(t - 1) * B + r0) * H : H0 + (size_t)r0 * H;
      float* yt = Y + ((size_t)t * B + r0) * H;
      float* gt = GT ? GT + ((size_t)t * B + r0) * G4 : nullptr;
      float* csv = CS ? CS + ((size_t)t * B + r0) * H : nullptr;
      for (int p = 0; p < NP; ++p) {
        const float* Wpp = Wp + (size_t)p * KX * 64;
        const float* bip = BI + p * 64;
        int rb = 0;
        for (; rb + kFwdMR <= BR; rb += kFwdMR)
          fwd_block<kFwdMR>(D, H, xt + (size_t)rb * D, vt + rb, hp + (size_t)rb * H, Wpp, bip, Z, cst + (size_t)rb * H,
                            yt + (size_t)rb * H, gt ? gt + (size_t)rb * G4 : nullptr,
                            csv ? csv + (size_t)rb * H : nullptr, p);
        for (; rb < BR; rb += 4)  // remainder (BR % 4 == 0)
          fwd_block<4>(D, H, xt + (size_t)rb * D, vt + rb, hp + (size_t)rb * H, Wpp, bip, Z, cst + (size_t)rb * H,
                       yt + (size_t)rb * H, gt ? gt + (size_t)rb * G4 : nullptr, csv ? csv + (size_t)rb * H : nullptr,
                       p);
      }
    }
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------- backward
// Rows [0, BR) of C (ld H), columns q*32 .. q*32+31, = A (rows ld G4, K = G4) @ packed w_h^T panel q.
inline void bwd_rec(int BR, int G4, int H, const float* A, const float* Wtq, float* C) {
  int rb = 0;
  for (; rb + kBwdMR <= BR; rb += kBwdMR)
    ukr<kBwdMR, 2>(G4, A + (size_t)rb * G4, G4, Wtq, 32, 0, nullptr, 0, nullptr, 0, nullptr, 0, C + (size_t)rb * H, H);
  for (; rb < BR; rb += 4)
    ukr<4, 2>(G4, A + (size_t)rb * G4, G4, Wtq, 32, 0, nullptr, 0, nullptr, 0, nullptr, 0, C + (size_t)rb * H, H);
}

ffi::Error LstmBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> wh, ffi::Buffer<ffi::F32> gates, ffi::Buffer<ffi::F32> cs_in,
                        ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::U8> valid, ffi::Buffer<ffi::F32> ct_ys, ffi::Buffer<ffi::F32> ct_h,
                        ffi::Buffer<ffi::F32> ct_c, int32_t threads, ffi::ResultBuffer<ffi::F32> dz,
                        ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> dc0) {
  constexpr const char* fn = "LstmBackward";
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "w_h", wh, 2, "(H, 4H)"));
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "cs", cs_in, 3, "(T, B, H)"));
  const int64_t T64 = cs_in.dimensions()[0], B64 = cs_in.dimensions()[1], H64 = wh.dimensions()[0];
  NATIVE_RETURN_IF_ERROR(check_dims(fn, T64, B64, 1, H64, 4, "cs.shape[0]", "cs.shape[1]", "unused", "w_h.shape[0]"));
  NATIVE_RETURN_IF_ERROR(check_threads(fn, threads));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "w_h", wh, {H64, 4 * H64}, "(H, 4H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "gates", gates, {T64, B64, 4 * H64}, "(T, B, 4H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "cs", cs_in, {T64, B64, H64}, "(T, B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "c0", c0, {B64, H64}, "(B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "valid", valid, {T64, B64}, "(T, B)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "ct_ys", ct_ys, {T64, B64, H64}, "(T, B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "ct_h", ct_h, {B64, H64}, "(B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "ct_c", ct_c, {B64, H64}, "(B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "result dz", *dz, {T64, B64, 4 * H64}, "(T, B, 4H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "result dh0", *dh0, {B64, H64}, "(B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "result dc0", *dc0, {B64, H64}, "(B, H)"));
  const int T = (int)T64, B = (int)B64, H = (int)H64, G4 = 4 * H, NQ = H / 32;

  // workspace: w_h^T packed into NQ panels of (4H x 32): Wt[q][k][c] = w_h[q*32 + c][k]; then
  // `held` (B x H): the cotangent of h_t of each row whose step t is held, until step t-1 uses it
  const size_t oHeld = round16((size_t)G4 * H), total = oHeld + (size_t)B * H;
  Workspace ws(total);
  if (!ws.p) return allocation_error(fn, total);
  float* Wt = ws.p;
  float* HELD = ws.p + oHeld;
  const uint8_t* V = valid.typed_data();
  const float* WH = wh.typed_data();
  const float* GS = gates.typed_data();
  const float* CS = cs_in.typed_data();
  const float* C0 = c0.typed_data();
  const float* DY = ct_ys.typed_data();
  const float* DHT = ct_h.typed_data();
  const float* DCT = ct_c.typed_data();
  float* DZ = dz->typed_data();
  float* DH0 = dh0->typed_data();
  float* DC0 = dc0->typed_data();

  const int nt = workers_for(pool, threads);
  pack_transposed_panels(pool, nt, WH, H, G4, Wt);
  parallel_for(pool, nt, nt, [&](int tid) {
    const RowRange rows = rows_of_worker(tid, nt, B);
    const int r0 = rows.first, BR = rows.count;
    // dhr: the recurrent part of dh_t (ct_h at t = T-1), kept in dh0; dcr: dc_{t+1} * f_{t+1}
    // (ct_c at t = T-1), kept in dc0. Both end up holding the results.
    float* dhr = DH0 + (size_t)r0 * H;
    float* dcr = DC0 + (size_t)r0 * H;
    float* held = HELD + (size_t)r0 * H;
    // after the recurrent product into dhr's columns q*32 .. q*32+31: rows held at step s pass dh_s on
    auto pass_held = [&](const uint8_t* vs, int q) {
      for (int r = 0; r < BR; ++r)
        if (!vs[r])
          for (int k = 0; k < 32; k += 16)
            _mm512_storeu_ps(dhr + (size_t)r * H + q * 32 + k, _mm512_loadu_ps(held + (size_t)r * H + q * 32 + k));
    };
    if (BR > 0) {
      std::memcpy(dhr, DHT + (size_t)r0 * H, sizeof(float) * BR * H);
      std::memcpy(dcr, DCT + (size_t)r0 * H, sizeof(float) * BR * H);
    }
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int t = T - 1; t >= 0 && BR > 0; --t) {
      const size_t rowt = (size_t)t * B + r0;
      const float* Gt = GS + rowt * G4;
      float* Dt = DZ + rowt * G4;
      const float* Dn = DZ + (rowt + B) * G4;  // dz_{t+1} (only read when t < T-1)
      const float* Ct = CS + rowt * H;
      const float* Cp = t ? CS + (rowt - B) * H : C0 + (size_t)r0 * H;
      const float* Yt = DY + rowt * H;
      const uint8_t* vt = V + rowt;
      for (int q = 0; q < NQ; ++q) {
        if (t < T - 1) {
          bwd_rec(BR, G4, H, Dn, Wt + (size_t)q * G4 * 32, dhr + q * 32);
          pass_held(vt + B, q);
        }
        for (int r = 0; r < BR; ++r)
          for (int p = 2 * q; p < 2 * q + 2; ++p) {
            const size_t hi = (size_t)r * H + p * 16, gi = (size_t)r * G4 + p * 16;
            if (!vt[r]) {  // held step: dz_t = 0, dh_t kept for step t-1, dcr (dc_t) unchanged
              _mm512_storeu_ps(held + hi, _mm512_add_ps(_mm512_loadu_ps(Yt + hi), _mm512_loadu_ps(dhr + hi)));
              for (int g = 0; g < 4; ++g) _mm512_storeu_ps(Dt + gi + g * H, _mm512_setzero_ps());
              continue;
            }
            __m512 ig = _mm512_loadu_ps(Gt + gi), fg = _mm512_loadu_ps(Gt + gi + H),
                   gg = _mm512_loadu_ps(Gt + gi + 2 * H), og = _mm512_loadu_ps(Gt + gi + 3 * H);
            __m512 tc = tanh512(_mm512_loadu_ps(Ct + hi));
            __m512 cp = _mm512_loadu_ps(Cp + hi);
            __m512 dh = _mm512_add_ps(_mm512_loadu_ps(Yt + hi), _mm512_loadu_ps(dhr + hi));
            __m512 dc = _mm512_fmadd_ps(_mm512_mul_ps(dh, og), _mm512_fnmadd_ps(tc, tc, one), _mm512_loadu_ps(dcr + hi));
            __m512 dzi = _mm512_mul_ps(_mm512_mul_ps(dc, gg), _mm512_mul_ps(ig, _mm512_sub_ps(one, ig)));
            __m512 dzf = _mm512_mul_ps(_mm512_mul_ps(dc, cp), _mm512_mul_ps(fg, _mm512_sub_ps(one, fg)));
            __m512 dzg = _mm512_mul_ps(_mm512_mul_ps(dc, ig), _mm512_fnmadd_ps(gg, gg, one));
            __m512 dzo = _mm512_mul_ps(_mm512_mul_ps(dh, tc), _mm512_mul_ps(og, _mm512_sub_ps(one, og)));
            _mm512_storeu_ps(Dt + gi, dzi);
            _mm512_storeu_ps(Dt + gi + H, dzf);
            _mm512_storeu_ps(Dt + gi + 2 * H, dzg);
            _mm512_storeu_ps(Dt + gi + 3 * H, dzo);
            _mm512_storeu_ps(dcr + hi, _mm512_mul_ps(dc, fg));
          }
      }
    }
    // dh0 = dz_0 @ w_h^T, or dh_0 where step 0 is held (dc0 already holds dc_0 * f_0, or dc_0)
    if (BR > 0)
      for (int q = 0; q < NQ; ++q) {
        bwd_rec(BR, G4, H, DZ + (size_t)r0 * G4, Wt + (size_t)q * G4 * 32, dhr + q * 32);
        pass_held(V + r0, q);
      }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmForwardHandler, LstmForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs (T,B,D)
                                  .Arg<ffi::Buffer<ffi::U8>>()   // valid (T,B)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_x (D,4H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h (H,4H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b (4H,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 (B,H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0 (B,H)
                                  .Attr<int32_t>("threads")
                                  .Attr<int32_t>("save")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // ys (T,B,H)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // c_last (B,H)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // gates (T,B,4H) or (0,)
                                  .Ret<ffi::Buffer<ffi::F32>>());  // cs (T,B,H) or (0,)

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmBackwardHandler, LstmBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h (H,4H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // gates (T,B,4H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cs (T,B,H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0 (B,H)
                                  .Arg<ffi::Buffer<ffi::U8>>()   // valid (T,B)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct_ys (T,B,H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct_h (B,H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct_c (B,H)
                                  .Attr<int32_t>("threads")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dz (T,B,4H)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dh0 (B,H)
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dc0 (B,H)
