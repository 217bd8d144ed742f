// lstmjax/native/weight_gradient_cpu.cc -- the weight gradients of a recurrence whose pre-activations
// are  z_t = x_t @ w_x + h_{t-1} @ w_h + b  (h_{-1} = h0), from the cotangents dz_t of every step:
//   dw_x = sum_t x_t^T dz_t,   dw_h = sum_t h_{t-1}^T dz_t,   db = sum_t sum_rows dz_t,
// in one pass over dz (AVX-512, on XLA's own thread pool), as an XLA FFI handler. The LSTM's
// backward (lstm_cpu.cc) gives dz; the recurrent products of the three sums then read h_{t-1}
// straight from h0 and the saved hs, with no (T, B, H) copy of the shifted sequence.
//
// WeightGradientHandler
//   args:    xs (T,B,D) (D may be 0), h0 (B,H), hs (T,B,H) (h_t after each step), dz (T,B,G)
//   attrs:   threads (int32): the most workers to use
//   results: dw_x (D,G), dw_h (H,G), db (G,)
// All float32, C order, any T, B, D, H, G >= 1 (D >= 0) with every dimension and T*B below 2^31.
//
// How. The products are one matrix product [X | H_before]^T (D+H, T*B) @ DZ (T*B, G), with the
// rows of H_before (T*B, H) the rows of h0 followed by those of hs without its last step. DZ's
// columns are cut into 64-column panels; DZ is read a chunk of KC rows at a time and packed per
// panel (zero-filled past G, summing db on the way) into a small buffer that stays in L1, and the
// register-blocked micro-kernel of lstm_simd.h (6 rows x 64 columns, A read transposed) adds
// [X | H_before]^T's chunk times the packed one into the panel's (D+H) x 64 result tile. Work
// items are panels, and where there are few panels for the workers, parts of the T*B rows of a
// panel, whose partial tiles are summed at the end. Each worker takes a contiguous run of items.
// The order of summation over rows is fixed by the shapes and the number of workers, so results
// are deterministic on a machine. Errors (a buffer of the wrong rank or shape, threads out of range, a failed
// allocation) come back as FFI errors naming the argument, what was received and what is required.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <algorithm>
#include <string>

#include "ffi_support.h"
#include "lstm_simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace lstm_simd;        // ukr (lstm_simd.h)
using namespace native_support;  // Workspace, check_*, parallel_for (ffi_support.h)

constexpr int kPanel = 64;  // columns of a panel (4 zmm)
constexpr int kChunk = 128;  // rows of DZ packed at a time (kChunk x 64 floats = 32 KiB)

// Rows [0, M) of tile C (M x 64, ld 64) += A^T-chunk @ P, with A(i, k) = A[k * lda + i] (kc rows)
// and P the packed chunk (kc x 64, ld 64). Each chunk's product is formed from zero and then added
// to C, a two-level sum over rows that keeps float32 rounding near that of a blocked library
// product (one running sum over all T*B rows measured 5x XLA's error at T*B = 3200).
template <int MR>
inline int add_rows(int i, int M, int kc, const float* A, long lda, const float* P, float* C) {
  alignas(64) float chunk[MR * kPanel];
  for (; i + MR <= M; i += MR) {
    ukr<MR, 4, true>(kc, A + i, lda, P, kPanel, 0, nullptr, 0, nullptr, 0, nullptr, 0, chunk, kPanel);
    float* c = C + (size_t)i * kPanel;
    for (int j = 0; j < MR * kPanel; j += 16)
      _mm512_storeu_ps(c + j, _mm512_add_ps(_mm512_loadu_ps(c + j), _mm512_load_ps(chunk + j)));
  }
  return i;
}
inline void add_product(int M, int kc, const float* A, long lda, const float* P, float* C) {
  if (kc <= 0 || M <= 0) return;
  int i = add_rows<6>(0, M, kc, A, lda, P, C);
  i = add_rows<4>(i, M, kc, A, lda, P, C);
  i = add_rows<2>(i, M, kc, A, lda, P, C);
  add_rows<1>(i, M, kc, A, lda, P, C);
}

