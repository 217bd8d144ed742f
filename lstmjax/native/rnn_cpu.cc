// lstmjax/native/rnn_cpu.cc -- hand-fused single-layer vanilla (Elman) RNN recurrences for the CPU
// (AVX-512, on XLA's own thread pool), exposed as two XLA FFI handlers so that jax.jit can call them
// as custom calls (`jax.ffi.ffi_call`). Built together with lstm_cpu.cc and gru_cpu.cc into one
// library (lstmjax/_native_build.py):
//   g++ -O3 -march=native -shared -fPIC -std=c++17 -I<jax.ffi.include_dir()> -o lib.so lstm_cpu.cc gru_cpu.cc rnn_cpu.cc
// Requires AVX-512F (the caller checks the CPU before loading the library).
//
// Model (lj.rnn, PyTorch's nn.RNN with b = b_ih + b_hh). All arrays float32, C (row-major) order.
// The input projection xz_t = x_t @ w_x + b (all steps at once, one large matrix product) is the
// caller's; here, for t = 0 .. T-1, with h_{-1} = h0 and phi the cell's activation:
//   a_t = xz_t + h_{t-1} @ w_h                                         (B, H)
//   h_t = phi(a_t)                      where valid[t, b] != 0
//   h_t = h_{t-1}                       where valid[t, b] == 0 (the state is held)
//   hs[t] = h_t (the state: a caller that wants zero outputs on held steps masks hs itself)
// activation (attribute): 0 = tanh, 1 = relu (max(a, 0)), 2 = linear (phi(a) = a). The derivative
// phi'(a_t) is a function of h_t alone (tanh: 1 - h_t^2; relu: 1 where h_t > 0, else 0, i.e. 0 at
// a = 0 as jax.nn.relu's; linear: 1), so the forward saves nothing but hs.
//
// RnnForwardHandler
//   args:    xz (T,B,H), valid (T,B) uint8, w_h (H,H), h0 (B,H)
//   attrs:   threads (int32), activation (int32, 0, 1 or 2)
//   results: hs (T,B,H)
//   The workspace is O(weights + threads), never O(T).
// RnnBackwardHandler (backpropagation through time, no weight gradients: the caller computes those
// as large matrix products from da: the RNN is additive, so da is the cotangent of xz_t and of the
// recurrent term h_{t-1} @ w_h alike, and d w_h = sum_t h_{t-1}^T da_t)
//   args:    w_h (H,H), hs (T,B,H), valid (T,B) uint8, ct_hs (T,B,H) (hs and valid as given to and
//            returned by the forward; ct_hs the cotangent of hs, that of the final state included
//            in ct_hs[T-1])
//   attrs:   threads (int32), activation (int32, as the forward's)
//   results: da (T,B,H) = d loss / d a_t, dh0 (B,H). da may be the same buffer as ct_hs (lstmjax
//            aliases them): each unit's ct_hs[t] is read just before its da_t is written there, and
//            never again.
//   For t = T-1 .. 0:
//     dh_t = ct_hs[t] + (t == T-1 ? 0 : da_{t+1} @ w_h^T)
//     da_t = phi'(a_t) * dh_t
//   dh0 = da_0 @ w_h^T.
//   On a held step (valid[t, b] == 0) row b passes its cotangent through unchanged: da_t = 0 and the
//   cotangent of h_{t-1} is dh_t. Both cases go through one per-row buffer `carry` (kept in dh0):
//   after step t it holds 0 (real) or dh_t (held), and the recurrent product of step t-1 starts from
//   it (the micro-kernel's accumulator is initialised with it), so a held row, whose da_t is zero,
//   gets exactly dh_t.
//
// Constraints (checked; a violation returns kInvalidArgument with a message naming the buffer or
// dimension, the value received and what is required): T >= 1; B >= 4 and B % 4 == 0; H >= 32 and
// H % 32 == 0; every buffer has exactly the rank and dimensions listed above; threads in [1, 256];
// activation in {0, 1, 2}. (The Python wrapper, lstmjax/_native_rnn.py, pads B and H, so these are not
// hit in normal use; a padded unit has xz = 0, zero rows and columns of w_h and h0 = 0, so a = 0 and
// h = phi(0) = 0 for every activation, and it stays 0 with zero derivatives: its ct_hs is 0 and the
// zero columns of w_h give it no recurrent cotangent.)
//
// Threading: as lstm_cpu.cc. The work is shared out over XLA's intra-op thread pool (parallel_for
// of ffi_support.h, no threads of our own), at most `threads` workers; with nb = B/4 blocks of 4 rows
// and nt workers, worker k owns row blocks [k*nb/nt, (k+1)*nb/nt) for every step, so the time loops
// need no barrier; the weight packing before them is shared out by panels. Re-entrant: each call
// allocates its own workspace.
//
// Column layout: the forward's product h_{t-1} @ w_h uses w_h packed into 32-column panels (H x 32,
// contiguous), one ukr<8, 2> per 8 rows and panel, then xz_t added and the activation applied at
// once to the 8 x 32 block (still in L1) as it is stored into hs. The
// backward's product da_{t+1} @ w_h^T uses w_h^T packed the same way, each panel followed at once
// by the elementwise step of those 32 units.
//
// Numerics: tanh to a few ulp (tanh_accurate below: exp512 of lstm_simd.h and a true division where
// |a| >= 0.625, a polynomial below); relu as MAXPS(0, a), which returns
// a NaN a (and gives -0 for a = -0); its derivative is a select on h > 0, so it is exactly 0 or dh
// (a NaN cotangent on a unit with h <= 0 gives 0, as jax.nn.relu's derivative). NaN propagates
// otherwise, so a NaN in the inputs gives NaN in every output it affects. Overall the results differ
// from a float64 computation about as much as a plain float32 one does.
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

