// lstmjax/native/gru_cpu.cc -- hand-fused single-layer GRU recurrences for the CPU (AVX-512, on
// XLA's own thread pool), exposed as two XLA FFI handlers so that jax.jit can call them as custom
// calls (`jax.ffi.ffi_call`). Built together with lstm_cpu.cc into one library (lstmjax/_native_build.py):
//   g++ -O3 -march=native -shared -fPIC -std=c++17 -I<jax.ffi.include_dir()> -o lib.so lstm_cpu.cc gru_cpu.cc
// Requires AVX-512F (the caller checks the CPU before loading the library).
//
// Model (PyTorch's nn.GRU). All arrays float32, C (row-major) order. Gate order (r, z, n) in blocks
// of H along the 3H axis ("original layout": column k*H + j is gate k of hidden unit j). The input
// projection xz_t = x_t @ w_x + b (all steps at once, one large matrix product) is the caller's; here,
// for t = 0 .. T-1, with h_{-1} = h0:
//   hz_t = h_{t-1} @ w_h                                               (B, 3H)
//   r = sigmoid(xz_r + hz_r)   z = sigmoid(xz_z + hz_z)
//   hn = hz_n + b_hn           n = tanh(xz_n + r * hn)
//   h_t = (1 - z) * n + z * h_{t-1}     where valid[t, b] != 0
//   h_t = h_{t-1}                       where valid[t, b] == 0 (the state is held)
//   hs[t] = h_t (the state: a caller that wants zero outputs on held steps masks hs itself)
//
// GruForwardHandler
//   args:    xz (T,B,3H), valid (T,B) uint8, w_h (H,3H), b_hn (H,), h0 (B,H)
//   attrs:   threads (int32), save (int32, 0 or 1)
//   results: hs (T,B,H), gates, hn
//            save = 1: gates (T,B,3H) = [r z n] in blocks of H, hn (T,B,H) = hz_n + b_hn (on a held
//                      step computed from the held state, and not used by the backward)
//            save = 0: gates and hn must have shape (0,) and are not written (inference path: the
//                      workspace is O(weights + threads), never O(T)).
// GruBackwardHandler (backpropagation through time, no weight gradients: the caller computes those
// as large matrix products from dxz and dhz)
//   args:    w_h (H,3H), gates (T,B,3H), hn (T,B,H), hs (T,B,H), h0 (B,H), valid (T,B) uint8,
//            ct_hs (T,B,H) (gates, hn, hs and valid as given to and returned by the forward; ct_hs
//            the cotangent of hs, that of the final state included in ct_hs[T-1])
//   attrs:   threads (int32)
//   results: dxz (T,B,3H) = d loss / d xz_t, dhz (T,B,3H) = d loss / d hz_t (b_hn's included in the
//            n block: its gradient is the sum of dhz_n), dh0 (B,H). dxz may be the same buffer as
//            gates (lstmjax aliases them): each unit's gates at step t are read just before its
//            dxz_t is written there, and never again.
//   For t = T-1 .. 0:
//     dh_t = ct_hs[t] + (t == T-1 ? 0 : dhz_{t+1} @ w_h^T + dh_{t+1} * z_{t+1})
//     an = dh_t (1-z)(1-n^2)       dz_pre = dh_t (h_{t-1} - n) z(1-z)       dr_pre = an hn r(1-r)
//     dxz_t = [dr_pre, dz_pre, an]   dhz_t = [dr_pre, dz_pre, an r]
//   dh0 = dhz_0 @ w_h^T + dh_0 * z_0.
//   On a held step (valid[t, b] == 0) row b passes its cotangent through unchanged: dxz_t = dhz_t = 0
//   and the cotangent of h_{t-1} is dh_t. Both cases go through one per-row buffer `carry` (kept in
//   dh0): after step t it holds dh_t * z_t (real) or dh_t (held), and the recurrent product of step
//   t-1 starts from it (the micro-kernel's accumulator is initialised with it), so a held row, whose
//   dhz_t is zero, gets exactly dh_t.
//
// Constraints (checked; a violation returns kInvalidArgument with a message naming the buffer or
// dimension, the value received and what is required): T >= 1; B >= 4 and B % 4 == 0; H >= 32 and
// H % 32 == 0; every buffer has exactly the rank and dimensions listed above; threads in [1, 256];
// save in {0, 1}. (The Python wrapper, lstmjax/_native_gru.py, pads B and H, so these are not hit in
// normal use; a padded unit has xz = 0, zero rows and columns of w_h, b_hn = 0 and h0 = 0, so
// r = z = 1/2, hn = 0, n = 0 and h stays 0 with zero derivatives.)
//
// Threading: as lstm_cpu.cc. The work is shared out over XLA's intra-op thread pool (parallel_for
// of ffi_support.h, no threads of our own), at most `threads` workers; with nb = B/4 blocks of 4 rows
// and nt workers, worker k owns row blocks [k*nb/nt, (k+1)*nb/nt) for every step, so the time loops
// need no barrier; the weight packing before them is shared out by panels. Re-entrant: each call
// allocates its own workspace.
//
// Column layout inside the forward: for hidden-unit panel p (16 units) the packed w_h panel holds
// the 48 columns [r(16 units) z(16) n(16)], so two products (ukr<MR, 2> and ukr<MR, 1>) give
// all three gates' recurrent pre-activations of 16 units, initialised with [0, 0, b_hn]; the gate
// math and the state update follow at once from a small per-thread scratch (still in L1). The
// backward recurrent product dhz_{t+1} @ w_h^T uses w_h^T packed into 32-column panels (rows in
// original order, since dhz is stored in original layout), each followed at once by the elementwise
// step of those 32 units.
//
// Numerics: exp, sigmoid and tanh of lstm_simd.h (sigmoid 2e-7 relative, tanh 3e-7 absolute against
// float64); h_t is formed as n + z (h_{t-1} - n). NaN propagates (the clamp in exp keeps NaN), so a
// NaN in the inputs gives NaN in every output it affects. Overall the results differ from a float64
// computation about as much as a plain float32 one does.
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

