// N-API surface of the data pipeline (native/data/batch.h): argument conversion and checks only.
//
//   dataPermutation(n, seed, epoch) → Int32Array
//   dataBatch(pixels, [n, h, w, c], indices, labels | null, spec)       → BatchResult
//   dataBatchAsync(pixels, [n, h, w, c], indices, labels | null, spec)  → Promise<BatchResult>
//   dataResizeAsync(src, [n, h, w, c], dst, [oh, ow], 'bicubic' | 'bilinear') → Promise<void>
//     BatchResult = { images: NativeTensor [B,3,S,S], softTargets: Float32Array | null,
//                     lam: number, cutmix: boolean, box: [y0, y1, x0, x1] }
//
// dataBatchAsync runs on libuv's pool (one short job per batch; the loader keeps at most one in
// flight, so three of the four pool threads stay free for file reads and image decoding). It
// holds a reference to `pixels` until the job ends; indices and labels are copied.
#include "data.h"

#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../cpu/cpu_backend.h"
#include "../data/batch.h"
#include "errors.h"
#include "tensor.h"

namespace repadapter {
namespace {

struct BatchArgs {
  data::ImageCache cache;
  data::BatchSpec spec;
  std::vector<int32_t> indices;
  std::vector<int32_t> labels;
  bool soft = false;
  Napi::Uint8Array pixels;
};

double number_at(Napi::Env env, Napi::Object o, const char* key, double fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsNumber()) throw_invalid(env, std::string("expected a number for spec.") + key);
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) throw_invalid(env, std::string("expected a finite number for spec.") + key);
  return d;
}

int64_t integer_at(Napi::Env env, Napi::Object o, const char* key, int64_t fallback) {
  double d = number_at(env, o, key, static_cast<double>(fallback));
  if (d != std::floor(d) || std::fabs(d) > 9007199254740991.0)
    throw_invalid(env, std::string("expected an integer for spec.") + key + ", got " + std::to_string(d));
  return static_cast<int64_t>(d);
}

uint64_t counter_at(Napi::Env env, Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsBigInt()) {
    bool lossless = true;
    uint64_t u = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw_invalid(env, std::string("expected a 64-bit unsigned BigInt for spec.") + key);
    return u;
  }
  int64_t i = integer_at(env, o, key, 0);
  if (i < 0) throw_invalid(env, std::string("expected a non-negative integer for spec.") + key);
  return static_cast<uint64_t>(i);
}

void triple_at(Napi::Env env, Napi::Object o, const char* key, float* out) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return;
  if (!v.IsArray() || v.As<Napi::Array>().Length() != 3)
    throw_invalid(env, std::string("expected an array of 3 numbers for spec.") + key);
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < 3; ++i) {
    Napi::Value x = a.Get(i);
    if (!x.IsNumber()) throw_invalid(env, std::string("expected an array of 3 numbers for spec.") + key);
    out[i] = x.As<Napi::Number>().FloatValue();
  }
}

Napi::Int32Array int32_array(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw_invalid(env, std::string("expected an Int32Array for ") + what);
  return v.As<Napi::Int32Array>();
}

