// A hand-fused single-layer LSTM training step for the CPU (AVX-512 + OpenMP): forward through
// time, backward through time and the weight gradients in one call. It is the measuring stick of
// `python -m experiments.native_ceiling` (how fast a training step can be on this machine), not
// part of lstmjax. Gate order (i, f, g, o) along the last axis of the weights, as in lj.lstm;
// h0 = c0 = 0; loss = loss_scale * sum over all outputs of ys**2 (the caller passes 1/(T*B*H) for the
// mean). A NaN propagates into the loss and gradients, as in lstmjax.
//
// Column layout inside: for hidden-unit block p (16 units) the 64 columns p*64 .. p*64+63 hold
// [i(16 units) f(16) g(16) o(16)], so a 64-column panel of the pre-activations holds all four
// gates of 16 units and the nonlinearities and state update run right after that panel's matrix
// multiply, while it is still in L1.
//
// Threads: thread k owns batch rows [k*B/nth, (k+1)*B/nth). Rows are independent in the
// recurrence, so the forward and backward loops need no barrier; one barrier comes before the
// weight-gradient products (split across threads by output columns).
//
// Not re-entrant: the workspace is one static buffer, grown as needed.
#include <immintrin.h>
#include <omp.h>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <cstdint>
#include <chrono>

#ifndef FWD_MR
#define FWD_MR 8      // forward micro-kernel rows
#endif
#ifndef FWD_NV
#define FWD_NV 2      // forward micro-kernel width in zmm vectors (64 must be a multiple of 16*FWD_NV)
#endif
#ifndef BWD_MR
#define BWD_MR 8      // backward recurrent micro-kernel rows (NV=2 -> 32 cols)
#endif
#ifndef WG_MR
#define WG_MR 6       // weight-gradient micro-kernel rows (NV=4)
#endif
#ifndef WG_KC
#define WG_KC 128     // k-chunk of the weight-gradient products
#endif

// ---------------------------------------------------------------- math, micro-kernel
// exp512, sigm512, tanh512 and ukr<MR, NV, TA> are lstmjax's own (lstmjax/native/lstm_simd.h,
// found by the -I that experiments/_native_kernel.py passes).
#include "lstm_simd.h"
using namespace lstm_simd;

// rows [i0, i0+M) of C (ld ldc) += A^T-access chunk @ packed B panels (np_ panels of [WG_KC][64]).
// Loop order: row block (A micro-panel stays in L1) -> panels (packed B from L2).
template <int MR>
static inline int wg_blk(int i, int M, long kc, const float* A, long lda, const float* Bpk, int koff, int np_, float* C, long ldc) {
    for (; i + MR <= M; i += MR)
        for (int pp = 0; pp < np_; ++pp) {
            float* c = C + (size_t)i * ldc + pp * 64;
            ukr<MR, 4, true>(kc, A + i, lda, Bpk + ((size_t)pp * WG_KC + koff) * 64, 64, 0, nullptr, 0, nullptr, 0, c, ldc, c, ldc);
        }
    return i;
}
static inline void wg_blis_rows(int M, long kc, const float* A, long lda, const float* Bpk, int koff, int np_, float* C, long ldc) {
    int i = wg_blk<WG_MR>(0, M, kc, A, lda, Bpk, koff, np_, C, ldc);
    i = wg_blk<4>(i, M, kc, A, lda, Bpk, koff, np_, C, ldc);
    i = wg_blk<2>(i, M, kc, A, lda, Bpk, koff, np_, C, ldc);
    wg_blk<1>(i, M, kc, A, lda, Bpk, koff, np_, C, ldc);
}
// ---------------------------------------------------------------- workspace
static double g_phase[5];  // pack, forward, backward, barrier wait, weight grads (thread 0, seconds)
extern "C" void lstm_phase_times(double* out) { for (int i = 0; i < 5; ++i) out[i] = g_phase[i]; }
static inline double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
static float* g_ws = nullptr;
static size_t g_ws_size = 0;
static float* ws_get(size_t nfloats) {
    if (nfloats > g_ws_size) {
        free(g_ws);
        g_ws = (float*)aligned_alloc(64, ((nfloats * 4 + 63) / 64) * 64);
        g_ws_size = g_ws ? nfloats : 0;
        if (g_ws) memset(g_ws, 0, nfloats * 4);
    }
    return g_ws;
}

