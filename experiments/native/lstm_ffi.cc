// XLA FFI handler around lstm_train_step (lstm_train_step.cpp), so that jax.jit can call the kernel
// as a custom call: `jax.ffi.ffi_call` with xs (T,B,D), w_x (D,4H), w_h (H,4H), b (4H,), float32,
// attributes threads and with_grads, results loss (1,), dw_x, dw_h, db (zeros without with_grads).
// Built into the same library as the kernel by experiments/_native_kernel.py, against the XLA FFI
// headers that jaxlib ships (jax.ffi.include_dir()).
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

extern "C" int lstm_train_step(int T, int B, int D, int H, const float* xs, const float* wx, const float* wh,
                               const float* bias, float loss_scale, int with_grads, float* loss, float* dwx,
                               float* dwh, float* db, float* ys_out, int nth);

static ffi::Error LstmLossAndGrads(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> wx, ffi::Buffer<ffi::F32> wh,
                                   ffi::Buffer<ffi::F32> b, int32_t threads, int32_t with_grads,
                                   ffi::ResultBuffer<ffi::F32> loss, ffi::ResultBuffer<ffi::F32> dwx,
                                   ffi::ResultBuffer<ffi::F32> dwh, ffi::ResultBuffer<ffi::F32> db) {
  auto dims = xs.dimensions();
  if (dims.size() != 3 || wh.dimensions().size() != 2)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "xs must be (T, B, D) and w_h (H, 4H)");
  const int T = dims[0], B = dims[1], D = dims[2], H = wh.dimensions()[0];
  if (!with_grads) {
    std::memset(dwx->typed_data(), 0, dwx->size_bytes());
    std::memset(dwh->typed_data(), 0, dwh->size_bytes());
    std::memset(db->typed_data(), 0, db->size_bytes());
  }
  const int status = lstm_train_step(T, B, D, H, xs.typed_data(), wx.typed_data(), wh.typed_data(), b.typed_data(),
                                     1.0f / (static_cast<float>(T) * B * H), with_grads, loss->typed_data(),
                                     dwx->typed_data(), dwh->typed_data(), db->typed_data(), nullptr, threads);
  if (status != 0)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "lstm_train_step refused the call (status " + std::to_string(status) + ")");
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmLossAndGradsHandler, LstmLossAndGrads,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("threads")
                                  .Attr<int32_t>("with_grads")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