BatchArgs parse_batch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BatchArgs a;
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw_invalid(env, "expected a Uint8Array for pixels");
  a.pixels = info[0].As<Napi::Uint8Array>();
  if (!info[1].IsArray() || info[1].As<Napi::Array>().Length() != 4)
    throw_invalid(env, "expected [n, height, width, channels] for the pixel shape");
  int64_t dims[4];
  Napi::Array shape = info[1].As<Napi::Array>();
  for (uint32_t i = 0; i < 4; ++i) {
    Napi::Value d = shape.Get(i);
    double v = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
    if (!(v >= 0) || v != std::floor(v)) throw_invalid(env, "expected non-negative integers for the pixel shape");
    dims[i] = static_cast<int64_t>(v);
  }
  a.cache = data::ImageCache{a.pixels.Data(), dims[0], dims[1], dims[2], dims[3]};
  const double bytes = static_cast<double>(dims[0]) * dims[1] * dims[2] * dims[3];
  if (bytes != static_cast<double>(a.pixels.ByteLength()))
    throw_invalid(env, "expected pixels of " + std::to_string(static_cast<int64_t>(bytes)) +
                           " bytes for the pixel shape, got " + std::to_string(a.pixels.ByteLength()));

  Napi::Int32Array indices = int32_array(env, info[2], "indices");
  a.indices.assign(indices.Data(), indices.Data() + indices.ElementLength());

  if (!info[4].IsObject()) throw_invalid(env, "expected a batch spec object for spec");
  Napi::Object s = info[4].As<Napi::Object>();
  data::BatchSpec& spec = a.spec;
  spec.size = integer_at(env, s, "size", 0);
  triple_at(env, s, "mean", spec.mean);
  triple_at(env, s, "std", spec.std);
  spec.flip_prob = number_at(env, s, "flip", 0.0);
  spec.num_classes = integer_at(env, s, "numClasses", 0);
  spec.seed = counter_at(env, s, "seed");
  spec.epoch = counter_at(env, s, "epoch");
  spec.batch_index = counter_at(env, s, "batchIndex");
  Napi::Value crop = s.Get("crop");
  if (crop.IsObject()) {
    Napi::Object c = crop.As<Napi::Object>();
    spec.crop.enabled = true;
    spec.crop.scale_min = number_at(env, c, "scaleMin", spec.crop.scale_min);
    spec.crop.scale_max = number_at(env, c, "scaleMax", spec.crop.scale_max);
    spec.crop.ratio_min = number_at(env, c, "ratioMin", spec.crop.ratio_min);
    spec.crop.ratio_max = number_at(env, c, "ratioMax", spec.crop.ratio_max);
    if (!(spec.crop.ratio_min > 0) || !(spec.crop.ratio_max > 0) || !(spec.crop.scale_max > 0))
      throw_invalid(env, "expected positive scale and ratio bounds for spec.crop");
  } else if (!crop.IsUndefined() && !crop.IsNull()) {
    throw_invalid(env, "expected an object or null for spec.crop");
  }
  Napi::Value mixup = s.Get("mixup");
  if (mixup.IsObject()) {
    Napi::Object m = mixup.As<Napi::Object>();
    data::MixupSpec& x = spec.mixup;
    x.enabled = true;
    x.mixup_alpha = number_at(env, m, "mixupAlpha", x.mixup_alpha);
    x.cutmix_alpha = number_at(env, m, "cutmixAlpha", x.cutmix_alpha);
    x.cutmix_min = number_at(env, m, "cutmixMin", -1.0);
    x.cutmix_max = number_at(env, m, "cutmixMax", -1.0);
    x.prob = number_at(env, m, "prob", x.prob);
    x.switch_prob = number_at(env, m, "switchProb", x.switch_prob);
    x.smoothing = number_at(env, m, "smoothing", x.smoothing);
    x.correct_lam = m.Get("correctLam").IsUndefined() ? true : m.Get("correctLam").ToBoolean().Value();
  } else if (!mixup.IsUndefined() && !mixup.IsNull()) {
    throw_invalid(env, "expected an object or null for spec.mixup");
  }
  a.soft = spec.mixup.enabled;
  if (a.soft) {
    Napi::Int32Array labels = int32_array(env, info[3], "labels");
    if (labels.ElementLength() != indices.ElementLength())
      throw_invalid(env, "expected one label per index for labels, got " + std::to_string(labels.ElementLength()) +
                             " labels for " + std::to_string(indices.ElementLength()) + " indices");
    a.labels.assign(labels.Data(), labels.Data() + labels.ElementLength());
  }
  if (spec.size <= 0) throw_invalid(env, "expected a positive integer for spec.size");
  if (a.indices.empty()) throw_invalid(env, "expected at least one index for indices");
  return a;
}

struct BatchOutput {
  std::shared_ptr<Storage> images;
  std::vector<float> soft;
  data::MixInfo mix;
};

BatchOutput allocate_output(Napi::Env env, const BatchArgs& a) {
  BatchOutput out;
  const int64_t B = static_cast<int64_t>(a.indices.size()), S = a.spec.size;
  throw_if_error(env, NativeTensor::Allocate(cpu_backend(), B * 3 * S * S, &out.images));
  if (a.soft) out.soft.resize(static_cast<size_t>(B * a.spec.num_classes));
  return out;
}

