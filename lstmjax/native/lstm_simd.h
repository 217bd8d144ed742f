// lstmjax/native/lstm_simd.h -- the AVX-512 building blocks of lstmjax's LSTM kernel (lstm_cpu.cc),
// shared with the all-in-one training step of `python -m experiments.native_ceiling`
// (experiments/native/lstm_train_step.cpp, built with -I pointing here): a fast exp and the
// sigmoid and tanh built on it, and the register-blocked matrix-product micro-kernel.
//
// Numerics. exp is a Cephes-style polynomial (argument clamped to [-87, 87], relative error about
// 1e-7); sigmoid and tanh use it with a 14-bit reciprocal plus one Newton step. NaN propagates:
// the clamp is written so that MAXPS/MINPS return the NaN operand.
#pragma once

#include <immintrin.h>

namespace lstm_simd {

inline __m512 exp512(__m512 x) {
  // x as the SECOND operand: MAXPS/MINPS return the second operand when either is NaN, so a NaN
  // stays NaN (the other order would turn it into -87).
  x = _mm512_min_ps(_mm512_set1_ps(87.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), x));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}
inline __m512 rcp512(__m512 d) {  // 1/d: rcp14 + one Newton step
  __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}
inline __m512 sigm512(__m512 x) {  // 1 / (1 + exp(-x))
  __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
  return rcp512(_mm512_add_ps(e, _mm512_set1_ps(1.0f)));
}
inline __m512 tanh512(__m512 x) {  // 1 - 2 / (1 + exp(2x))
  __m512 e = exp512(_mm512_add_ps(x, x));
  __m512 s = rcp512(_mm512_add_ps(e, _mm512_set1_ps(1.0f)));
  return _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), s, _mm512_set1_ps(1.0f));
}

// ---------------------------------------------------------------- micro-kernel
// C[MR x 16*NV] = init + A1 @ B1 + A2 @ B2 with B(k,j) = B[k*ldb + j] and A(i,k) = A[i*lda + k], or,
// with TA (A read transposed), A(i,k) = A[k*lda + i]. init: nullptr -> 0, else init[i*ldi + j]
// (ldi = 0 broadcasts a bias row). K2 may be 0.
template <int MR, int NV, bool TA = false>
__attribute__((always_inline)) inline void ukr(int K1, const float* __restrict A1, long lda1,
                                               const float* __restrict B1, long ldb1, int K2,
                                               const float* __restrict A2, long lda2,
                                               const float* __restrict B2, long ldb2, const float* init,
                                               long ldi, float* C, long ldc) {
  __m512 acc[MR][NV];
  if (init) {
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_loadu_ps(init + i * ldi + 16 * v);
  } else {
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  }
#define LSTM_UKR_SEG(K, A, lda, B, ldb)                                                \
  {                                                                                    \
    const float* a = A;                                                                \
    const float* b = B;                                                                \
    for (int k = 0; k < K; ++k) {                                                      \
      __m512 bv[NV];                                                                   \
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);               \
      for (int i = 0; i < MR; ++i) {                                                   \
        __m512 av = _mm512_set1_ps(TA ? a[i] : a[i * lda]);                            \
        for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]); \
      }                                                                                \
      a += TA ? lda : 1;                                                               \
      b += ldb;                                                                        \
    }                                                                                  \
  }
  LSTM_UKR_SEG(K1, A1, lda1, B1, ldb1)
  LSTM_UKR_SEG(K2, A2, lda2, B2, ldb2)
#undef LSTM_UKR_SEG
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(C + i * ldc + 16 * v, acc[i][v]);
}

}  // namespace lstm_simd
