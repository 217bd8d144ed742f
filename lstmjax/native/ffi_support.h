// lstmjax/native/ffi_support.h -- what the native kernels (lstm_cpu.cc, gru_cpu.cc, rnn_cpu.cc,
// weight_gradient_cpu.cc) share besides the SIMD math of lstm_simd.h: an aligned per-call workspace, the argument checks that
// turn a bad buffer into an FFI error naming it (what was received, what is required), and
// parallel_for over XLA's own intra-op thread pool.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace native_support {

namespace ffi = xla::ffi;

constexpr int kMaxThreads = 256;  // the largest `threads` attribute a kernel accepts

struct Workspace {  // one aligned allocation per call, freed on scope exit
  float* p = nullptr;
  explicit Workspace(size_t nfloats) {
    size_t bytes = (nfloats * sizeof(float) + 63) / 64 * 64;
    p = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
  }
  ~Workspace() { std::free(p); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
};
inline size_t round16(size_t n) { return (n + 15) / 16 * 16; }  // keep sub-arrays 64-byte aligned

// The error a kernel returns when its workspace of `floats` floats could not be allocated.
inline ffi::Error allocation_error(const char* fn, size_t floats) {
  return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                    std::string(fn) + ": could not allocate " + std::to_string(floats * 4) + " bytes of workspace");
}

template <typename Dims>
std::string shape_str(const Dims& d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(d[i]);
  }
  if (d.size() == 1) s += ",";
  return s + ")";
}

// Checks that buffer `name` has shape `want` (entries < 0 are not checked); `what` spells the
// required shape symbolically, e.g. "(T, B, H)".
template <typename Buf>
ffi::Error check_shape(const char* fn, const char* name, const Buf& buf, std::initializer_list<int64_t> want,
                       const char* what, const char* note = "") {
  auto d = buf.dimensions();
  bool ok = d.size() == want.size();
  if (ok) {
    size_t k = 0;
    for (int64_t w : want) {
      if (w >= 0 && d[k] != w) ok = false;
      ++k;
    }
  }
  if (ok) return ffi::Error::Success();
  std::string req = "(";
  size_t k = 0;
  for (int64_t w : want) {
    if (k) req += ", ";
    req += std::to_string(w);
    ++k;
  }
  if (want.size() == 1) req += ",";
  req += ")";
  return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                    std::string(fn) + ": " + name + " has shape " + shape_str(d) + " but must be " + what + " = " +
                        req + note);
}

// T >= 1, B a positive multiple of 4, D >= 1, H a positive multiple of 32, gates * H < 2^31; the
// *_src strings say where each dimension was read, for the message.
inline ffi::Error check_dims(const char* fn, int64_t T, int64_t B, int64_t D, int64_t H, int gates, const char* t_src,
                             const char* b_src, const char* d_src, const char* h_src) {
  auto bad = [&](const std::string& m) { return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string(fn) + ": " + m); };
  if (T < 1) return bad("T = " + std::to_string(T) + " (" + t_src + ") must be >= 1");
  if (B < 4 || B % 4)
    return bad("B = " + std::to_string(B) + " (" + b_src + ") must be >= 4 and a multiple of 4");
  if (D < 1) return bad("D = " + std::to_string(D) + " (" + d_src + ") must be >= 1");
  if (H < 32 || H % 32)
    return bad("H = " + std::to_string(H) + " (" + h_src + ") must be >= 32 and a multiple of 32");
  if (T > INT_MAX || B > INT_MAX || D > INT_MAX || gates * H > INT_MAX)
    return bad("dimensions T = " + std::to_string(T) + ", B = " + std::to_string(B) + ", D = " + std::to_string(D) +
               ", " + std::to_string(gates) + "H = " + std::to_string(gates * H) + " must each be < 2^31");
  return ffi::Error::Success();
}