static inline int orig_col(int kint, int H) {  // interleaved column -> original (gate-major) column
    int p = kint / 64, r = kint % 64, gate = r / 16, j = r % 16;
    return gate * H + p * 16 + j;
}

// ---------------------------------------------------------------- training step
// xs: (T,B,D), wx: (D,4H), wh: (H,4H), bias: (4H,), all float32, C order. loss = loss_scale * sum(ys**2)
// (loss_scale = 1/(T*B*H) gives the mean). With with_grads != 0 also dwx (D,4H), dwh (H,4H), db (4H,):
// the loss's gradients; otherwise only the forward pass runs and they are left alone. ys_out (T,B,H)
// may be null. Requires T, B, D >= 1, H a positive multiple of 32, 1 <= nth <= 64, B % nth == 0, (B/nth) % 4 == 0;
// returns -1 otherwise, -2 if OpenMP starts fewer than nth threads, -3 if memory runs out, 0 on success.
extern "C" int lstm_train_step(int T, int B, int D, int H, const float* xs, const float* wx, const float* wh,
                               const float* bias, float loss_scale, int with_grads, float* loss, float* dwx,
                               float* dwh, float* db, float* ys_out, int nth) {
    if (T < 1 || B < 1 || D < 1 || H < 32 || H % 32 || nth < 1 || nth > 64 || B % nth || (B / nth) % 4) return -1;
    const int G4 = 4 * H, KX = D + H, NP = H / 16;
    const size_t TBH = (size_t)T * B * H, TBG = (size_t)T * B * G4;
    // workspace layout
    size_t off = 0;
    auto take = [&](size_t n) { size_t o = off; off += (n + 15) / 16 * 16; return o; };
    size_t oWp = take((size_t)KX * G4);        // packed [Wx;Wh] panels: NP panels of KX x 64
    size_t oWt = take((size_t)G4 * H);         // packed Wh^T panels: H/32 panels of 4H x 32 (rows interleaved)
    size_t oG = take(TBG);                     // gates (post-activation), overwritten in place by dz
    size_t oC = take(TBH);                     // c_t
    size_t oTC = take(TBH);                    // tanh(c_t)
    size_t oY = take(TBH);                     // h_t
    size_t oBI = take(G4);                     // interleaved bias
    size_t oDW = take((size_t)KX * G4);        // interleaved dW ([dWx; dWh])
    size_t oDB = take(G4);
    size_t oS = take((size_t)B * H * 2);       // per-row scratch: dc, dhrec
    const int NPT = (NP + nth - 1) / nth;      // max panels per thread
    size_t oBP = take((size_t)nth * WG_KC * NPT * 64);  // per-thread packed chunk of DZ
    float* ws = ws_get(off);
    if (!ws) return -3;
    float *Wp = ws + oWp, *Wt = ws + oWt, *G = ws + oG, *Cs = ws + oC, *TC = ws + oTC, *Y = ws + oY,
          *BI = ws + oBI, *DW = ws + oDW, *DB = ws + oDB, *S = ws + oS, *BPK = ws + oBP;
    double loss_part[64] = {0};
    int threads_started = nth;

    omp_set_dynamic(0);  // every thread assumes there are exactly nth of them
#pragma omp parallel num_threads(nth)
    {
        const int tid = omp_get_thread_num();
#pragma omp single
        threads_started = omp_get_num_threads();
        // (implicit barrier after single: every thread sees threads_started)
        if (threads_started == nth) {
        const int BR = B / nth, r0 = tid * BR;
        double tp0 = now_s();
        // ---- pack weights (vectorised: 16 interleaved columns map to 16 contiguous original columns)
#pragma omp for schedule(static) nowait
        for (int p = 0; p < NP; ++p)
            for (int k = 0; k < KX; ++k) {
                const float* src = k < D ? wx + (size_t)k * G4 : wh + (size_t)(k - D) * G4;
                float* dst = Wp + ((size_t)p * KX + k) * 64;
                for (int gt = 0; gt < 4; ++gt) _mm512_storeu_ps(dst + 16 * gt, _mm512_loadu_ps(src + gt * H + p * 16));
            }
        {   // Wt[q][k][c] = wh[q*32+c][orig_col(k)]: contiguous 16-float loads, stride-32 scatters
            const __m512i sidx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                   _mm512_set1_epi32(32));
#pragma omp for schedule(static) nowait
            for (int q = 0; q < H / 32; ++q)
                for (int c = 0; c < 32; ++c) {
                    const float* whn = wh + (size_t)(q * 32 + c) * G4;
                    float* dst = Wt + (size_t)q * G4 * 32 + c;
                    for (int kb = 0; kb < G4; kb += 16)
                        _mm512_i32scatter_ps(dst + (size_t)kb * 32, sidx, _mm512_loadu_ps(whn + orig_col(kb, H)), 4);
                }
        }
#pragma omp single
        for (int k = 0; k < G4; ++k) BI[k] = bias[orig_col(k, H)];
        // (implicit barrier after single)

        double tp1 = now_s();
        // ---- forward
        __m512 lacc = _mm512_setzero_ps();
        for (int t = 0; t < T; ++t) {
            const float* xt = xs + ((size_t)t * B + r0) * D;
            const float* hp = t ? Y + ((size_t)(t - 1) * B + r0) * H : nullptr;
            float* Gt = G + ((size_t)t * B + r0) * G4;
            for (int p = 0; p < NP; ++p) {
                const float* Wpp = Wp + (size_t)p * KX * 64;
                for (int cs = 0; cs < 64; cs += 16 * FWD_NV)
                {
                    int rb = 0;
                    for (; rb + FWD_MR <= BR; rb += FWD_MR)
                        ukr<FWD_MR, FWD_NV, false>(D, xt + (size_t)rb * D, D, Wpp + cs, 64, t ? H : 0,
                                                   hp ? hp + (size_t)rb * H : nullptr, H, Wpp + (size_t)D * 64 + cs, 64,
                                                   BI + p * 64 + cs, 0, Gt + (size_t)rb * G4 + p * 64 + cs, G4);
                    for (; rb < BR; rb += 4)  // remainder (BR % 4 == 0)
                        ukr<4, FWD_NV, false>(D, xt + (size_t)rb * D, D, Wpp + cs, 64, t ? H : 0,
                                              hp ? hp + (size_t)rb * H : nullptr, H, Wpp + (size_t)D * 64 + cs, 64,
                                              BI + p * 64 + cs, 0, Gt + (size_t)rb * G4 + p * 64 + cs, G4);
                }
                for (int r = 0; r < BR; ++r) {
                    float* z = Gt + (size_t)r * G4 + p * 64;
                    size_t hi = ((size_t)t * B + r0 + r) * H + p * 16;
                    __m512 ig = sigm512(_mm512_loadu_ps(z));
                    __m512 fg = sigm512(_mm512_loadu_ps(z + 16));
                    __m512 gg = tanh512(_mm512_loadu_ps(z + 32));
                    __m512 og = sigm512(_mm512_loadu_ps(z + 48));
                    __m512 cp = t ? _mm512_loadu_ps(Cs + hi - (size_t)B * H) : _mm512_setzero_ps();
                    __m512 c = _mm512_fmadd_ps(fg, cp, _mm512_mul_ps(ig, gg));
                    __m512 tc = tanh512(c);
                    __m512 h = _mm512_mul_ps(og, tc);
                    _mm512_storeu_ps(z, ig);
                    _mm512_storeu_ps(z + 16, fg);
                    _mm512_storeu_ps(z + 32, gg);
                    _mm512_storeu_ps(z + 48, og);
                    _mm512_storeu_ps(Cs + hi, c);
                    _mm512_storeu_ps(TC + hi, tc);
                    _mm512_storeu_ps(Y + hi, h);
                    lacc = _mm512_fmadd_ps(h, h, lacc);
                }
            }
        }
        loss_part[tid] = _mm512_reduce_add_ps(lacc);

        double tp2 = now_s(), tp3 = tp2, tp4 = tp2;
        if (with_grads) {
        // ---- backward through time
        const __m512 dy_scale = _mm512_set1_ps(2.0f * loss_scale);
        float* dcs = S + (size_t)r0 * H * 2;  // BR x H
        float* dhr = dcs + (size_t)BR * H;    // BR x H
        memset(dcs, 0, sizeof(float) * BR * H);
        const int NQ = (H + 31) / 32;
        for (int t = T - 1; t >= 0; --t) {
            float* Gt = G + ((size_t)t * B + r0) * G4;
            const float* Gn = G + ((size_t)(t + 1) * B + r0) * G4;  // dz_{t+1}
            for (int q = 0; q < NQ; ++q) {
                if (t < T - 1)
                {
                    int rb = 0;
                    for (; rb + BWD_MR <= BR; rb += BWD_MR)
                        ukr<BWD_MR, 2, false>(G4, Gn + (size_t)rb * G4, G4, Wt + (size_t)q * G4 * 32, 32, 0, nullptr, 0,
                                              nullptr, 0, nullptr, 0, dhr + (size_t)rb * H + q * 32, H);
                    for (; rb < BR; rb += 4)
                        ukr<4, 2, false>(G4, Gn + (size_t)rb * G4, G4, Wt + (size_t)q * G4 * 32, 32, 0, nullptr, 0,
                                         nullptr, 0, nullptr, 0, dhr + (size_t)rb * H + q * 32, H);
                }
                const int p_end = (q * 32 + 32 < H ? q * 32 + 32 : H) / 16;
                for (int p = q * 2; p < p_end; ++p)
                    for (int r = 0; r < BR; ++r) {
                        float* z = Gt + (size_t)r * G4 + p * 64;
                        size_t hi = ((size_t)t * B + r0 + r) * H + p * 16;
                        __m512 dh = _mm512_mul_ps(_mm512_loadu_ps(Y + hi), dy_scale);  // d loss / d y
                        if (t < T - 1) dh = _mm512_add_ps(dh, _mm512_loadu_ps(dhr + (size_t)r * H + p * 16));
                        __m512 ig = _mm512_loadu_ps(z), fg = _mm512_loadu_ps(z + 16), gg = _mm512_loadu_ps(z + 32),
                               og = _mm512_loadu_ps(z + 48);
                        __m512 tc = _mm512_loadu_ps(TC + hi);
                        __m512 cp = t ? _mm512_loadu_ps(Cs + hi - (size_t)B * H) : _mm512_setzero_ps();
                        __m512 one = _mm512_set1_ps(1.0f);
                        __m512 dc = _mm512_loadu_ps(dcs + (size_t)r * H + p * 16);
                        __m512 dho = _mm512_mul_ps(dh, og);
                        dc = _mm512_fmadd_ps(dho, _mm512_fnmadd_ps(tc, tc, one), dc);
                        __m512 dzo = _mm512_mul_ps(_mm512_mul_ps(dh, tc), _mm512_mul_ps(og, _mm512_sub_ps(one, og)));
                        __m512 dzi = _mm512_mul_ps(_mm512_mul_ps(dc, gg), _mm512_mul_ps(ig, _mm512_sub_ps(one, ig)));
                        __m512 dzg = _mm512_mul_ps(_mm512_mul_ps(dc, ig), _mm512_fnmadd_ps(gg, gg, one));
                        __m512 dzf = _mm512_mul_ps(_mm512_mul_ps(dc, cp), _mm512_mul_ps(fg, _mm512_sub_ps(one, fg)));
                        _mm512_storeu_ps(z, dzi);
                        _mm512_storeu_ps(z + 16, dzf);
                        _mm512_storeu_ps(z + 32, dzg);
                        _mm512_storeu_ps(z + 48, dzo);
                        _mm512_storeu_ps(dcs + (size_t)r * H + p * 16, _mm512_mul_ps(dc, fg));
                    }
            }
        }
        tp3 = now_s();
#pragma omp barrier
        tp4 = now_s();
        // ---- weight gradients: DW (KX x 4H, interleaved) = [X | Hprev]^T @ DZ, split by 64-col panels
        const long TB = (long)T * B;
        const int pc0 = NP * tid / nth, pc1 = NP * (tid + 1) / nth, np_ = pc1 - pc0;
        {
            float* bpk = BPK + (size_t)tid * WG_KC * NPT * 64;
            float* Ct = DW + pc0 * 64;
            for (int k = 0; k < KX; ++k) memset(Ct + (size_t)k * G4, 0, (size_t)np_ * 64 * 4);
            memset(DB + pc0 * 64, 0, (size_t)np_ * 64 * 4);
            for (long k0 = 0; k0 < TB; k0 += WG_KC) {
                long kc = TB - k0 < WG_KC ? TB - k0 : WG_KC;
                for (int pp = 0; pp < np_; ++pp) {  // pack a chunk of DZ, summing db on the way
                    __m512 sv[4];
                    for (int v = 0; v < 4; ++v) sv[v] = _mm512_loadu_ps(DB + (pc0 + pp) * 64 + 16 * v);
                    for (long k = 0; k < kc; ++k) {
                        const float* src = G + (size_t)(k0 + k) * G4 + (pc0 + pp) * 64;
                        float* dst = bpk + ((size_t)pp * WG_KC + k) * 64;
                        for (int v = 0; v < 4; ++v) {
                            __m512 x = _mm512_loadu_ps(src + 16 * v);
                            _mm512_storeu_ps(dst + 16 * v, x);
                            sv[v] = _mm512_add_ps(sv[v], x);
                        }
                    }
                    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(DB + (pc0 + pp) * 64 + 16 * v, sv[v]);
                }
                wg_blis_rows(D, kc, xs + (size_t)k0 * D, D, bpk, 0, np_, Ct, G4);
                long ks = k0 < B ? B : k0;  // row k of H_prev is row k - B of Y (zero for k < B)
                if (ks < k0 + kc)
                    wg_blis_rows(H, k0 + kc - ks, Y + (size_t)(ks - B) * H, H, bpk, (int)(ks - k0), np_, Ct + (size_t)D * G4, G4);
            }
        }
        for (int p = pc0; p < pc1; ++p) {
            float* dwp = DW + p * 64;
            // un-interleave into outputs: 16 interleaved columns -> 16 contiguous original columns
            for (int gt = 0; gt < 4; ++gt) {
                const int oc = gt * H + p * 16;
                for (int k = 0; k < D; ++k) _mm512_storeu_ps(dwx + (size_t)k * G4 + oc, _mm512_loadu_ps(dwp + (size_t)k * G4 + 16 * gt));
                for (int k = 0; k < H; ++k)
                    _mm512_storeu_ps(dwh + (size_t)k * G4 + oc, _mm512_loadu_ps(dwp + (size_t)(D + k) * G4 + 16 * gt));
                _mm512_storeu_ps(db + oc, _mm512_loadu_ps(DB + p * 64 + 16 * gt));
            }
        }
        }  // with_grads
        if (tid == 0) {
            double tp5 = now_s();
            g_phase[0] = tp1 - tp0; g_phase[1] = tp2 - tp1; g_phase[2] = tp3 - tp2; g_phase[3] = tp4 - tp3; g_phase[4] = tp5 - tp4;
        }
        }  // threads_started == nth
    }
    if (threads_started != nth) return -2;  // OpenMP started fewer threads (OMP_THREAD_LIMIT, ...)
    double l = 0;
    for (int i = 0; i < nth; ++i) l += loss_part[i];
    *loss = (float)(l * loss_scale);
    if (ys_out) memcpy(ys_out, Y, TBH * 4);
    return 0;
}
