// The N-API surface: the only code that includes napi.h. Everything here converts and checks
// arguments, calls the native core, and turns a Status into a JS error; no math lives here.
#include <napi.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../core/backend_registry.h"
#include "../core/profiling_backend.h"
#include "../cpu/cpu_backend.h"
#include "../model/op_checks.h"
#include "../model/vit.h"
#include "addon_data.h"
#include "compute_queue.h"
#include "data.h"
#include "errors.h"
#include "tensor.h"

namespace repadapter {
namespace {

// ---- argument helpers -------------------------------------------------------------------------

[[noreturn]] void throw_type(Napi::Env env, const std::string& message) { throw_invalid(env, message); }

int64_t get_int(Napi::Object o, const char* key, int64_t fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsNumber()) throw_type(o.Env(), std::string("expected an integer for ") + key);
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != static_cast<double>(static_cast<int64_t>(d)))
    throw_type(o.Env(), std::string("expected an integer for ") + key + ", got " + std::to_string(d));
  return static_cast<int64_t>(d);
}

double get_number(Napi::Object o, const char* key, double fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsNumber()) throw_type(o.Env(), std::string("expected a number for ") + key);
  return v.As<Napi::Number>().DoubleValue();
}

std::string get_string(Napi::Object o, const char* key, const std::string& fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsString()) throw_type(o.Env(), std::string("expected a string for ") + key);
  return v.As<Napi::String>().Utf8Value();
}

Napi::Float32Array float_array(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw_type(env, std::string("expected a Float32Array for ") + what);
  return v.As<Napi::Float32Array>();
}

ViTConfig parse_config(Napi::Env env, Napi::Object o) {
  ViTConfig c;
  c.image_size = get_int(o, "imageSize", c.image_size);
  c.patch_size = get_int(o, "patchSize", c.patch_size);
  c.width = get_int(o, "width", c.width);
  c.depth = get_int(o, "depth", c.depth);
  c.heads = get_int(o, "heads", c.heads);
  c.mlp_hidden = get_int(o, "mlpHidden", c.mlp_hidden);
  c.num_classes = get_int(o, "numClasses", c.num_classes);
  c.drop_path = static_cast<float>(get_number(o, "dropPath", c.drop_path));
  c.ln_eps = static_cast<float>(get_number(o, "layerNormEps", c.ln_eps));
  std::string trainable = get_string(o, "trainable", "adapters");
  if (trainable == "adapters") c.trainable = Trainable::kAdapters;
  else if (trainable == "head") c.trainable = Trainable::kHead;
  else if (trainable == "all") c.trainable = Trainable::kAll;
  else throw_type(env, "expected 'adapters' | 'head' | 'all' for trainable, got '" + trainable + "'");
  Napi::Value a = o.Get("adapter");
  if (a.IsObject()) {
    Napi::Object ao = a.As<Napi::Object>();
    std::string placement = get_string(ao, "placement", "attn");
    if (placement == "attn") c.adapter.placement = Placement::kAttn;
    else if (placement == "block") c.adapter.placement = Placement::kBlock;
    else if (placement == "none") c.adapter.placement = Placement::kNone;
    else throw_type(env, "expected 'attn' | 'block' | 'none' for adapter.placement, got '" + placement + "'");
    c.adapter.hidden = get_int(ao, "hidden", c.adapter.hidden);
    c.adapter.groups = get_int(ao, "groups", c.adapter.groups);
    c.adapter.scale = static_cast<float>(get_number(ao, "scale", c.adapter.scale));
    c.adapter.dropout = static_cast<float>(get_number(ao, "dropout", c.adapter.dropout));
  } else if (!a.IsUndefined() && !a.IsNull()) {
    throw_type(env, "expected an object or null for adapter");
  }
  return c;
}

// The shortest decimal that reads back as the same float: 0.1f reports as 0.1, not
// 0.10000000149011612 (the float's exact value as a double).
double shortest(float v) {
  char text[32];
  for (int digits = 6; digits <= 9; ++digits) {
    std::snprintf(text, sizeof(text), "%.*g", digits, static_cast<double>(v));
    if (std::strtof(text, nullptr) == v) break;
  }
  return std::strtod(text, nullptr);
}

