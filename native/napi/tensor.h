// NativeTensor: a JS handle to memory owned by a backend. The memory is reference-counted, so an
// async job that reads a tensor keeps it alive even if JS disposes the handle meanwhile; JS only
// ever sees copies (toArray), never a view that could outlive the memory.
#pragma once
#include <napi.h>

#include <memory>
#include <vector>

#include "../core/backend.h"

namespace repadapter {

struct Storage {
  Backend* backend = nullptr;
  float* data = nullptr;
  int64_t numel = 0;
  ~Storage() {
    if (backend) backend->release(data);
  }
};

class NativeTensor : public Napi::ObjectWrap<NativeTensor> {
 public:
  static Napi::Function Define(Napi::Env env);
  // A new JS tensor over `storage` with `shape`.
  static Napi::Object Wrap(Napi::Env env, std::shared_ptr<Storage> storage, std::vector<int64_t> shape);
  // The tensor behind a JS value, or a thrown TypeError / disposed error naming `what`.
  static NativeTensor& From(Napi::Env env, Napi::Value value, const char* what);
  static Status Allocate(Backend& backend, int64_t numel, std::shared_ptr<Storage>* out);

  explicit NativeTensor(const Napi::CallbackInfo& info);
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const { return storage_ ? storage_->numel : 0; }

 private:
  Napi::Value ToArray(const Napi::CallbackInfo& info);
  Napi::Value Shape(const Napi::CallbackInfo& info);
  Napi::Value Disposed(const Napi::CallbackInfo& info);
  Napi::Value Device(const Napi::CallbackInfo& info);
  void Dispose(const Napi::CallbackInfo& info);

  std::shared_ptr<Storage> storage_;
  std::vector<int64_t> shape_;
};

}  // namespace repadapter