// Forward micro-kernel rows. The 48 columns of a panel go through two products, ukr<8, 2> (r, z) and
// ukr<8, 1> (n): one ukr<8, 3> needs 24 accumulators and GCC 12 spilled them, and ukr<4, 3> reads the
// weight panel twice as often (measured: 10.7-11.6 against 12.2-14.7 ms for the forward pass at
// B = 32, T = 100, H = 256, equal at H = 128).
constexpr int kGruFwdMR = 8;
constexpr int kGruBwdMR = 8;  // backward recurrent micro-kernel rows (x 2 zmm = 32 columns)

using namespace lstm_simd;        // exp512, sigm512, tanh512, ukr (lstm_simd.h)
using namespace native_support;  // Workspace, check_*, parallel_for (ffi_support.h)

// ---------------------------------------------------------------- forward
// One row block of MR rows at step t, hidden-unit panel p: recurrent pre-activations of the panel's
// 48 interleaved columns into Z (MR x 48), then the gates and the state update (rows whose vt entry
// is 0 keep their state).
template <int MR>
__attribute__((always_inline)) inline void gru_fwd_block(int H, const float* xt, const uint8_t* vt, const float* hp,
                                                         const float* Wpp, const float* bip, float* Z, float* yt,
                                                         float* gt, float* nt, int p) {
  const long G3 = 3L * H;
  ukr<MR, 2>(H, hp, H, Wpp, 48, 0, nullptr, 0, nullptr, 0, bip, 0, Z, 48);            // r, z columns
  ukr<MR, 1>(H, hp, H, Wpp + 32, 48, 0, nullptr, 0, nullptr, 0, bip + 32, 0, Z + 32, 48);  // n columns
  for (int r = 0; r < MR; ++r) {
    const float* z = Z + r * 48;
    const float* x = xt + (size_t)r * G3 + p * 16;
    const size_t hi = (size_t)r * H + p * 16;
    __m512 rg = sigm512(_mm512_add_ps(_mm512_loadu_ps(x), _mm512_load_ps(z)));
    __m512 zg = sigm512(_mm512_add_ps(_mm512_loadu_ps(x + H), _mm512_load_ps(z + 16)));
    __m512 hn = _mm512_load_ps(z + 32);
    __m512 ng = tanh512(_mm512_fmadd_ps(rg, hn, _mm512_loadu_ps(x + 2 * H)));
    __m512 hprev = _mm512_loadu_ps(hp + hi);
    __m512 h = vt[r] ? _mm512_fmadd_ps(zg, _mm512_sub_ps(hprev, ng), ng) : hprev;
    _mm512_storeu_ps(yt + hi, h);
    if (gt) {
      float* g = gt + (size_t)r * G3 + p * 16;
      _mm512_storeu_ps(g, rg);
      _mm512_storeu_ps(g + H, zg);
      _mm512_storeu_ps(g + 2 * H, ng);
      _mm512_storeu_ps(nt + hi, hn);
    }
  }
}