Napi::Object config_to_object(Napi::Env env, const ViTConfig& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("imageSize", c.image_size);
  o.Set("patchSize", c.patch_size);
  o.Set("width", c.width);
  o.Set("depth", c.depth);
  o.Set("heads", c.heads);
  o.Set("mlpHidden", c.mlp_hidden);
  o.Set("numClasses", c.num_classes);
  o.Set("dropPath", shortest(c.drop_path));
  o.Set("layerNormEps", shortest(c.ln_eps));
  o.Set("trainable", trainable_name(c.trainable));
  if (c.adapter.placement == Placement::kNone) {
    o.Set("adapter", env.Null());
  } else {
    Napi::Object a = Napi::Object::New(env);
    a.Set("placement", placement_name(c.adapter.placement));
    a.Set("hidden", c.adapter.hidden);
    a.Set("groups", c.adapter.groups);
    a.Set("scale", shortest(c.adapter.scale));
    a.Set("dropout", shortest(c.adapter.dropout));
    o.Set("adapter", a);
  }
  return o;
}

// Every call that computes runs on the compute thread (see compute_queue.h for why).
Status computed(Napi::Env env, const std::function<Status()>& work) {
  return env.GetInstanceData<AddonData>()->queue->run_sync(work);
}

// ---- the model ------------------------------------------------------------------------------