Status run_batch(const BatchArgs& a, BatchOutput* out) {
  return data::assemble_batch(a.cache, a.indices.data(), static_cast<int64_t>(a.indices.size()),
                              a.soft ? a.labels.data() : nullptr, a.spec, out->images->data,
                              a.soft ? out->soft.data() : nullptr, &out->mix);
}

Napi::Object batch_result(Napi::Env env, const BatchArgs& a, BatchOutput& out) {
  const int64_t B = static_cast<int64_t>(a.indices.size()), S = a.spec.size;
  Napi::Object r = Napi::Object::New(env);
  r.Set("images", NativeTensor::Wrap(env, out.images, {B, 3, S, S}));
  if (a.soft) {
    Napi::Float32Array soft = Napi::Float32Array::New(env, out.soft.size());
    std::copy(out.soft.begin(), out.soft.end(), soft.Data());
    r.Set("softTargets", soft);
  } else {
    r.Set("softTargets", env.Null());
  }
  r.Set("lam", Napi::Number::New(env, out.mix.lam));
  r.Set("cutmix", Napi::Boolean::New(env, out.mix.cutmix));
  Napi::Array box = Napi::Array::New(env, 4);
  box.Set(0u, Napi::Number::New(env, static_cast<double>(out.mix.y0)));
  box.Set(1u, Napi::Number::New(env, static_cast<double>(out.mix.y1)));
  box.Set(2u, Napi::Number::New(env, static_cast<double>(out.mix.x0)));
  box.Set(3u, Napi::Number::New(env, static_cast<double>(out.mix.x1)));
  r.Set("box", box);
  return r;
}

Napi::Value DataBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BatchArgs a = parse_batch(info);
  BatchOutput out = allocate_output(env, a);
  throw_if_error(env, run_batch(a, &out));
  return batch_result(env, a, out);
}

class BatchWorker : public Napi::AsyncWorker {
 public:
  BatchWorker(Napi::Env env, BatchArgs args, BatchOutput out)
      : Napi::AsyncWorker(env, "repadapter.dataBatch"),
        deferred_(Napi::Promise::Deferred::New(env)),
        args_(std::move(args)),
        out_(std::move(out)) {
    pixels_ref_ = Napi::Reference<Napi::Uint8Array>::New(args_.pixels, 1);
  }
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    status_ = run_batch(args_, &out_);
    if (!status_.ok()) SetError(status_.message());
  }
  void OnOK() override { deferred_.Resolve(batch_result(Env(), args_, out_)); }
  void OnError(const Napi::Error&) override { deferred_.Reject(status_to_error(Env(), status_).Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  BatchArgs args_;
  BatchOutput out_;
  Napi::Reference<Napi::Uint8Array> pixels_ref_;  // keeps the cache alive while Execute reads it
  Status status_;
};

Napi::Value DataBatchAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BatchArgs a = parse_batch(info);
  BatchOutput out = allocate_output(env, a);
  auto* worker = new BatchWorker(env, std::move(a), std::move(out));
  Napi::Promise promise = worker->promise();
  worker->Queue();  // the worker deletes itself after OnOK / OnError
  return promise;
}