// Checks that buffer `name` has rank `rank`; `what` spells the required shape, e.g. "(T, B, D)".
template <typename Buf>
ffi::Error check_rank(const char* fn, const char* name, const Buf& buf, size_t rank, const char* what) {
  if (buf.dimensions().size() == rank) return ffi::Error::Success();
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string(fn) + ": " + name + " has shape " +
                                                          shape_str(buf.dimensions()) + " but must be rank " +
                                                          std::to_string(rank) + ", " + what);
}

inline ffi::Error check_threads(const char* fn, int32_t threads) {
  if (threads < 1 || threads > kMaxThreads)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string(fn) + ": attribute threads = " +
                                                            std::to_string(threads) + " must be in [1, " +
                                                            std::to_string(kMaxThreads) + "]");
  return ffi::Error::Success();
}

#define NATIVE_RETURN_IF_ERROR(expr)      \
  do {                                  \
    ffi::Error e_ = (expr);             \
    if (e_.failure()) return e_;        \
  } while (0)

// ---------------------------------------------------------------- threads
// body(0 .. n-1), shared out over XLA's own intra-op thread pool (no threads of our own, so nothing
// spins against XLA or against another library's OpenMP). The calling thread takes items too and
// items are handed out by an atomic counter, so the call finishes even when every pool thread is
// busy (for instance running another of these calls): it never waits for a task that has not
// started. A task that starts after all items are taken returns at once without touching `body`.
struct ParallelState {
  std::atomic<int> next{0};
  std::atomic<int> remaining{0};
  int n = 0;
  std::function<void(int)> body;
  std::mutex mu;
  std::condition_variable cv;
};

inline void parallel_for(ffi::ThreadPool& pool, int workers, int n, const std::function<void(int)>& body) {
  if (n <= 0) return;
  if (workers <= 1 || n == 1) {
    for (int i = 0; i < n; ++i) body(i);
    return;
  }
  auto state = std::make_shared<ParallelState>();
  state->n = n;
  state->remaining.store(n);
  state->body = body;
  auto work = [state]() {
    for (int i; (i = state->next.fetch_add(1)) < state->n;) {
      state->body(i);
      if (state->remaining.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  for (int w = 1; w < std::min(workers, n); ++w) pool.Schedule(std::function<void()>(work));
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->remaining.load() == 0; });
}

// Workers for a call: at most `threads` (the caller's cap), at most the pool's size, at least 1.
inline int workers_for(ffi::ThreadPool& pool, int32_t threads) {
  const int64_t pool_size = pool.num_threads();
  return (int)std::max<int64_t>(1, std::min<int64_t>(threads, pool_size > 0 ? pool_size : 1));
}

// The batch rows worker `tid` of `nt` owns for every step: row blocks [tid*nb/nt, (tid+1)*nb/nt) of
// the nb = B/4 blocks of 4 rows, as rows [first, first + count) (count may be 0).
struct RowRange {
  int first, count;
};
inline RowRange rows_of_worker(int tid, int nt, int B) {
  const int nb = B / 4, rb0 = (int)((long)tid * nb / nt), rb1 = (int)((long)(tid + 1) * nb / nt);
  return {rb0 * 4, (rb1 - rb0) * 4};
}

// W (H x G, row-major) transposed into H/32 panels of (G x 32): Wt[q][k][c] = W[q*32 + c][k], the
// layout the backward kernels' recurrent products dz @ W^T read (contiguous 16-float loads of a W
// row, stride-32 scatters into the panel; panels shared out over the pool). G % 16 == 0, H % 32 == 0.
inline void pack_transposed_panels(ffi::ThreadPool& pool, int workers, const float* W, int H, int G, float* Wt) {
  const __m512i sidx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(32));
  parallel_for(pool, workers, H / 32, [&](int q) {
    for (int c = 0; c < 32; ++c) {
      const float* src = W + (size_t)(q * 32 + c) * G;
      float* dst = Wt + (size_t)q * G * 32 + c;
      for (int kb = 0; kb < G; kb += 16) _mm512_i32scatter_ps(dst + (size_t)kb * 32, sidx, _mm512_loadu_ps(src + kb), 4);
    }
  });
}

}  // namespace native_support