class Model : public Napi::ObjectWrap<Model> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeViT", {
      InstanceMethod<&Model::Params>("params"),
      InstanceMethod<&Model::GetParam>("getParam"),
      InstanceMethod<&Model::SetParam>("setParam"),
      InstanceMethod<&Model::GetGrad>("getGrad"),
      InstanceMethod<&Model::Forward>("forward"),
      InstanceMethod<&Model::ForwardAsync>("forwardAsync"),
      InstanceMethod<&Model::Backward>("backward"),
      InstanceMethod<&Model::BackwardAsync>("backwardAsync"),
      InstanceMethod<&Model::TrainStepAsync>("trainStepAsync"),
      InstanceMethod<&Model::InputGrad>("inputGrad"),
      InstanceMethod<&Model::ZeroGrad>("zeroGrad"),
      InstanceMethod<&Model::Fold>("fold"),
      InstanceMethod<&Model::SetTrainable>("setTrainable"),
      InstanceMethod<&Model::Config>("config"),
      InstanceMethod<&Model::TrainableCount>("trainableCount"),
      InstanceMethod<&Model::Rng>("rng"),
      InstanceMethod<&Model::SetRng>("setRng"),
      InstanceMethod<&Model::AdamWStep>("adamwStep"),
      InstanceMethod<&Model::SgdStep>("sgdStep"),
      InstanceMethod<&Model::GradSumSquares>("gradSumSquares"),
      InstanceMethod<&Model::GetOptimizerState>("getOptimizerState"),
      InstanceMethod<&Model::SetOptimizerState>("setOptimizerState"),
      InstanceMethod<&Model::Profile>("profile"),
      InstanceMethod<&Model::DeviceName>("device"),
      InstanceMethod<&Model::GetDType>("dtype"),
      InstanceMethod<&Model::SetDType>("setDType"),
      InstanceMethod<&Model::Bf16Native>("bf16Native"),
      InstanceMethod<&Model::Dispose>("dispose"),
    });
  }

  // new NativeViT(config, seed)
  explicit Model(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Model>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) throw_type(env, "expected a config object for config");
    ViTConfig config = parse_config(env, info[0].As<Napi::Object>());
    uint64_t seed = info.Length() > 1 && info[1].IsNumber()
                        ? static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value())
                        : 0;
    // new NativeViT(config, seed, { device: 'cpu' | 'cuda' | 'auto', profile, cudaGraphs, recomputeMlp })
    Napi::Object options = info.Length() > 2 && info[2].IsObject() ? info[2].As<Napi::Object>() : Napi::Object::New(env);
    const std::string device = get_string(options, "device", "cpu");
    Backend* backend = &cpu_backend();
    if (device == "cuda") {
      throw_if_error(env, get_backend(Device::kCUDA, "", &backend));
    } else if (device == "auto") {
      Backend* cuda = nullptr;
      if (get_backend(Device::kCUDA, "", &cuda).ok()) backend = cuda;
    } else if (device != "cpu") {
      throw_type(env, "expected 'cpu' | 'cuda' | 'auto' for device, got '" + device + "'");
    }
    // profile: time every backend op (see profile()).
    if (options.Get("profile").ToBoolean()) {
      profiler_ = std::make_unique<ProfilingBackend>(*backend);
      backend = profiler_.get();
    }
    throw_if_error(env, computed(env, [&] { return ViT::Create(*backend, config, seed, &model_); }));
    // cudaGraphs: eval forwards and training steps replay recorded CUDA graphs (ViT::set_graphs).
    model_->set_graphs(options.Get("cudaGraphs").ToBoolean());
    // recomputeMlp: backward recomputes GELU's input instead of keeping it (ViT::set_recompute_mlp).
    model_->set_recompute_mlp(options.Get("recomputeMlp").ToBoolean());
  }

 private:
  ViT& live(Napi::Env env) {
    if (!model_) {
      Napi::Error e = Napi::Error::New(env, "this model has been disposed");
      e.Set("code", Napi::String::New(env, "RA_DISPOSED"));
      throw e;
    }
    if (busy_) {
      Napi::Error e = Napi::Error::New(env, "this model is busy with an async call; await it first");
      e.Set("code", Napi::String::New(env, "RA_BUSY"));
      throw e;
    }
    return *model_;
  }

  Param& param(Napi::Env env, Napi::Value name) {
    if (!name.IsString()) throw_type(env, "expected a parameter name (string)");
    std::string n = name.As<Napi::String>().Utf8Value();
    Param* p = live(env).find(n);
    if (!p) {
      Napi::Error e = Napi::Error::New(env, "no parameter named '" + n + "' in this model");
      e.Set("code", Napi::String::New(env, "RA_INVALID_ARGUMENT"));
      throw e;
    }
    return *p;
  }

  Napi::Value Params(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const auto& params = live(env).params();
    Napi::Array out = Napi::Array::New(env, params.size());
    static const char* roles[] = {"backbone", "norm", "adapter", "head"};
    for (size_t i = 0; i < params.size(); ++i) {
      const Param& p = params[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("name", p.name);
      Napi::Array shape = Napi::Array::New(env, p.shape.size());
      for (size_t j = 0; j < p.shape.size(); ++j) shape.Set(j, Napi::Number::New(env, p.shape[j]));
      o.Set("shape", shape);
      o.Set("role", roles[static_cast<int>(p.role)]);
      o.Set("trainable", p.trainable);
      o.Set("offset", p.offset);
      out.Set(i, o);
    }
    return out;
  }

  Napi::Value GetParam(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Param& p = param(env, info[0]);
    Napi::Float32Array out = Napi::Float32Array::New(env, p.numel);
    throw_if_error(env, model_->backend().download(out.Data(), p.data, p.numel * sizeof(float)));
    return out;
  }

  void SetParam(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Param& p = param(env, info[0]);
    Napi::Float32Array data = float_array(env, info[1], p.name.c_str());
    if (static_cast<int64_t>(data.ElementLength()) != p.numel)
      throw_type(env, "expected " + std::to_string(p.numel) + " values for " + p.name + ", got " +
                          std::to_string(data.ElementLength()));
    throw_if_error(env, model_->write_param(p, data.Data()));
  }

  Napi::Value GetGrad(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Param& p = param(env, info[0]);
    if (!p.grad) {
      Napi::Error e = Napi::Error::New(env, "parameter '" + p.name + "' is frozen: it has no gradient");
      e.Set("code", Napi::String::New(env, "RA_INVALID_ARGUMENT"));
      throw e;
    }
    Napi::Float32Array out = Napi::Float32Array::New(env, p.numel);
    throw_if_error(env, model_->backend().download(out.Data(), p.grad, p.numel * sizeof(float)));
    return out;
  }

  struct ForwardArgs {
    std::shared_ptr<Storage> images;
    std::shared_ptr<Storage> logits;  // host memory for the result [B, C]
    int64_t B, C;
    bool train, input_grad;
  };

  // (images: Tensor [B,3,S,S], train, inputGrad)
  ForwardArgs forward_args(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ViT& m = live(env);
    const int64_t S = m.config().image_size;
    NativeTensor& t = NativeTensor::From(env, info[0], "images");
    const auto& shape = t.shape();
    if (shape.size() != 4 || shape[0] <= 0 || shape[1] != 3 || shape[2] != S || shape[3] != S) {
      std::string got = "[";
      for (size_t i = 0; i < shape.size(); ++i) got += (i ? "," : "") + std::to_string(shape[i]);
      throw_type(env, "expected images of shape [B,3," + std::to_string(S) + "," + std::to_string(S) +
                          "] for images, got " + got + "]");
    }
    ForwardArgs a{t.storage(), nullptr, shape[0], m.config().num_classes, info[1].ToBoolean(), info[2].ToBoolean()};
    throw_if_error(env, NativeTensor::Allocate(cpu_backend(), a.B * a.C, &a.logits));
    return a;
  }

  // forward(images, train, inputGrad) → Tensor logits [B, C]
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ForwardArgs a = forward_args(info);
    throw_if_error(env, computed(env, [&] { return model_->forward(a.images->data, a.B, a.train, a.input_grad, a.logits->data); }));
    last_batch_ = a.B;
    return NativeTensor::Wrap(env, a.logits, {a.B, a.C});
  }

  Napi::Value ForwardAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ForwardArgs a = forward_args(info);
    auto job = std::make_unique<Job>(env);
    ViT* m = model_.get();
    job->work = [m, a] { return m->forward(a.images->data, a.B, a.train, a.input_grad, a.logits->data); };
    job->keep_alive.push_back(Napi::Persistent(Value()));
    job->finish = [this, a](Napi::Env env) -> Napi::Value {
      last_batch_ = a.B;
      return NativeTensor::Wrap(env, a.logits, {a.B, a.C});
    };
    return submit(env, std::move(job));
  }

  // The targets are copied at the call, so an async backward reads what the caller passed
  // even if the caller changes or transfers the array meanwhile.
  struct BackwardArgs {
    Target target;
    std::shared_ptr<std::vector<int32_t>> labels;
    std::shared_ptr<std::vector<float>> soft;
  };

  // backward(labels: Int32Array | null, soft: Float32Array | null, smoothing)
  BackwardArgs backward_args(const Napi::CallbackInfo& info) {
    live(info.Env());
    return target_args(info.Env(), info[0], info[1], info[2], last_batch_);
  }

  // The target of a batch of B images (B ≤ 0: no forward yet, nothing fits).
  BackwardArgs target_args(Napi::Env env, Napi::Value labels_value, Napi::Value soft_value,
                           Napi::Value smoothing, int64_t B) {
    BackwardArgs a;
    const int64_t C = model_->config().num_classes;
    auto fits = [B](int64_t n, int64_t per_row) { return B > 0 && n == B * per_row; };
    if (labels_value.IsTypedArray() && labels_value.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array) {
      Napi::Int32Array labels = labels_value.As<Napi::Int32Array>();
      a.labels = std::make_shared<std::vector<int32_t>>(labels.Data(), labels.Data() + labels.ElementLength());
      a.target.labels = a.labels->data();
      if (!fits(static_cast<int64_t>(labels.ElementLength()), 1))
        throw_type(env, "expected " + std::to_string(B) + " labels (one per image), got " +
                            std::to_string(labels.ElementLength()));
    } else if (soft_value.IsTypedArray()) {
      Napi::Float32Array soft = float_array(env, soft_value, "soft targets");
      a.soft = std::make_shared<std::vector<float>>(soft.Data(), soft.Data() + soft.ElementLength());
      a.target.soft_targets = a.soft->data();
      if (!fits(static_cast<int64_t>(soft.ElementLength()), C))
        throw_type(env, "expected soft targets of shape [" + std::to_string(B) + "," +
                            std::to_string(C) + "], got " + std::to_string(soft.ElementLength()) + " values");
      for (size_t i = 0; i < soft.ElementLength(); ++i)
        if (!(soft[i] >= 0.0f) || !std::isfinite(soft[i]))
          throw_type(env, "expected soft targets to be finite and non-negative, got " +
                              std::to_string(soft[i]) + " at index " + std::to_string(i));
    } else {
      throw_type(env, "expected labels (Int32Array) or soft targets (Float32Array)");
    }
    a.target.smoothing = smoothing.IsNumber() ? smoothing.As<Napi::Number>().FloatValue() : 0.0f;
    return a;
  }

  Napi::Value Backward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    BackwardArgs a = backward_args(info);
    float loss = 0;
    throw_if_error(env, computed(env, [&] { return model_->backward(a.target, &loss); }));
    return Napi::Number::New(env, loss);
  }

  Napi::Value BackwardAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    BackwardArgs a = backward_args(info);
    auto job = std::make_unique<Job>(env);
    auto loss = std::make_shared<float>(0.0f);
    ViT* m = model_.get();
    job->work = [m, a, loss] { return m->backward(a.target, loss.get()); };
    job->keep_alive.push_back(Napi::Persistent(Value()));
    job->finish = [loss](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *loss); };
    return submit(env, std::move(job));
  }

  // trainStepAsync(images, labels | null, soft | null, smoothing,
  //                {kind: 'adamw' | 'sgd', ranges, hyper, clipMaxNorm}) → {loss, logits, gradNorm}
  // One ViT::train_step on the compute thread: forward, backward, update, zeroed gradients.
  Napi::Value TrainStepAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ViT& m = live(env);
    // The images and the logits' host buffer as forward makes them (its flags go unread).
    ForwardArgs images = forward_args(info);
    BackwardArgs target = target_args(env, info[1], info[2], info[3], images.B);
    if (!info[4].IsObject()) throw_type(env, "expected an object {kind, ranges, hyper, clipMaxNorm} for update");
    Napi::Object u = info[4].As<Napi::Object>();
    const std::string kind = u.Get("kind").IsString() ? u.Get("kind").As<Napi::String>().Utf8Value() : "";
    if (kind != "adamw" && kind != "sgd") throw_type(env, "expected 'adamw' or 'sgd' for update.kind, got '" + kind + "'");
    if (!u.Get("hyper").IsObject()) throw_type(env, "expected an object of hyperparameters for update.hyper");
    OptimizerStep update;
    update.kind = kind == "adamw" ? OptimizerStep::Kind::kAdamW : OptimizerStep::Kind::kSgd;
    update.ranges = ranges(env, u.Get("ranges"));
    if (kind == "adamw") update.adamw = adamw_hyper(env, u.Get("hyper").As<Napi::Object>());
    else update.sgd = sgd_hyper(u.Get("hyper").As<Napi::Object>());
    update.clip_max_norm = get_number(u, "clipMaxNorm", 0.0);
    if (!(update.clip_max_norm >= 0) || !std::isfinite(update.clip_max_norm))
      throw_type(env, "expected a finite number ≥ 0 for update.clipMaxNorm");
    struct Result { float loss = 0; double grad_norm = 0; };
    auto result = std::make_shared<Result>();
    auto job = std::make_unique<Job>(env);
    ViT* model = &m;
    job->work = [model, images, target, update, result] {
      return model->train_step(images.images->data, images.B, target.target, update, &result->loss,
                               images.logits->data, &result->grad_norm);
    };
    job->keep_alive.push_back(Napi::Persistent(Value()));
    const bool clip = update.clip_max_norm > 0;
    job->finish = [this, images, result, clip](Napi::Env env) -> Napi::Value {
      last_batch_ = images.B;
      Napi::Object out = Napi::Object::New(env);
      out.Set("loss", Napi::Number::New(env, result->loss));
      out.Set("logits", NativeTensor::Wrap(env, images.logits, {images.B, images.C}));
      if (clip) out.Set("gradNorm", Napi::Number::New(env, result->grad_norm));
      return out;
    };
    return submit(env, std::move(job));
  }

  Napi::Value submit(Napi::Env env, std::unique_ptr<Job> job) {
    AddonData* data = env.GetInstanceData<AddonData>();
    busy_ = true;
    job->settle = [this] { busy_ = false; };
    return data->queue->submit(std::move(job));
  }

  Napi::Value InputGrad(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ViT& m = live(env);
    const int64_t S = m.config().image_size;
    std::shared_ptr<Storage> out;
    throw_if_error(env, NativeTensor::Allocate(cpu_backend(), last_batch_ * 3 * S * S, &out));
    throw_if_error(env, m.input_grad(out->data));
    return NativeTensor::Wrap(env, out, {last_batch_, 3, S, S});
  }

  void ZeroGrad(const Napi::CallbackInfo& info) {
    ViT& m = live(info.Env());
    throw_if_error(info.Env(), computed(info.Env(), [&] { return m.zero_grad(); }));
  }
  void Fold(const Napi::CallbackInfo& info) {
    ViT& m = live(info.Env());
    throw_if_error(info.Env(), computed(info.Env(), [&] { return m.fold(); }));
  }

  void SetTrainable(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ViT& m = live(env);
    std::string mode = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    Trainable t;
    if (mode == "adapters") t = Trainable::kAdapters;
    else if (mode == "head") t = Trainable::kHead;
    else if (mode == "all") t = Trainable::kAll;
    else throw_type(env, "expected 'adapters' | 'head' | 'all' for trainable, got '" + mode + "'");
    throw_if_error(env, computed(env, [&] { return m.set_trainable(t); }));
  }

  Napi::Value Config(const Napi::CallbackInfo& info) {
    return config_to_object(info.Env(), live(info.Env()).config());
  }
  Napi::Value TrainableCount(const Napi::CallbackInfo& info) {
    ViT& m = live(info.Env());
    int64_t n = 0;
    for (const Param& p : m.params()) n += p.trainable ? p.numel : 0;
    return Napi::Number::New(info.Env(), static_cast<double>(n));
  }
  // rng() → [seed, step] as strings (64-bit values do not fit a JS number).
  Napi::Value Rng(const Napi::CallbackInfo& info) {
    ViT& m = live(info.Env());
    Napi::Array out = Napi::Array::New(info.Env(), 2);
    out.Set(0u, Napi::BigInt::New(info.Env(), static_cast<uint64_t>(m.seed())));
    out.Set(1u, Napi::BigInt::New(info.Env(), static_cast<uint64_t>(m.step())));
    return out;
  }
  void SetRng(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ViT& m = live(env);
    if (!info[0].IsBigInt() || !info[1].IsBigInt()) throw_type(env, "expected two BigInts for seed and step");
    bool lossless = true;
    m.set_seed(info[0].As<Napi::BigInt>().Uint64Value(&lossless));
    m.set_step(info[1].As<Napi::BigInt>().Uint64Value(&lossless));
  }

  // ---- optimizer ----------------------------------------------------------------------------

  // ranges: Float64Array of (offset, n, lr, weightDecay) quadruples.
  std::vector<ViT::UpdateRange> ranges(Napi::Env env, Napi::Value v) {
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
        v.As<Napi::TypedArray>().ElementLength() % 4 != 0)
      throw_type(env, "expected a Float64Array of (offset, n, lr, weightDecay) quadruples for ranges");
    Napi::Float64Array a = v.As<Napi::Float64Array>();
    std::vector<ViT::UpdateRange> out;
    for (size_t i = 0; i < a.ElementLength(); i += 4)
      out.push_back({static_cast<int64_t>(a[i]), static_cast<int64_t>(a[i + 1]), static_cast<float>(a[i + 2]),
                     static_cast<float>(a[i + 3])});
    return out;
  }

  // {beta1, beta2, eps, step, gradScale}
  repadapter::AdamWStep adamw_hyper(Napi::Env env, Napi::Object h) {
    repadapter::AdamWStep s;
    s.beta1 = get_number(h, "beta1", s.beta1);
    s.beta2 = get_number(h, "beta2", s.beta2);
    s.eps = static_cast<float>(get_number(h, "eps", s.eps));
    s.step = get_int(h, "step", 1);
    s.grad_scale = static_cast<float>(get_number(h, "gradScale", 1.0));
    if (s.step < 1) throw_type(env, "expected a step count ≥ 1 for step");
    return s;
  }
  // {momentum, dampening, nesterov, first, gradScale}
  repadapter::SgdStep sgd_hyper(Napi::Object h) {
    repadapter::SgdStep s;
    s.momentum = static_cast<float>(get_number(h, "momentum", 0.0));
    s.dampening = static_cast<float>(get_number(h, "dampening", 0.0));
    s.nesterov = h.Get("nesterov").ToBoolean();
    s.first = h.Get("first").ToBoolean();
    s.grad_scale = static_cast<float>(get_number(h, "gradScale", 1.0));
    return s;
  }

  // adamwStep(ranges, {beta1, beta2, eps, step, gradScale})
  void AdamWStep(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ViT& m = live(env);
    if (!info[1].IsObject()) throw_type(env, "expected an object of AdamW hyperparameters");
    const repadapter::AdamWStep s = adamw_hyper(env, info[1].As<Napi::Object>());
    const auto r = ranges(env, info[0]);
    throw_if_error(env, computed(env, [&] { return m.adamw_step(r, s); }));
  }

  // sgdStep(ranges, {momentum, dampening, nesterov, first, gradScale})
  void SgdStep(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ViT& m = live(env);
    if (!info[1].IsObject()) throw_type(env, "expected an object of SGD hyperparameters");
    const repadapter::SgdStep s = sgd_hyper(info[1].As<Napi::Object>());
    const auto r = ranges(env, info[0]);
    throw_if_error(env, computed(env, [&] { return m.sgd_step(r, s); }));
  }

  Napi::Value GradSumSquares(const Napi::CallbackInfo& info) {
    double total = 0;
    ViT& m = live(info.Env());
    throw_if_error(info.Env(), computed(info.Env(), [&] { return m.grad_sum_squares(&total); }));
    return Napi::Number::New(info.Env(), total);
  }

  // getOptimizerState(slot) → Float32Array, or null before the first step.
  Napi::Value GetOptimizerState(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ViT& m = live(env);
    float* state = m.optimizer_state(info[0].ToNumber().Int32Value());
    if (!state) return env.Null();
    Napi::Float32Array out = Napi::Float32Array::New(env, m.trainable_count());
    throw_if_error(env, m.backend().download(out.Data(), state, m.trainable_count() * sizeof(float)));
    return out;
  }

  void SetOptimizerState(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ViT& m = live(env);
    const int slot = info[0].ToNumber().Int32Value();
    if (slot < 0 || slot > 1) throw_type(env, "expected 0 or 1 for the optimizer state slot");
    Napi::Float32Array data = float_array(env, info[1], "optimizer state");
    if (static_cast<int64_t>(data.ElementLength()) != m.trainable_count())
      throw_type(env, "expected " + std::to_string(m.trainable_count()) + " values for the optimizer state, got " +
                          std::to_string(data.ElementLength()));
    throw_if_error(env, m.ensure_optimizer_state(slot + 1));
    throw_if_error(env, m.backend().upload(m.optimizer_state(slot), data.Data(), data.ElementLength() * sizeof(float)));
  }

  Napi::Value DeviceName(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), live(info.Env()).backend().device() == Device::kCUDA ? "cuda" : "cpu");
  }

  // profile(reset?) → [{op, seconds, calls, flops}] since the last reset; [] without profiling.
  // 'float32' | 'bf16': the compute precision of the backbone's Linears (ViT::set_compute_dtype).
  Napi::Value GetDType(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), live(info.Env()).compute_dtype() == DType::kBF16 ? "bf16" : "float32");
  }
  void SetDType(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ViT& m = live(env);
    const std::string d = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    if (d != "float32" && d != "bf16") throw_type(env, "expected 'float32' | 'bf16' for dtype, got '" + d + "'");
    throw_if_error(env, m.set_compute_dtype(d == "bf16" ? DType::kBF16 : DType::kF32));
  }
  // Whether bf16 products run on bf16 hardware here (false: emulated, same numbers, no speed-up).
  Napi::Value Bf16Native(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), live(info.Env()).backend().bf16_native());
  }

  Napi::Value Profile(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    live(env);
    Napi::Array out = Napi::Array::New(env);
    if (!profiler_) return out;
    uint32_t i = 0;
    for (const auto& [op, e] : profiler_->entries()) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("op", op);
      o.Set("seconds", e.seconds);
      o.Set("calls", static_cast<double>(e.calls));
      o.Set("flops", e.flops);
      out.Set(i++, o);
    }
    if (info[0].ToBoolean()) profiler_->reset();
    return out;
  }

  void Dispose(const Napi::CallbackInfo& info) {
    if (busy_) {
      Napi::Error e = Napi::Error::New(info.Env(), "cannot dispose a model while an async call runs on it");
      e.Set("code", Napi::String::New(info.Env(), "RA_BUSY"));
      throw e;
    }
    model_.reset();
  }

  std::unique_ptr<ProfilingBackend> profiler_;  // declared first: outlives the model using it
  std::unique_ptr<ViT> model_;
  bool busy_ = false;
  int64_t last_batch_ = 0;
};