// dataResizeAsync(src, [n, h, w, c], dst, [oh, ow], filter) → Promise<void>: resizes all n
// images of src into dst [n, oh, ow, c] ('bicubic' | 'bilinear', PIL-style antialiased).
class ResizeWorker : public Napi::AsyncWorker {
 public:
  ResizeWorker(Napi::Env env, Napi::Uint8Array src, data::ImageCache cache, Napi::Uint8Array dst, int64_t oh,
               int64_t ow, data::Filter filter)
      : Napi::AsyncWorker(env, "repadapter.dataResize"),
        deferred_(Napi::Promise::Deferred::New(env)),
        cache_(cache),
        dst_(dst.Data()),
        oh_(oh),
        ow_(ow),
        filter_(filter) {
    src_ref_ = Napi::Reference<Napi::Uint8Array>::New(src, 1);
    dst_ref_ = Napi::Reference<Napi::Uint8Array>::New(dst, 1);
  }
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    status_ = data::resize_images(cache_, 0, cache_.n, oh_, ow_, filter_, dst_);
    if (!status_.ok()) SetError(status_.message());
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error&) override { deferred_.Reject(status_to_error(Env(), status_).Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  data::ImageCache cache_;
  uint8_t* dst_;
  int64_t oh_, ow_;
  data::Filter filter_;
  Napi::Reference<Napi::Uint8Array> src_ref_, dst_ref_;
  Status status_;
};

Napi::Value DataResizeAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto u8 = [&](Napi::Value v, const char* what) {
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw_invalid(env, std::string("expected a Uint8Array for ") + what);
    return v.As<Napi::Uint8Array>();
  };
  auto dims = [&](Napi::Value v, uint32_t n, const char* what, int64_t* out) {
    if (!v.IsArray() || v.As<Napi::Array>().Length() != n)
      throw_invalid(env, std::string("expected an array of ") + std::to_string(n) + " sizes for " + what);
    for (uint32_t i = 0; i < n; ++i) {
      Napi::Value d = v.As<Napi::Array>().Get(i);
      double x = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
      if (!(x >= 0) || x != std::floor(x)) throw_invalid(env, std::string("expected non-negative integers for ") + what);
      out[i] = static_cast<int64_t>(x);
    }
  };
  Napi::Uint8Array src = u8(info[0], "src");
  int64_t shape[4], out[2];
  dims(info[1], 4, "the source shape", shape);
  Napi::Uint8Array dst = u8(info[2], "dst");
  dims(info[3], 2, "the output size", out);
  const std::string filter = info[4].IsString() ? info[4].As<Napi::String>().Utf8Value() : "bicubic";
  if (filter != "bicubic" && filter != "bilinear")
    throw_invalid(env, "expected 'bicubic' or 'bilinear' for filter, got '" + filter + "'");
  if (shape[3] < 1) throw_invalid(env, "expected at least one channel in the source shape");
  if (static_cast<double>(shape[0]) * shape[1] * shape[2] * shape[3] != static_cast<double>(src.ByteLength()))
    throw_invalid(env, "expected src to hold n·h·w·c bytes for its shape");
  if (static_cast<double>(shape[0]) * out[0] * out[1] * shape[3] != static_cast<double>(dst.ByteLength()))
    throw_invalid(env, "expected dst to hold n·oh·ow·c bytes for the output size");
  if (shape[0] > 0 && (shape[1] == 0 || shape[2] == 0 || out[0] == 0 || out[1] == 0))
    throw_invalid(env, "expected non-empty images for resize");
  data::ImageCache cache{src.Data(), shape[0], shape[1], shape[2], shape[3]};
  auto* worker = new ResizeWorker(env, src, cache, dst, out[0], out[1],
                                  filter == "bicubic" ? data::Filter::kBicubic : data::Filter::kBilinear);
  Napi::Promise promise = worker->promise();
  worker->Queue();
  return promise;
}

Napi::Value DataPermutation(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("n", info[0]);
  o.Set("seed", info[1]);
  o.Set("epoch", info[2]);
  const int64_t n = integer_at(env, o, "n", -1);
  if (n < 0) throw_invalid(env, "expected a non-negative integer for n");
  const uint64_t seed = counter_at(env, o, "seed"), epoch = counter_at(env, o, "epoch");
  if (n > INT32_MAX) throw_invalid(env, "expected a dataset size below 2^31 for n");
  Napi::Int32Array out = Napi::Int32Array::New(env, static_cast<size_t>(n));
  throw_if_error(env, data::permutation(n, seed, epoch, out.Data()));
  return out;
}

}  // namespace

void register_data(Napi::Env env, Napi::Object exports) {
  exports.Set("dataPermutation", Napi::Function::New(env, DataPermutation, "dataPermutation"));
  exports.Set("dataBatch", Napi::Function::New(env, DataBatch, "dataBatch"));
  exports.Set("dataBatchAsync", Napi::Function::New(env, DataBatchAsync, "dataBatchAsync"));
  exports.Set("dataResizeAsync", Napi::Function::New(env, DataResizeAsync, "dataResizeAsync"));
}

}  // namespace repadapter