constexpr int kRnnMR = 8;  // micro-kernel rows (x 2 zmm = 32 columns), forward and backward
constexpr int kTanh = 0, kRelu = 1, kLinear = 2;

using namespace lstm_simd;        // exp512, ukr (lstm_simd.h)
using namespace native_support;  // Workspace, check_*, parallel_for (ffi_support.h)

// tanh to a few ulp (as close to float64 as XLA's tanh, measured on [-10, 10]): 1 - 2 / (1 + exp(2x))
// as tanh512, but with a true division, where |x| >= 0.625, and Cephes' tanhf polynomial
// x + x^3 P(x^2) below, where 1 - 2s cancels and its absolute error (tanh512's: 3e-7) would be a
// large relative one. The GRU's and LSTM's tanh512 error is damped by their gates; an RNN feeds it
// straight back (with tanh512, a tanh cell was up to 2.3 times further from float64 than the XLA
// scan). NaN goes to the exp branch and stays NaN; tanh(0) = 0 exactly.
__attribute__((always_inline)) inline __m512 tanh_accurate(__m512 x) {
  const __m512 s = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(-5.70498872745E-3f);
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(2.06390887954E-2f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-5.37397155531E-2f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(1.33314422036E-1f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-3.33332819422E-1f));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, s), x, x);
  const __mmask16 is_small = _mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(0.625f), _CMP_LT_OQ);
  // 1 - 2 / (1 + exp(2x)) with a true division (tanh512's rcp14 + Newton step adds about 2 ulp)
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 large = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f),
                                        _mm512_div_ps(one, _mm512_add_ps(exp512(_mm512_add_ps(x, x)), one)), one);
  return _mm512_mask_blend_ps(is_small, large, small);
}

template <int ACT>
__attribute__((always_inline)) inline __m512 phi(__m512 a) {
  if constexpr (ACT == kTanh) return tanh_accurate(a);
  if constexpr (ACT == kRelu) return _mm512_max_ps(_mm512_setzero_ps(), a);  // a as the second operand: NaN stays
  return a;
}

// phi'(a) * dh, with phi'(a) from h = phi(a)
template <int ACT>
__attribute__((always_inline)) inline __m512 times_slope(__m512 h, __m512 dh) {
  if constexpr (ACT == kTanh) return _mm512_mul_ps(dh, _mm512_fnmadd_ps(h, h, _mm512_set1_ps(1.0f)));
  if constexpr (ACT == kRelu) return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(h, _mm512_setzero_ps(), _CMP_GT_OQ), dh);
  return dh;
}