ffi::Error GruForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xz, ffi::Buffer<ffi::U8> valid,
                      ffi::Buffer<ffi::F32> wh, ffi::Buffer<ffi::F32> bhn, ffi::Buffer<ffi::F32> h0, int32_t threads,
                      int32_t save, ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> gates,
                      ffi::ResultBuffer<ffi::F32> hn_out) {
  constexpr const char* fn = "GruForward";
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "xz", xz, 3, "(T, B, 3H)"));
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "w_h", wh, 2, "(H, 3H)"));
  const int64_t T64 = xz.dimensions()[0], B64 = xz.dimensions()[1], H64 = wh.dimensions()[0];
  NATIVE_RETURN_IF_ERROR(check_dims(fn, T64, B64, 1, H64, 3, "xz.shape[0]", "xz.shape[1]", "unused", "w_h.shape[0]"));
  NATIVE_RETURN_IF_ERROR(check_threads(fn, threads));
  if (save != 0 && save != 1)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      std::string(fn) + ": attribute save = " + std::to_string(save) + " must be 0 or 1");
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "xz", xz, {T64, B64, 3 * H64}, "(T, B, 3H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "valid", valid, {T64, B64}, "(T, B)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "w_h", wh, {H64, 3 * H64}, "(H, 3H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "b_hn", bhn, {H64}, "(H,)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "h0", h0, {B64, H64}, "(B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "result hs", *hs, {T64, B64, H64}, "(T, B, H)"));
  if (save) {
    NATIVE_RETURN_IF_ERROR(check_shape(fn, "result gates", *gates, {T64, B64, 3 * H64}, "(T, B, 3H)", " with save=1"));
    NATIVE_RETURN_IF_ERROR(check_shape(fn, "result hn", *hn_out, {T64, B64, H64}, "(T, B, H)", " with save=1"));
  } else {
    NATIVE_RETURN_IF_ERROR(check_shape(fn, "result gates", *gates, {0}, "empty", " with save=0"));
    NATIVE_RETURN_IF_ERROR(check_shape(fn, "result hn", *hn_out, {0}, "empty", " with save=0"));
  }
  const int T = (int)T64, B = (int)B64, H = (int)H64;
  const int G3 = 3 * H, NP = H / 16;

  // workspace: packed w_h panels (NP x H x 48), packed [0, 0, b_hn] rows (NP x 48), per-thread Z scratch
  const size_t oWp = 0, oBI = oWp + round16((size_t)H * G3), oZ = oBI + round16(G3),
               zsz = round16((size_t)kGruFwdMR * 48), total = oZ + (size_t)threads * zsz;
  Workspace ws(total);
  if (!ws.p) return allocation_error(fn, total);
  float* Wp = ws.p + oWp;
  float* BI = ws.p + oBI;
  const float* X = xz.typed_data();
  const uint8_t* V = valid.typed_data();
  const float* WH = wh.typed_data();
  const float* BN = bhn.typed_data();
  const float* H0 = h0.typed_data();
  float* Y = hs->typed_data();
  float* GT = save ? gates->typed_data() : nullptr;
  float* HN = save ? hn_out->typed_data() : nullptr;

  const int nt = workers_for(pool, threads);
  parallel_for(pool, nt, NP, [&](int p) {
    for (int k = 0; k < H; ++k) {
      const float* src = WH + (size_t)k * G3;
      float* dst = Wp + ((size_t)p * H + k) * 48;
      for (int g = 0; g < 3; ++g) _mm512_storeu_ps(dst + 16 * g, _mm512_loadu_ps(src + g * H + p * 16));
    }
    _mm512_storeu_ps(BI + p * 48, _mm512_setzero_ps());
    _mm512_storeu_ps(BI + p * 48 + 16, _mm512_setzero_ps());
    _mm512_storeu_ps(BI + p * 48 + 32, _mm512_loadu_ps(BN + p * 16));
  });
  parallel_for(pool, nt, nt, [&](int tid) {
    const RowRange rows = rows_of_worker(tid, nt, B);
    const int r0 = rows.first, BR = rows.count;
    float* Z = ws.p + oZ + (size_t)tid * zsz;
    for (int t = 0; t < T && BR > 0; ++t) {
      const float* xt = X + ((size_t)t * B + r0) * G3;
      const uint8_t* vt = V + (size_t)t * B + r0;
      const float* hp = t ? Y + ((size_t)(t - 1) * B + r0) * H : H0 + (size_t)r0 * H;
      float* yt = Y + ((size_t)t * B + r0) * H;
      float* gt = GT ? GT + ((size_t)t * B + r0) * G3 : nullptr;
      float* nt_ = HN ? HN + ((size_t)t * B + r0) * H : nullptr;
      for (int p = 0; p < NP; ++p) {
        const float* Wpp = Wp + (size_t)p * H * 48;
        const float* bip = BI + p * 48;
        int rb = 0;
        for (; rb + kGruFwdMR <= BR; rb += kGruFwdMR)
          gru_fwd_block<kGruFwdMR>(H, xt + (size_t)rb * G3, vt + rb, hp + (size_t)rb * H, Wpp, bip, Z,
                                   yt + (size_t)rb * H, gt ? gt + (size_t)rb * G3 : nullptr,
                                   nt_ ? nt_ + (size_t)rb * H : nullptr, p);
        for (; rb < BR; rb += 4)  // remainder (BR % 4 == 0)
          gru_fwd_block<4>(H, xt + (size_t)rb * G3, vt + rb, hp + (size_t)rb * H, Wpp, bip, Z, yt + (size_t)rb * H,
                           gt ? gt + (size_t)rb * G3 : nullptr, nt_ ? nt_ + (size_t)rb * H : nullptr, p);
      }
    }
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------- backward
// Rows [0, BR) of C (ld H), columns q*32 .. q*32+31, = C + A (rows ld G3, K = G3) @ packed w_h^T panel q.
inline void gru_bwd_rec(int BR, int G3, int H, const float* A, const float* Wtq, float* C) {
  int rb = 0;
  for (; rb + kGruBwdMR <= BR; rb += kGruBwdMR)
    ukr<kGruBwdMR, 2>(G3, A + (size_t)rb * G3, G3, Wtq, 32, 0, nullptr, 0, nullptr, 0, C + (size_t)rb * H, H,
                      C + (size_t)rb * H, H);
  for (; rb < BR; rb += 4)
    ukr<4, 2>(G3, A + (size_t)rb * G3, G3, Wtq, 32, 0, nullptr, 0, nullptr, 0, C + (size_t)rb * H, H,
              C + (size_t)rb * H, H);
}

ffi::Error GruBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> wh, ffi::Buffer<ffi::F32> gates,
                       ffi::Buffer<ffi::F32> hn, ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::U8> valid,
                       ffi::Buffer<ffi::F32> ct_hs, int32_t threads, ffi::ResultBuffer<ffi::F32> dxz,
                       ffi::ResultBuffer<ffi::F32> dhz, ffi::ResultBuffer<ffi::F32> dh0) {
  constexpr const char* fn = "GruBackward";
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "w_h", wh, 2, "(H, 3H)"));
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "hs", hs, 3, "(T, B, H)"));
  const int64_t T64 = hs.dimensions()[0], B64 = hs.dimensions()[1], H64 = wh.dimensions()[0];
  NATIVE_RETURN_IF_ERROR(check_dims(fn, T64, B64, 1, H64, 3, "hs.shape[0]", "hs.shape[1]", "unused", "w_h.shape[0]"));
  NATIVE_RETURN_IF_ERROR(check_threads(fn, threads));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "w_h", wh, {H64, 3 * H64}, "(H, 3H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "gates", gates, {T64, B64, 3 * H64}, "(T, B, 3H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "hn", hn, {T64, B64, H64}, "(T, B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "hs", hs, {T64, B64, H64}, "(T, B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "h0", h0, {B64, H64}, "(B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "valid", valid, {T64, B64}, "(T, B)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "ct_hs", ct_hs, {T64, B64, H64}, "(T, B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "result dxz", *dxz, {T64, B64, 3 * H64}, "(T, B, 3H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "result dhz", *dhz, {T64, B64, 3 * H64}, "(T, B, 3H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "result dh0", *dh0, {B64, H64}, "(B, H)"));
  const int T = (int)T64, B = (int)B64, H = (int)H64, G3 = 3 * H, NQ = H / 32;

  // workspace: w_h^T packed into NQ panels of (3H x 32): Wt[q][k][c] = w_h[q*32 + c][k]
  const size_t total = (size_t)G3 * H;
  Workspace ws(total);
  if (!ws.p) return allocation_error(fn, total);
  float* Wt = ws.p;
  const uint8_t* V = valid.typed_data();
  const float* WH = wh.typed_data();
  const float* GS = gates.typed_data();
  const float* HNS = hn.typed_data();
  const float* HS = hs.typed_data();
  const float* H0 = h0.typed_data();
  const float* DY = ct_hs.typed_data();
  float* DX = dxz->typed_data();
  float* DZ = dhz->typed_data();
  float* DH0 = dh0->typed_data();

  const int nt = workers_for(pool, threads);
  pack_transposed_panels(pool, nt, WH, H, G3, Wt);
  parallel_for(pool, nt, nt, [&](int tid) {
    const RowRange rows = rows_of_worker(tid, nt, B);
    const int r0 = rows.first, BR = rows.count;
    if (BR <= 0) return;
    // carry (in dh0): dh_{t+1} * z_{t+1} (or dh_{t+1} where step t+1 is held), then, after the
    // recurrent product, the whole cotangent from later steps of h_t; 0 before the last step
    float* carry = DH0 + (size_t)r0 * H;
    std::memset(carry, 0, sizeof(float) * BR * H);
    const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    for (int t = T - 1; t >= 0; --t) {
      const size_t rowt = (size_t)t * B + r0;
      const float* Gt = GS + rowt * G3;
      const float* Nt = HNS + rowt * H;
      const float* Hp = t ? HS + (rowt - B) * H : H0 + (size_t)r0 * H;
      const float* Yt = DY + rowt * H;
      float* Xt = DX + rowt * G3;
      float* Zt = DZ + rowt * G3;
      const float* Zn = DZ + (rowt + B) * G3;  // dhz_{t+1} (only read when t < T-1)
      const uint8_t* vt = V + rowt;
      for (int q = 0; q < NQ; ++q) {
        if (t < T - 1) gru_bwd_rec(BR, G3, H, Zn, Wt + (size_t)q * G3 * 32, carry + q * 32);
        for (int r = 0; r < BR; ++r)
          for (int p = 2 * q; p < 2 * q + 2; ++p) {
            const size_t hi = (size_t)r * H + p * 16, gi = (size_t)r * G3 + p * 16;
            __m512 dh = _mm512_add_ps(_mm512_loadu_ps(Yt + hi), _mm512_loadu_ps(carry + hi));
            if (!vt[r]) {  // held step: no gate cotangents, dh_t passes to h_{t-1} as it is
              for (int g = 0; g < 3; ++g) {
                _mm512_storeu_ps(Xt + gi + g * H, zero);
                _mm512_storeu_ps(Zt + gi + g * H, zero);
              }
              _mm512_storeu_ps(carry + hi, dh);
              continue;
            }
            __m512 rg = _mm512_loadu_ps(Gt + gi), zg = _mm512_loadu_ps(Gt + gi + H),
                   ng = _mm512_loadu_ps(Gt + gi + 2 * H), hnv = _mm512_loadu_ps(Nt + hi);
            __m512 hp = _mm512_loadu_ps(Hp + hi);
            __m512 an = _mm512_mul_ps(_mm512_mul_ps(dh, _mm512_sub_ps(one, zg)), _mm512_fnmadd_ps(ng, ng, one));
            __m512 dzp = _mm512_mul_ps(_mm512_mul_ps(dh, _mm512_sub_ps(hp, ng)),
                                       _mm512_mul_ps(zg, _mm512_sub_ps(one, zg)));
            __m512 drp = _mm512_mul_ps(_mm512_mul_ps(an, hnv), _mm512_mul_ps(rg, _mm512_sub_ps(one, rg)));
            _mm512_storeu_ps(Xt + gi, drp);
            _mm512_storeu_ps(Xt + gi + H, dzp);
            _mm512_storeu_ps(Xt + gi + 2 * H, an);
            _mm512_storeu_ps(Zt + gi, drp);
            _mm512_storeu_ps(Zt + gi + H, dzp);
            _mm512_storeu_ps(Zt + gi + 2 * H, _mm512_mul_ps(an, rg));
            _mm512_storeu_ps(carry + hi, _mm512_mul_ps(dh, zg));
          }
      }
    }
    // dh0 = dhz_0 @ w_h^T + carry (dh_0 * z_0, or dh_0 where step 0 is held)
    for (int q = 0; q < NQ; ++q) gru_bwd_rec(BR, G3, H, DZ + (size_t)r0 * G3, Wt + (size_t)q * G3 * 32, carry + q * 32);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GruForwardHandler, GruForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xz (T,B,3H)
                                  .Arg<ffi::Buffer<ffi::U8>>()   // valid (T,B)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h (H,3H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_hn (H,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 (B,H)
                                  .Attr<int32_t>("threads")
                                  .Attr<int32_t>("save")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // hs (T,B,H)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // gates (T,B,3H) or (0,)
                                  .Ret<ffi::Buffer<ffi::F32>>());  // hn (T,B,H) or (0,)

XLA_FFI_DEFINE_HANDLER_SYMBOL(GruBackwardHandler, GruBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h (H,3H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // gates (T,B,3H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // hn (T,B,H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // hs (T,B,H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 (B,H)
                                  .Arg<ffi::Buffer<ffi::U8>>()   // valid (T,B)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct_hs (T,B,H)
                                  .Attr<int32_t>("threads")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dxz (T,B,3H)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dhz (T,B,3H)
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dh0 (B,H)