ffi::Error WeightGradient(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> h0,
                          ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> dz, int32_t threads,
                          ffi::ResultBuffer<ffi::F32> dw_x, ffi::ResultBuffer<ffi::F32> dw_h,
                          ffi::ResultBuffer<ffi::F32> db) {
  const char* fn = "lstmjax_weight_gradient";
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "xs", xs, 3, "(T, B, D)"));
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "dz", dz, 3, "(T, B, G)"));
  NATIVE_RETURN_IF_ERROR(check_rank(fn, "h0", h0, 2, "(B, H)"));
  const int64_t T = xs.dimensions()[0], B = xs.dimensions()[1], D = xs.dimensions()[2];
  const int64_t H = h0.dimensions()[1], G = dz.dimensions()[2];
  auto bad = [&](const std::string& m) { return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string(fn) + ": " + m); };
  if (T < 1 || B < 1 || H < 1 || G < 1)
    return bad("T, B, H, G = " + std::to_string(T) + ", " + std::to_string(B) + ", " + std::to_string(H) + ", " +
               std::to_string(G) + " (from xs, h0, dz) must each be >= 1");
  if (T * B > INT_MAX || D > INT_MAX || H > INT_MAX || G > INT_MAX)
    return bad("T*B = " + std::to_string(T * B) + ", D, H and G must each be < 2^31");
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "h0", h0, {B, H}, "(B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "hs", hs, {T, B, H}, "(T, B, H)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "dz", dz, {T, B, G}, "(T, B, G)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "dw_x", *dw_x, {D, G}, "(D, G)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "dw_h", *dw_h, {H, G}, "(H, G)"));
  NATIVE_RETURN_IF_ERROR(check_shape(fn, "db", *db, {G}, "(G,)"));
  NATIVE_RETURN_IF_ERROR(check_threads(fn, threads));

  const int rows = (int)(T * B), M = (int)(D + H), panels = (int)((G + kPanel - 1) / kPanel);
  const int workers = std::min(workers_for(pool, threads), std::max(1, rows / kChunk) * panels);
  // Few panels for the workers (for instance 3 on 2): split each panel's rows into `parts`, the
  // fewest that give the busiest worker the least work, at most ceil(4 * workers / panels) so that
  // the partial tiles stay under about 8 * workers tiles.
  int parts = 1;
  if (panels < 4 * workers) {
    long best = 0;  // the busiest worker's items, in units of 1 / (parts of the best) panels, compared exactly
    for (int p = 1; p <= (4 * workers + panels - 1) / panels && p <= std::max(1, rows / kChunk); ++p) {
      const long busiest = ((long)panels * p + workers - 1) / workers;  // items of 1/p panel each
      if (p == 1 || busiest * parts < best * p) best = busiest, parts = p;
    }
  }
  const int items = panels * parts;
  const size_t tile = (size_t)M * kPanel + kPanel;  // a panel's (D+H) x 64 result and its 64 db sums
  const size_t per_worker = tile + (size_t)kChunk * kPanel;
  const size_t floats = per_worker * workers + (parts > 1 ? tile * items : 0);
  Workspace ws(floats);
  if (!ws.p) return allocation_error(fn, floats);
  float* partial = ws.p + per_worker * workers;

  const float* X = xs.typed_data();
  const float* H0 = h0.typed_data();
  const float* HS = hs.typed_data();
  const float* DZ = dz.typed_data();
  float* DWX = dw_x->typed_data();
  float* DWH = dw_h->typed_data();
  float* DB = db->typed_data();

  // Columns [64p, 64p + width) of the results from tile C (its db sums after its M rows).
  auto write = [&](int p, const float* C) {
    const int width = (int)std::min<int64_t>(kPanel, G - (int64_t)p * kPanel);
    for (int i = 0; i < M; ++i) {
      float* dst = i < D ? DWX + (size_t)i * G : DWH + (size_t)(i - D) * G;
      std::memcpy(dst + (size_t)p * kPanel, C + (size_t)i * kPanel, width * sizeof(float));
    }
    std::memcpy(DB + (size_t)p * kPanel, C + (size_t)M * kPanel, width * sizeof(float));
  };

  parallel_for(pool, workers, workers, [&](int w) {
    float* C = ws.p + per_worker * w;
    float* P = C + tile;
    for (int item = (int)((long)w * items / workers); item < (int)((long)(w + 1) * items / workers); ++item) {
      const int p = item / parts, s = item % parts;
      const int first = (int)((long)rows * s / parts), last = (int)((long)rows * (s + 1) / parts);
      const int width = (int)std::min<int64_t>(kPanel, G - (int64_t)p * kPanel);
      __mmask16 mask[4];  // the panel's columns inside G, per vector of 16
      for (int v = 0; v < 4; ++v) mask[v] = (__mmask16)((1u << std::clamp(width - 16 * v, 0, 16)) - 1);
      std::memset(C, 0, tile * sizeof(float));
      __m512 sums[4];
      for (int v = 0; v < 4; ++v) sums[v] = _mm512_setzero_ps();
      for (int k0 = first; k0 < last; k0 += kChunk) {
        const int kc = std::min(kChunk, last - k0);
        // Pack DZ's chunk of this panel, summing db on the way in three levels (runs of 16 rows, the
        // chunk, all chunks), which keeps its rounding near that of XLA's reduction.
        __m512 chunk_sums[4], run_sums[4];
        for (int v = 0; v < 4; ++v) chunk_sums[v] = _mm512_setzero_ps();
        for (int r0 = 0; r0 < kc; r0 += 16) {
          for (int v = 0; v < 4; ++v) run_sums[v] = _mm512_setzero_ps();
          for (int k = r0; k < std::min(kc, r0 + 16); ++k) {
            const float* src = DZ + (size_t)(k0 + k) * G + (size_t)p * kPanel;
            for (int v = 0; v < 4; ++v) {
              __m512 x = _mm512_maskz_loadu_ps(mask[v], src + 16 * v);
              _mm512_store_ps(P + (size_t)k * kPanel + 16 * v, x);
              run_sums[v] = _mm512_add_ps(run_sums[v], x);
            }
          }
          for (int v = 0; v < 4; ++v) chunk_sums[v] = _mm512_add_ps(chunk_sums[v], run_sums[v]);
        }
        for (int v = 0; v < 4; ++v) sums[v] = _mm512_add_ps(sums[v], chunk_sums[v]);
        if (D > 0) add_product((int)D, kc, X + (size_t)k0 * D, D, P, C);
        // H_before's rows: h0's for k < B, then hs's shifted by one step (row k is hs's row k - B)
        const int split = (int)std::min<int64_t>(std::max<int64_t>(B - k0, 0), kc);
        add_product((int)H, split, H0 + (size_t)k0 * H, H, P, C + (size_t)D * kPanel);
        if (split < kc)
          add_product((int)H, kc - split, HS + (size_t)(k0 + split - B) * H, H, P + (size_t)split * kPanel,
                      C + (size_t)D * kPanel);
      }
      for (int v = 0; v < 4; ++v) _mm512_storeu_ps(C + (size_t)M * kPanel + 16 * v, sums[v]);
      if (parts == 1)
        write(p, C);
      else
        std::memcpy(partial + tile * item, C, tile * sizeof(float));
    }
  });
  if (parts > 1)  // each panel's partial tiles, summed in a fixed order
    parallel_for(pool, workers, panels, [&](int p) {
      float* total = partial + tile * ((size_t)p * parts);
      for (int s = 1; s < parts; ++s) {
        const float* add = partial + tile * ((size_t)p * parts + s);
        for (size_t j = 0; j < tile; j += 16)
          _mm512_store_ps(total + j, _mm512_add_ps(_mm512_load_ps(total + j), _mm512_load_ps(add + j)));
      }
      write(p, total);
    });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(WeightGradientHandler, WeightGradient,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs (T,B,D)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 (B,H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // hs (T,B,H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dz (T,B,G)
                                  .Attr<int32_t>("threads")
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dw_x (D,G)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dw_h (H,G)
                                  .Ret<ffi::Buffer<ffi::F32>>());  // db (G,)