ffi::Error check_activation(const char* fn, int32_t activation) {
  if (activation < kTanh || activation > kLinear)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string(fn) + ": attribute activation = " +
                                                            std::to_string(activation) +
                                                            " must be 0 (tanh), 1 (relu) or 2 (linear)");
  return ffi::Error::Success();
}

// Packs w_h (H x H) into H/32 panels of its 32 columns, P[q][k][c] = w_h[k][q*32 + c], for the
// forward's product (the backward's transposed panels come from ffi_support.h).
void pack_panels(ffi::ThreadPool& pool, int nt, int H, const float* M, float* P) {
  parallel_for(pool, nt, H / 32, [&](int q) {
    for (int k = 0; k < H; ++k) {
      const float* src = M + (size_t)k * H + q * 32;
      float* dst = P + ((size_t)q * H + k) * 32;
      _mm512_storeu_ps(dst, _mm512_loadu_ps(src));
      _mm512_storeu_ps(dst + 16, _mm512_loadu_ps(src + 16));
    }
  });
}

// ---------------------------------------------------------------- forward
// One row block of MR rows at step t, unit panel q: h_{t-1} @ w_h into the panel's 32 columns of
// hs[t], then a = xz_t + that and h = phi(a) (rows whose vt entry is 0 keep their state). xz_t is
// added after the product, not used as its accumulator's start: the partial sums stay smaller
// (measured: with xz as the start, relu and linear cells were 2-4 times further from float64 than
// the XLA scan, which adds x w_x, h w_h and b as whole products).
template <int MR, int ACT>
__attribute__((always_inline)) inline void rnn_fwd_block(int H, const float* xt, const uint8_t* vt, const float* hp,
                                                         const float* Wq, float* yt, int q) {
  const int c0 = q * 32;
  ukr<MR, 2>(H, hp, H, Wq, 32, 0, nullptr, 0, nullptr, 0, nullptr, 0, yt + c0, H);
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 2; ++v) {
      const size_t i = (size_t)r * H + c0 + 16 * v;
      const __m512 a = _mm512_add_ps(_mm512_loadu_ps(xt + i), _mm512_loadu_ps(yt + i));
      _mm512_storeu_ps(yt + i, vt[r] ? phi<ACT>(a) : _mm512_loadu_ps(hp + i));
    }
}

template <int ACT>
void rnn_forward_rows(int T, int B, int H, const float* X, const uint8_t* V, const float* Wp, const float* H0,
                      float* Y, int r0, int BR) {
  for (int t = 0; t < T && BR > 0; ++t) {
    const size_t rowt = (size_t)t * B + r0;
    const float* xt = X + rowt * H;
    const uint8_t* vt = V + rowt;
    const float* hp = t ? Y + (rowt - B) * H : H0 + (size_t)r0 * H;
    float* yt = Y + rowt * H;
    for (int q = 0; q < H / 32; ++q) {
      const float* Wq = Wp + (size_t)q * H * 32;
      int rb = 0;
      for (; rb + kRnnMR <= BR; rb += kRnnMR)
        rnn_fwd_block<kRnnMR, ACT>(H, xt + (size_t)rb * H, vt + rb, hp + (size_t)rb * H, Wq, yt + (size_t)rb * H, q);
      for (; rb < BR; rb += 4)  // remainder (BR % 4 == 0)
        rnn_fwd_block<4, ACT>(H, xt + (size_t)rb * H, vt + rb, hp + (size_t)rb * H, Wq, yt + (size_t)rb * H, q);
    }
  }
}