// ---- single ops, for the finite-difference and cross-backend checks ---------------------------

HostTensors host_tensors(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsObject()) throw_type(env, std::string("expected an object of Float32Arrays for ") + what);
  HostTensors out;
  Napi::Object o = v.As<Napi::Object>();
  Napi::Array keys = o.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    std::string k = keys.Get(i).As<Napi::String>().Utf8Value();
    Napi::Float32Array a = float_array(env, o.Get(k), k.c_str());
    out[k].assign(a.Data(), a.Data() + a.ElementLength());
  }
  return out;
}

// runOp(name, attrs: {[k]: number}, inputs: {[k]: Float32Array}, dOutputs?) → {[k]: Float32Array}
Napi::Value RunOp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw_type(env, "expected an op name (string)");
  if (!info[1].IsObject()) throw_type(env, "expected an attrs object");
  OpAttrs attrs;
  Napi::Object ao = info[1].As<Napi::Object>();
  Napi::Array keys = ao.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    std::string k = keys.Get(i).As<Napi::String>().Utf8Value();
    if (!ao.Get(k).IsNumber()) throw_type(env, "expected a number for attrs." + k);
    attrs[k] = ao.Get(k).As<Napi::Number>().DoubleValue();
  }
  HostTensors inputs = host_tensors(env, info[2], "inputs");
  HostTensors d_outputs;
  const bool backward = info.Length() > 3 && info[3].IsObject();
  if (backward) d_outputs = host_tensors(env, info[3], "dOutputs");
  HostTensors outputs;
  const std::string name = info[0].As<Napi::String>().Utf8Value();
  throw_if_error(env, computed(env, [&] {
    return run_op(cpu_backend(), name, attrs, inputs, backward ? &d_outputs : nullptr, &outputs);
  }));
  Napi::Object result = Napi::Object::New(env);
  for (auto& [k, v] : outputs) {
    Napi::Float32Array a = Napi::Float32Array::New(env, v.size());
    std::copy(v.begin(), v.end(), a.Data());
    result.Set(k, a);
  }
  return result;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->queue = std::make_unique<ComputeQueue>(env);
  Napi::Function tensor_class = NativeTensor::Define(env);
  data->tensor_class = Napi::Persistent(tensor_class);
  env.SetInstanceData<AddonData>(data);
  exports.Set("NativeTensor", tensor_class);
  // Stop the compute thread before the environment (e.g. a worker thread) goes away.
  env.AddCleanupHook([data] { data->queue->shutdown(); });
  exports.Set("NativeViT", Model::Define(env));
  exports.Set("runOp", Napi::Function::New(env, RunOp, "runOp"));
  register_data(env, exports);
  exports.Set("backend", Napi::String::New(env, "cpu"));
  return exports;
}

}  // namespace
}  // namespace repadapter

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  return repadapter::Init(env, exports);
}

NODE_API_MODULE(repadapter, InitAddon)
