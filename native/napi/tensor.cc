#include "tensor.h"

#include <cstring>
#include <string>

#include "../cpu/cpu_backend.h"
#include "addon_data.h"
#include "errors.h"

namespace repadapter {

Napi::Function NativeTensor::Define(Napi::Env env) {
  return DefineClass(env, "NativeTensor", {
    InstanceMethod<&NativeTensor::ToArray>("toArray"),
    InstanceMethod<&NativeTensor::Shape>("shape"),
    InstanceMethod<&NativeTensor::Disposed>("disposed"),
    InstanceMethod<&NativeTensor::Device>("device"),
    InstanceMethod<&NativeTensor::Dispose>("dispose"),
  });
}

Status NativeTensor::Allocate(Backend& backend, int64_t numel, std::shared_ptr<Storage>* out) {
  auto s = std::make_shared<Storage>();
  RA_RETURN_IF_ERROR(backend.allocate(std::max<int64_t>(numel, 1) * sizeof(float), reinterpret_cast<void**>(&s->data)));
  s->backend = &backend;
  s->numel = numel;
  *out = std::move(s);
  return Status::Ok();
}

// new NativeTensor(data: Float32Array, shape: number[]) copies data into CPU memory.
// new NativeTensor() makes an empty handle that Wrap() fills in.
NativeTensor::NativeTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTensor>(info) {
  Napi::Env env = info.Env();
  if (info.Length() == 0) return;
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw_invalid(env, "expected a Float32Array for data");
  if (!info[1].IsArray()) throw_invalid(env, "expected an array of integers for shape");
  Napi::Float32Array data = info[0].As<Napi::Float32Array>();
  Napi::Array shape = info[1].As<Napi::Array>();
  int64_t numel = 1;
  for (uint32_t i = 0; i < shape.Length(); ++i) {
    Napi::Value d = shape.Get(i);
    double v = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
    if (!(v >= 0) || v != static_cast<double>(static_cast<int64_t>(v)))
      throw_invalid(env, "expected non-negative integers for shape");
    shape_.push_back(static_cast<int64_t>(v));
    numel *= static_cast<int64_t>(v);
  }
  if (numel != static_cast<int64_t>(data.ElementLength()))
    throw_invalid(env, "shape holds " + std::to_string(numel) + " elements but data has " +
                           std::to_string(data.ElementLength()));
  Backend& be = cpu_backend();
  throw_if_error(env, Allocate(be, numel, &storage_));
  throw_if_error(env, be.upload(storage_->data, data.Data(), numel * sizeof(float)));
}

Napi::Object NativeTensor::Wrap(Napi::Env env, std::shared_ptr<Storage> storage, std::vector<int64_t> shape) {
  Napi::Object object = env.GetInstanceData<AddonData>()->tensor_class.New({});
  NativeTensor* t = Napi::ObjectWrap<NativeTensor>::Unwrap(object);
  t->storage_ = std::move(storage);
  t->shape_ = std::move(shape);
  return object;
}

NativeTensor& NativeTensor::From(Napi::Env env, Napi::Value value, const char* what) {
  AddonData* data = env.GetInstanceData<AddonData>();
  if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(data->tensor_class.Value()))
    throw_invalid(env, std::string("expected a Tensor for ") + what);
  NativeTensor* t = Napi::ObjectWrap<NativeTensor>::Unwrap(value.As<Napi::Object>());
  if (!t->storage_) {
    Napi::Error e = Napi::Error::New(env, std::string("the Tensor passed as ") + what + " has been disposed");
    e.Set("code", Napi::String::New(env, "RA_DISPOSED"));
    throw e;
  }
  return *t;
}

Napi::Value NativeTensor::ToArray(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!storage_) {
    Napi::Error e = Napi::Error::New(env, "this Tensor has been disposed");
    e.Set("code", Napi::String::New(env, "RA_DISPOSED"));
    throw e;
  }
  Napi::Float32Array out = Napi::Float32Array::New(env, storage_->numel);
  throw_if_error(env, storage_->backend->download(out.Data(), storage_->data, storage_->numel * sizeof(float)));
  return out;
}

Napi::Value NativeTensor::Shape(const Napi::CallbackInfo& info) {
  Napi::Array out = Napi::Array::New(info.Env(), shape_.size());
  for (size_t i = 0; i < shape_.size(); ++i) out.Set(i, Napi::Number::New(info.Env(), static_cast<double>(shape_[i])));
  return out;
}

Napi::Value NativeTensor::Disposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !storage_);
}

Napi::Value NativeTensor::Device(const Napi::CallbackInfo& info) {
  const bool cuda = storage_ && storage_->backend->device() == Device::kCUDA;
  return Napi::String::New(info.Env(), cuda ? "cuda" : "cpu");
}

// Idempotent; memory an async job still reads is released when that job ends.
void NativeTensor::Dispose(const Napi::CallbackInfo&) { storage_.reset(); }

}  // namespace repadapter