ffi::Error RnnForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xz, ffi::Buffer<ffi::U8> valid,
                      ffi::Buffer<ffi::F32> wh, ffi::Buffer<ffi::F32> h0, int32_t threads, int32_t activation,
                      ffi::ResultBuffer<ffi::F32> hs) {
  constexpr const char* fn = "RnnForward";
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "xz", xz, 3, "(T, B, H)"));
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "w_h", wh, 2, "(H, H)"));
  const int64_t T64 = xz.dimensions()[0], B64 = xz.dimensions()[1], H64 = wh.dimensions()[0];
  NATIVE_RETURN_IF_ERROR(check_dims(fn, T64, B64, 1, H64, 1, "xz.shape[0]", "xz.shape[1]", "unused", "w_h.shape[0]"));
  NATIVE_RETURN_IF_ERROR(check_threads(fn, threads));
  NATIVE_RETURN_IF_ERROR(check_activation(fn, activation));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "xz", xz, {T64, B64, H64}, "(T, B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "valid", valid, {T64, B64}, "(T, B)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "w_h", wh, {H64, H64}, "(H, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "h0", h0, {B64, H64}, "(B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "result hs", *hs, {T64, B64, H64}, "(T, B, H)"));
  const int T = (int)T64, B = (int)B64, H = (int)H64;

  // workspace: w_h packed into H/32 panels of (H x 32): Wp[q][k][c] = w_h[k][q*32 + c]
  const size_t total = (size_t)H * H;
  Workspace ws(total);
  if (!ws.p) return allocation_error(fn, total);
  const float* X = xz.typed_data();
  const uint8_t* V = valid.typed_data();
  const float* H0 = h0.typed_data();
  float* Y = hs->typed_data();

  const int nt = workers_for(pool, threads);
  pack_panels(pool, nt, H, wh.typed_data(), ws.p);
  parallel_for(pool, nt, nt, [&](int tid) {
    const RowRange rows = rows_of_worker(tid, nt, B);
    const int r0 = rows.first, BR = rows.count;
    switch (activation) {
      case kTanh: rnn_forward_rows<kTanh>(T, B, H, X, V, ws.p, H0, Y, r0, BR); break;
      case kRelu: rnn_forward_rows<kRelu>(T, B, H, X, V, ws.p, H0, Y, r0, BR); break;
      default: rnn_forward_rows<kLinear>(T, B, H, X, V, ws.p, H0, Y, r0, BR); break;
    }
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------- backward
// Rows [0, BR) of C (ld H), columns q*32 .. q*32+31, = C + A (rows ld H, K = H) @ packed w_h^T panel q.
inline void rnn_bwd_rec(int BR, int H, const float* A, const float* Wtq, float* C) {
  int rb = 0;
  for (; rb + kRnnMR <= BR; rb += kRnnMR)
    ukr<kRnnMR, 2>(H, A + (size_t)rb * H, H, Wtq, 32, 0, nullptr, 0, nullptr, 0, C + (size_t)rb * H, H,
                   C + (size_t)rb * H, H);
  for (; rb < BR; rb += 4)
    ukr<4, 2>(H, A + (size_t)rb * H, H, Wtq, 32, 0, nullptr, 0, nullptr, 0, C + (size_t)rb * H, H, C + (size_t)rb * H,
              H);
}

template <int ACT>
void rnn_backward_rows(int T, int B, int H, const float* Wt, const float* HS, const uint8_t* V, const float* DY,
                       float* DA, float* DH0, int r0, int BR) {
  if (BR <= 0) return;
  const int NQ = H / 32;
  // carry (in dh0): 0 (or dh_{t+1} where step t+1 is held), then, after the recurrent product, the
  // whole cotangent from later steps of h_t; 0 before the last step
  float* carry = DH0 + (size_t)r0 * H;
  std::memset(carry, 0, sizeof(float) * BR * H);
  const __m512 zero = _mm512_setzero_ps();
  for (int t = T - 1; t >= 0; --t) {
    const size_t rowt = (size_t)t * B + r0;
    const float* Ht = HS + rowt * H;
    const float* Yt = DY + rowt * H;  // may be the same memory as At
    float* At = DA + rowt * H;
    const float* An = DA + (rowt + B) * H;  // da_{t+1} (only read when t < T-1)
    const uint8_t* vt = V + rowt;
    for (int q = 0; q < NQ; ++q) {
      if (t < T - 1) rnn_bwd_rec(BR, H, An, Wt + (size_t)q * H * 32, carry + q * 32);
      for (int r = 0; r < BR; ++r)
        for (int v = 0; v < 2; ++v) {
          const size_t i = (size_t)r * H + q * 32 + 16 * v;
          __m512 dh = _mm512_add_ps(_mm512_loadu_ps(Yt + i), _mm512_loadu_ps(carry + i));
          if (!vt[r]) {  // held step: no pre-activation cotangent, dh_t passes to h_{t-1} as it is
            _mm512_storeu_ps(At + i, zero);
            _mm512_storeu_ps(carry + i, dh);
            continue;
          }
          _mm512_storeu_ps(At + i, times_slope<ACT>(_mm512_loadu_ps(Ht + i), dh));
          _mm512_storeu_ps(carry + i, zero);
        }
    }
  }
  // dh0 = da_0 @ w_h^T + carry (0, or dh_0 where step 0 is held)
  for (int q = 0; q < NQ; ++q) rnn_bwd_rec(BR, H, DA + (size_t)r0 * H, Wt + (size_t)q * H * 32, carry + q * 32);
}

ffi::Error RnnBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> wh, ffi::Buffer<ffi::F32> hs,
                       ffi::Buffer<ffi::U8> valid, ffi::Buffer<ffi::F32> ct_hs, int32_t threads, int32_t activation,
                       ffi::ResultBuffer<ffi::F32> da, ffi::ResultBuffer<ffi::F32> dh0) {
  constexpr const char* fn = "RnnBackward";
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "w_h", wh, 2, "(H, H)"));
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "hs", hs, 3, "(T, B, H)"));
  const int64_t T64 = hs.dimensions()[0], B64 = hs.dimensions()[1], H64 = wh.dimensions()[0];
  NATIVE_RETURN_IF_ERROR(check_dims(fn, T64, B64, 1, H64, 1, "hs.shape[0]", "hs.shape[1]", "unused", "w_h.shape[0]"));
  NATIVE_RETURN_IF_ERROR(check_threads(fn, threads));
  NATIVE_RETURN_IF_ERROR(check_activation(fn, activation));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "w_h", wh, {H64, H64}, "(H, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "hs", hs, {T64, B64, H64}, "(T, B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "valid", valid, {T64, B64}, "(T, B)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "ct_hs", ct_hs, {T64, B64, H64}, "(T, B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "result da", *da, {T64, B64, H64}, "(T, B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "result dh0", *dh0, {B64, H64}, "(B, H)"));
  const int T = (int)T64, B = (int)B64, H = (int)H64;

  // workspace: w_h^T packed into H/32 panels of (H x 32): Wt[q][k][c] = w_h[q*32 + c][k]
  const size_t total = (size_t)H * H;
  Workspace ws(total);
  if (!ws.p) return allocation_error(fn, total);
  const float* HS = hs.typed_data();
  const uint8_t* V = valid.typed_data();
  const float* DY = ct_hs.typed_data();
  float* DA = da->typed_data();
  float* DH0 = dh0->typed_data();

  const int nt = workers_for(pool, threads);
  pack_transposed_panels(pool, nt, wh.typed_data(), H, H, ws.p);
  parallel_for(pool, nt, nt, [&](int tid) {
    const RowRange rows = rows_of_worker(tid, nt, B);
    const int r0 = rows.first, BR = rows.count;
    switch (activation) {
      case kTanh: rnn_backward_rows<kTanh>(T, B, H, ws.p, HS, V, DY, DA, DH0, r0, BR); break;
      case kRelu: rnn_backward_rows<kRelu>(T, B, H, ws.p, HS, V, DY, DA, DH0, r0, BR); break;
      default: rnn_backward_rows<kLinear>(T, B, H, ws.p, HS, V, DY, DA, DH0, r0, BR); break;
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnForwardHandler, RnnForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xz (T,B,H)
                                  .Arg<ffi::Buffer<ffi::U8>>()   // valid (T,B)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h (H,H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 (B,H)
                                  .Attr<int32_t>("threads")
                                  .Attr<int32_t>("activation")
                                  .Ret<ffi::Buffer<ffi::F32>>());  // hs (T,B,H)

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnBackwardHandler, RnnBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h (H,H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // hs (T,B,H)
                                  .Arg<ffi::Buffer<ffi::U8>>()   // valid (T,B)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct_hs (T,B,H)
                                  .Attr<int32_t>("threads")
                                  .Attr<int32_t>("activation")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // da (T,B,H)
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dh0 (B,H)
