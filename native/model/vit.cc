// The ViT forward and backward, written once over the Backend.
#include "vit.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "../core/optimizer_step.h"
#include "../core/rng.h"

namespace repadapter {
namespace {

bool is_trainable(Role role, Trainable mode) {
  switch (mode) {
    case Trainable::kAll: return true;
    case Trainable::kHead: return role == Role::kHead;
    case Trainable::kAdapters: return role == Role::kAdapter || role == Role::kHead;
  }
  return false;
}

// Stochastic depth rate of block i: timm's torch.linspace(0, drop_path, depth)[i].
float drop_path_rate(const ViTConfig& c, int64_t i) {
  return c.depth > 1 ? c.drop_path * static_cast<float>(i) / static_cast<float>(c.depth - 1) : 0.0f;
}

float normal01(uint64_t seed, uint64_t stream, uint64_t i) {
  // Box–Muller over two independent uniforms; 1 − u keeps the log argument in (0, 1].
  const double u1 = 1.0 - uniform01(seed, stream, 2 * i);
  const double u2 = uniform01(seed, stream, 2 * i + 1);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

}  // namespace

ViT::ViT(Backend& backend, const ViTConfig& config) : backend_(backend), config_(config) {}

ViT::~ViT() { free_buffers(); }

void ViT::free_buffers() {
  drop_graph();
  backend_.release(frozen_);
  backend_.release(trainable_);
  backend_.release(grad_);
  backend_.release(arena_);
  backend_.release(state0_);
  backend_.release(state1_);
  backend_.release(bf16_weights_);
  backend_.release(step_buffer_);
  step_buffer_ = nullptr;
  step_key_ = nullptr;
  grad_sum_squares_ = nullptr;
  update_scalars_ = nullptr;
  update_jobs_ = nullptr;
  job_capacity_ = 0;
  bf16_weights_ = nullptr;
  state0_ = state1_ = nullptr;
  frozen_ = trainable_ = grad_ = nullptr;
  arena_ = nullptr;
  arena_bytes_ = 0;
}

Status ViT::Create(Backend& backend, const ViTConfig& config, uint64_t seed,
                   std::unique_ptr<ViT>* out) {
  RA_RETURN_IF_ERROR(config.validate());
  std::unique_ptr<ViT> model(new ViT(backend, config));
  model->seed_ = seed;
  model->build_params();
  RA_RETURN_IF_ERROR(model->layout(false));
  RA_RETURN_IF_ERROR(model->init_params(seed));
  *out = std::move(model);
  return Status::Ok();
}

// timm's state_dict order, so a saved file lists tensors as timm does.
void ViT::build_params() {
  const ViTConfig& c = config_;
  const int64_t D = c.width, R = c.adapter.hidden, G = c.adapter.groups;
  params_.clear();
  auto add = [&](std::string name, std::vector<int64_t> shape, Role role) {
    Param p;
    p.name = std::move(name);
    p.shape = std::move(shape);
    p.role = role;
    p.numel = 1;
    for (int64_t s : p.shape) p.numel *= s;
    p.trainable = is_trainable(role, c.trainable);
    params_.push_back(std::move(p));
  };
  add("cls_token", {1, 1, D}, Role::kBackbone);
  add("pos_embed", {1, c.tokens(), D}, Role::kBackbone);
  add("patch_embed.proj.weight", {D, 3, c.patch_size, c.patch_size}, Role::kBackbone);
  add("patch_embed.proj.bias", {D}, Role::kBackbone);
  auto add_adapter = [&](const std::string& prefix) {
    add(prefix + ".conv_A.weight", {R, D, 1}, Role::kAdapter);
    add(prefix + ".conv_A.bias", {R}, Role::kAdapter);
    add(prefix + ".conv_B.weight", {D, R / G, 1}, Role::kAdapter);
    add(prefix + ".conv_B.bias", {D}, Role::kAdapter);
  };
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    add(b + "norm1.weight", {D}, Role::kNorm);
    add(b + "norm1.bias", {D}, Role::kNorm);
    add(b + "attn.qkv.weight", {3 * D, D}, Role::kBackbone);
    add(b + "attn.qkv.bias", {3 * D}, Role::kBackbone);
    add(b + "attn.proj.weight", {D, D}, Role::kBackbone);
    add(b + "attn.proj.bias", {D}, Role::kBackbone);
    add(b + "norm2.weight", {D}, Role::kNorm);
    add(b + "norm2.bias", {D}, Role::kNorm);
    add(b + "mlp.fc1.weight", {c.mlp_hidden, D}, Role::kBackbone);
    add(b + "mlp.fc1.bias", {c.mlp_hidden}, Role::kBackbone);
    add(b + "mlp.fc2.weight", {D, c.mlp_hidden}, Role::kBackbone);
    add(b + "mlp.fc2.bias", {D}, Role::kBackbone);
    if (c.adapter_attn()) add_adapter(b + "adapter_attn");
    if (c.adapter_mlp()) add_adapter(b + "adapter_mlp");
  }
  add("norm.weight", {D}, Role::kNorm);
  add("norm.bias", {D}, Role::kNorm);
  add("head.weight", {c.num_classes, D}, Role::kHead);
  add("head.bias", {c.num_classes}, Role::kHead);
}

Param* ViT::find(const std::string& name) {
  for (Param& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

void ViT::bind_layers() {
  auto P = [&](const std::string& n) { return find(n); };
  cls_ = P("cls_token");
  pos_ = P("pos_embed");
  patch_embed_ = {P("patch_embed.proj.weight"), P("patch_embed.proj.bias")};
  norm_ = {P("norm.weight"), P("norm.bias")};
  head_ = {P("head.weight"), P("head.bias")};
  blocks_.assign(config_.depth, Block());
  for (int64_t i = 0; i < config_.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    Block& k = blocks_[i];
    k.norm1 = {P(b + "norm1.weight"), P(b + "norm1.bias")};
    k.norm2 = {P(b + "norm2.weight"), P(b + "norm2.bias")};
    k.qkv = {P(b + "attn.qkv.weight"), P(b + "attn.qkv.bias")};
    k.proj = {P(b + "attn.proj.weight"), P(b + "attn.proj.bias")};
    k.fc1 = {P(b + "mlp.fc1.weight"), P(b + "mlp.fc1.bias")};
    k.fc2 = {P(b + "mlp.fc2.weight"), P(b + "mlp.fc2.bias")};
    auto adapter = [&](const std::string& prefix) {
      return Adapter{P(prefix + ".conv_A.weight"), P(prefix + ".conv_A.bias"),
                     P(prefix + ".conv_B.weight"), P(prefix + ".conv_B.bias")};
    };
    if (config_.adapter_attn()) k.adapter_attn = adapter(b + "adapter_attn");
    if (config_.adapter_mlp()) k.adapter_mlp = adapter(b + "adapter_mlp");
  }
}

// (Re)allocates the frozen, trainable and gradient buffers for the current params_ and their
// trainable flags. With keep_values, each tensor's values move over from where they are now.
Status ViT::layout(bool keep_values) {
  int64_t frozen_n = 0, trainable_n = 0;
  for (Param& p : params_) {
    int64_t& n = p.trainable ? trainable_n : frozen_n;
    p.offset = n;
    n += (p.numel + 15) / 16 * 16;  // 64-byte aligned tensors
  }
  // The frozen buffer stays as it is when every frozen tensor already sits at its new offset:
  // folding trainable adapters away leaves the backbone in place, and a deployed model should
  // not hold two copies of its weights, even for a moment.
  bool frozen_in_place = keep_values && frozen_ && frozen_n == frozen_numel_;
  for (const Param& p : params_)
    if (!p.trainable && frozen_in_place) frozen_in_place = p.data == frozen_ + p.offset;
  float *frozen = frozen_in_place ? frozen_ : nullptr, *trainable = nullptr, *grad = nullptr;
  auto cleanup = [&] {
    if (!frozen_in_place) backend_.release(frozen);
    backend_.release(trainable);
    backend_.release(grad);
  };
  Status st = frozen_in_place ? Status::Ok()
                              : backend_.allocate(frozen_n * sizeof(float), reinterpret_cast<void**>(&frozen));
  if (st.ok()) st = backend_.allocate(trainable_n * sizeof(float), reinterpret_cast<void**>(&trainable));
  if (st.ok()) st = backend_.allocate(trainable_n * sizeof(float), reinterpret_cast<void**>(&grad));
  if (st.ok() && trainable_n) st = backend_.fill(grad, trainable_n, 0.0f);
  if (!st.ok()) {
    cleanup();
    return st;
  }
  for (Param& p : params_) {
    float* dst = (p.trainable ? trainable : frozen) + p.offset;
    if (keep_values && p.data && p.data != dst) {
      st = backend_.copy(dst, p.data, p.numel * sizeof(float));
      if (!st.ok()) {
        cleanup();
        return st;
      }
    }
    p.data = dst;
    p.grad = p.trainable ? grad + p.offset : nullptr;
  }
  if (!frozen_in_place) backend_.release(frozen_);
  backend_.release(trainable_);
  backend_.release(grad_);
  backend_.release(state0_);
  backend_.release(state1_);
  state0_ = state1_ = nullptr;  // optimizer state belongs to the old trainable set
  frozen_ = frozen;
  frozen_numel_ = frozen_n;
  trainable_ = trainable;
  grad_ = grad;
  trainable_numel_ = trainable_n;
  bind_layers();
  plan_ = Plan();          // what backward keeps depends on what trains
  have_forward_ = false;
  bf16_stale_ = true;      // bind_layers() dropped the copies' pointers; a fold changed values
  drop_graph();            // it read the old buffers
  return Status::Ok();
}

std::vector<ViT::Linear*> ViT::backbone_linears() {
  std::vector<Linear*> out = {&patch_embed_};
  for (Block& k : blocks_)
    for (Linear* l : {&k.qkv, &k.proj, &k.fc1, &k.fc2}) out.push_back(l);
  return out;
}

Status ViT::set_compute_dtype(DType dtype) {
  if (dtype == compute_dtype_) return Status::Ok();
  drop_graph();  // its products read the other weights
  plan_ = Plan();  // what backward keeps depends on the dtype (GELU's input)
  have_forward_ = false;
  compute_dtype_ = dtype;
  bf16_stale_ = true;
  if (dtype == DType::kF32) {
    for (Linear* l : backbone_linears()) l->w_bf16 = nullptr;
    backend_.release(bf16_weights_);
    bf16_weights_ = nullptr;
  }
  return Status::Ok();
}

Status ViT::write_param(const Param& p, const float* host) {
  bf16_stale_ = true;
  return backend_.upload(p.data, host, p.numel * sizeof(float));
}

Status ViT::refresh_bf16() {
  if (compute_dtype_ != DType::kBF16 || !bf16_stale_) return Status::Ok();
  const std::vector<Linear*> linears = backbone_linears();
  auto padded = [](int64_t n) { return (n + 31) / 32 * 32; };  // 64-byte aligned copies
  if (!bf16_weights_) {
    drop_graph();  // recorded with the float32 weights
    int64_t total = 0;
    for (const Linear* l : linears) total += padded(l->w->numel);
    RA_RETURN_IF_ERROR(backend_.allocate(total * sizeof(uint16_t), reinterpret_cast<void**>(&bf16_weights_)));
  }
  uint16_t* next = bf16_weights_;
  for (Linear* l : linears) {
    RA_RETURN_IF_ERROR(backend_.convert_to_bf16(l->w->data, next, l->w->numel));
    l->w_bf16 = next;
    next += padded(l->w->numel);
  }
  bf16_stale_ = false;
  return Status::Ok();
}

Status ViT::set_trainable(Trainable mode) {
  config_.trainable = mode;
  for (Param& p : params_) p.trainable = is_trainable(p.role, mode);
  return layout(true);
}

// timm's init (init_weights_vit_timm): Linear weights trunc_normal(std .02), biases zero,
// LayerNorm one / zero, pos_embed trunc_normal(.02), cls_token normal(1e-6); the patch conv
// keeps PyTorch's default U(±1/√fan_in). Adapters as the paper: A xavier-uniform, the rest zero.
Status ViT::init_params(uint64_t seed) {
  const int64_t D = config_.width, R = config_.adapter.hidden;
  std::vector<float> host;
  for (size_t index = 0; index < params_.size(); ++index) {
    Param& p = params_[index];
    host.assign(p.numel, 0.0f);
    const std::string& n = p.name;
    auto ends_with = [&](const char* suffix) {
      size_t l = std::strlen(suffix);
      return n.size() >= l && n.compare(n.size() - l, l, suffix) == 0;
    };
    auto trunc_normal = [&](float std) {
      for (int64_t i = 0; i < p.numel; ++i)
        host[i] = std::clamp(std * normal01(seed, index, i), -2.0f, 2.0f);
    };
    if (p.role == Role::kNorm) {
      if (ends_with(".weight")) std::fill(host.begin(), host.end(), 1.0f);
    } else if (p.role == Role::kAdapter) {
      if (ends_with("conv_A.weight")) {
        const float bound = std::sqrt(6.0f / static_cast<float>(D + R));
        for (int64_t i = 0; i < p.numel; ++i)
          host[i] = bound * (2.0f * uniform01(seed, index, i) - 1.0f);
      }
    } else if (n == "cls_token") {
      trunc_normal(1e-6f);
    } else if (n == "pos_embed") {
      trunc_normal(0.02f);
    } else if (n.rfind("patch_embed.", 0) == 0) {
      const float bound = 1.0f / std::sqrt(static_cast<float>(config_.patch_dim()));
      for (int64_t i = 0; i < p.numel; ++i)
        host[i] = bound * (2.0f * uniform01(seed, index, i) - 1.0f);
    } else if (ends_with(".weight")) {
      trunc_normal(0.02f);
    }
    RA_RETURN_IF_ERROR(backend_.upload(p.data, host.data(), p.numel * sizeof(float)));
  }
  return Status::Ok();
}

// Sites 0 and 1 of a block are its adapters' dropouts, 2 and 3 its drop paths.
DropoutDraw ViT::dropout_draw(int64_t block, int which) const {
  return {seed_, step_key_, static_cast<uint64_t>(block) << 8 | static_cast<uint64_t>(which)};
}

Status ViT::stage_draws(int64_t B) {
  RA_RETURN_IF_ERROR(ensure_step_buffer(0));
  const uint64_t key = mix64(step_);
  RA_RETURN_IF_ERROR(backend_.upload(step_key_, &key, sizeof(key)));
  if (!keep_scales_) return Status::Ok();
  // Stochastic depth masks, B numbers per block and branch, drawn on the host.
  const ViTConfig& c = config_;
  std::vector<float> keep(c.depth * 2 * B, 1.0f);
  for (int64_t i = 0; i < c.depth; ++i) {
    const float keep_prob = 1.0f - drop_path_rate(c, i);
    for (int which = 0; which < 2; ++which) {
      const DropoutDraw draw = dropout_draw(i, 2 + which);
      for (int64_t b = 0; b < B; ++b)
        keep[(2 * i + which) * B + b] =
            uniform01(draw.seed, key ^ draw.site, b) < keep_prob ? 1.0f / keep_prob : 0.0f;
    }
  }
  return backend_.upload(keep_scales_, keep.data(), keep.size() * sizeof(float));
}

// ---- the activation arena ------------------------------------------------------------------

// keep: activations for a backward through the backbone. Tensors that only a weight gradient
// reads (the inputs of frozen Linears) are kept only when that weight trains.
Status ViT::plan(int64_t B, bool train, bool keep, bool want_input_grad) {
  if (plan_.B == B && plan_.train == train && plan_.keep == keep &&
      plan_.input_grad == want_input_grad && arena_)
    return Status::Ok();
  drop_graph();  // the arena moves
  const ViTConfig& c = config_;
  const int64_t N = c.tokens(), P = c.patches(), D = c.width, F = c.mlp_hidden, H = c.heads;
  const int64_t R = c.adapter_attn() ? c.adapter.hidden : 0, Q = c.patch_dim(), C = c.num_classes;
  const int64_t M = B * N, S = c.image_size;
  const bool all = c.trainable == Trainable::kAll;
  bool drop_path = false;
  for (int64_t i = 0; i < c.depth; ++i) drop_path |= train && drop_path_rate(c, i) > 0;

  size_t offset = 0;
  char* base = nullptr;
  auto take = [&](int64_t n) -> float* {
    float* p = base ? reinterpret_cast<float*>(base + offset) : nullptr;
    offset += (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
    return p;
  };
  // Two passes: the first measures, the second hands out pointers into one allocation.
  for (int pass = 0; pass < 2; ++pass) {
    offset = 0;
    images_ = take(B * 3 * S * S);
    patches_ = take(B * P * Q);
    embedded_ = take(B * P * D);
    feat_ = take(B * D);
    logits_ = take(B * C);
    final_mean_ = take(B);
    final_rstd_ = take(B);
    // Buffers shared by all blocks when nothing needs them after the block has run.
    float* shared_x = take(M * D);
    float* shared_a = take(M * D);
    float* shared_u = take(M * D);
    float* shared_o = take(M * D);
    float* shared_z = take(M * std::max<int64_t>(R, 1));
    // qkv in the compute dtype: bf16 compute stores it in bf16, the values attention rounds to.
    const int64_t qkv_floats = compute_dtype_ == DType::kBF16 ? (M * 3 * D + 1) / 2 : M * 3 * D;
    float* shared_qkv = keep ? nullptr : take(qkv_floats);
    // bf16 activations run the MLP as autocast does: fc1 writes bf16, GELU reads and writes
    // bf16, fc2 reads bf16 (nothing needs them in float32: backward reads GELU's input, which
    // bf16 compute keeps in bf16 anyway), and backward's gradients through it are bf16 the same way.
    const bool mlp_bf16 = bf16_activations();
    auto take_bf16 = [&](int64_t n) { return reinterpret_cast<uint16_t*>(take((n + 1) / 2)); };
    float* shared_g = mlp_bf16 ? nullptr : take(M * F);
    uint16_t* shared_h16 = mlp_bf16 && !keep ? take_bf16(M * F) : nullptr;
    uint16_t* shared_g16 = mlp_bf16 && keep ? take_bf16(M * F) : nullptr;
    // set_recompute_mlp: backward recomputes GELU's input, so every block shares one buffer for
    // it (bf16 in bf16 compute), plus a float32 one where fc1 writes float32.
    const bool recompute = keep && recompute_mlp_;
    const bool bf16 = compute_dtype_ == DType::kBF16;
    uint16_t* shared_recomputed16 = recompute && bf16 ? take_bf16(M * F) : nullptr;
    recompute_fc1_out_ = recompute && !mlp_bf16 ? take(M * F) : nullptr;
    branch_ = drop_path ? take(M * D) : nullptr;  // a branch's output before stochastic depth
    keep_scales_ = drop_path ? take(c.depth * 2 * B) : nullptr;
    saved_.assign(c.depth, Saved());
    float* x_in = keep ? take(M * D) : shared_x;
    for (int64_t i = 0; i < c.depth; ++i) {
      Saved& s = saved_[i];
      const bool attn_adapter = c.adapter_attn(), mlp_adapter = c.adapter_mlp();
      s.x_in = x_in;
      s.mean1 = keep ? take(M) : nullptr;
      s.rstd1 = keep ? take(M) : nullptr;
      // A norm's output is never kept: backward recomputes it from the kept input and statistics
      // (one LayerNorm pass) into the shared buffer, for the weight gradients that read it.
      s.a1 = shared_a;
      s.z1 = keep && attn_adapter ? take(M * R) : shared_z;
      s.u1 = keep && attn_adapter && all ? take(M * D) : shared_u;
      s.qkv = keep ? take(qkv_floats) : shared_qkv;
      s.attn_saved = keep ? take(backend_.attention_saved_floats(B, N, H, c.head_dim(), compute_dtype_)) : nullptr;
      s.o = keep && all ? take(M * D) : shared_o;
      s.x_mid = keep ? take(M * D) : shared_x;
      s.mean2 = keep ? take(M) : nullptr;
      s.rstd2 = keep ? take(M) : nullptr;
      s.a2 = shared_a;
      s.z2 = keep && mlp_adapter ? take(M * R) : shared_z;
      s.u2 = keep && mlp_adapter && all ? take(M * D) : shared_u;
      // GELU's input for backward: float32, or in bf16 compute a bf16 copy (as PyTorch's autocast
      // keeps fc1's output) — the largest kept tensor at half the bytes. Without backward, GELU
      // runs in place in s.g.
      const bool h_in_bf16 = keep && bf16;
      s.h = keep && !h_in_bf16 ? (recompute ? recompute_fc1_out_ : take(M * F)) : nullptr;
      s.h_bf16 = h_in_bf16 ? (recompute ? shared_recomputed16 : take_bf16(M * F)) : shared_h16;
      s.g = keep && all ? take(M * F) : shared_g;
      s.g_bf16 = mlp_bf16 ? (keep ? shared_g16 : shared_h16) : nullptr;  // eval: GELU in place
      const bool dp = train && drop_path_rate(c, i) > 0;
      s.keep1 = dp && keep_scales_ ? keep_scales_ + 2 * i * B : nullptr;
      s.keep2 = dp && keep_scales_ ? keep_scales_ + (2 * i + 1) * B : nullptr;
      x_in = keep ? take(M * D) : shared_x;
    }
    x_final_ = x_in;
    const bool backward = train;  // a head-only backward still needs the loss buffers
    d_logits_ = backward ? take(B * C) : nullptr;
    loss_ = backward ? take(1) : nullptr;
    labels_ = backward ? reinterpret_cast<int32_t*>(take(B)) : nullptr;
    soft_ = backward ? take(B * C) : nullptr;
    d_feat_ = keep ? take(B * D) : nullptr;
    dx_ = keep ? take(M * D) : nullptr;
    d_branch_ = keep && drop_path ? take(M * D) : nullptr;
    d_wide_ = keep ? take(M * (mlp_bf16 ? 3 * D : std::max(3 * D, F))) : nullptr;  // bf16 MLP: its own
    d_u_ = keep ? take(M * D) : nullptr;
    d_z_ = keep && R > 0 ? take(M * R) : nullptr;
    d_o_ = keep ? take(M * D) : nullptr;
    const bool embed_grad = keep && (all || want_input_grad);
    d_embedded_ = embed_grad ? take(B * P * D) : nullptr;
    d_patches_ = keep && want_input_grad ? take(B * P * Q) : nullptr;
    d_images_ = keep && want_input_grad ? take(B * 3 * S * S) : nullptr;

    if (pass == 0) {
      if (offset > arena_bytes_) {
        backend_.release(arena_);
        arena_ = nullptr;
        arena_bytes_ = 0;
        plan_ = Plan();  // no arena: nothing planned until an allocation succeeds
        RA_RETURN_IF_ERROR(backend_.allocate(offset, &arena_));
        arena_bytes_ = offset;
      }
      base = static_cast<char*>(arena_);
    }
  }
  plan_ = {B, train, keep, want_input_grad};
  return Status::Ok();
}

// ---- layers ----------------------------------------------------------------------------------

LinearRef ViT::ref(const Linear& l) const {
  const int64_t out = l.w->shape[0];
  return {l.w->data, l.b->data, l.w->grad, l.b->grad, out, l.w->numel / out, l.w_bf16};
}

AdapterRef ViT::ref(const Adapter& a) const {
  const AdapterConfig& c = config_.adapter;
  return {ref(Linear{a.A, a.a}), a.Bw->data, a.b->data, a.Bw->grad, a.b->grad,
          config_.width, c.hidden, c.groups, c.scale, c.dropout};
}

// ---- forward ---------------------------------------------------------------------------------

Status ViT::forward(const float* images_host, int64_t B, bool train, bool want_input_grad,
                    float* logits_host) {
  const ViTConfig& c = config_;
  if (B <= 0) return InvalidArgument("batch size must be positive");
  const bool keep = train && (c.trainable != Trainable::kHead || want_input_grad);
  have_forward_ = false;  // whatever fails below, backward must not read stale activations
  have_input_grad_ = false;
  RA_RETURN_IF_ERROR(plan(B, train, keep, want_input_grad));
  RA_RETURN_IF_ERROR(refresh_bf16());
  const int64_t S = c.image_size;
  RA_RETURN_IF_ERROR(backend_.upload(images_, images_host, B * 3 * S * S * sizeof(float)));
  if (train) {
    ++step_;
    RA_RETURN_IF_ERROR(stage_draws(B));
    RA_RETURN_IF_ERROR(forward_compute(B, true));
  } else if (graphs_ && !graphs_unavailable_) {
    RA_RETURN_IF_ERROR(run_recorded(eval_recording_, {static_cast<double>(B)},
                                    [&] { return forward_compute(B, false); }));
  } else {
    RA_RETURN_IF_ERROR(forward_compute(B, false));
  }
  RA_RETURN_IF_ERROR(backend_.download(logits_host, logits_, B * c.num_classes * sizeof(float)));
  have_forward_ = train;
  have_input_grad_ = false;
  last_B_ = B;
  return Status::Ok();
}

void ViT::set_recompute_mlp(bool on) {
  if (on == recompute_mlp_) return;
  recompute_mlp_ = on;
  plan_ = Plan();  // what backward keeps changes
  have_forward_ = false;
  drop_graph();
}

void ViT::set_graphs(bool on) {
  graphs_ = on;
  if (!on) drop_graph();
}

void ViT::drop_graph() {
  for (Recording* r : {&eval_recording_, &step_recording_}) {
    backend_.release_graph(r->graph);
    *r = Recording();
  }
}

Status ViT::run_recorded(Recording& r, const std::vector<double>& key,
                         const std::function<Status()>& compute) {
  if (r.graph && r.key == key) {
    const Status replayed = backend_.replay(r.graph);
    if (replayed.code() != Code::kUnavailable) return replayed;
    // The backend moved a buffer the recording reads (its scratch grew for another shape):
    // run eagerly below, and record again next time.
    backend_.release_graph(r.graph);
    r.graph = nullptr;
    r.warm = false;
  }
  if (!r.warm || r.key != key) {
    // An eager run first: it sizes the backend's scratch and plans its products, which a
    // recording cannot do.
    backend_.release_graph(r.graph);
    r = Recording();
    RA_RETURN_IF_ERROR(compute());
    r.key = key;
    r.warm = true;
    return Status::Ok();
  }
  if (!backend_.begin_capture().ok()) {
    graphs_unavailable_ = true;  // this backend records no graphs: run eagerly from now on
    return compute();
  }
  const Status recorded = compute();
  void* graph = nullptr;
  const Status ended = backend_.end_capture(&graph);
  if (!recorded.ok() || !ended.ok()) {
    // Some op could not be recorded: nothing ran, so run eagerly, and do not try to record
    // again.
    backend_.release_graph(graph);
    graphs_unavailable_ = true;
    return compute();
  }
  r.graph = graph;
  return backend_.replay(graph);  // recording ran nothing
}

Status ViT::forward_compute(int64_t B, bool train) {
  const ViTConfig& c = config_;
  const int64_t N = c.tokens(), P = c.patches(), D = c.width, F = c.mlp_hidden, S = c.image_size;
  const int64_t M = B * N;
  RA_RETURN_IF_ERROR(backend_.patchify(images_, patches_, B, S, c.patch_size));
  RA_RETURN_IF_ERROR(linear_forward(backend_, patches_, B * P, ref(patch_embed_), embedded_));
  RA_RETURN_IF_ERROR(backend_.tokens_forward(embedded_, cls_->data, pos_->data, saved_[0].x_in, B, P, D));

  for (int64_t i = 0; i < c.depth; ++i) {
    const Block& k = blocks_[i];
    Saved& s = saved_[i];
    float* x_out = i + 1 < c.depth ? saved_[i + 1].x_in : x_final_;

    // Attention branch: x_mid = x_in + drop_path(proj(attn(qkv(adapter(norm1(x_in)))))).
    NormOutput qkv_in;
    RA_RETURN_IF_ERROR(norm_and_adapter(i, 0, M, train, true, &qkv_in));
    if (compute_dtype_ == DType::kBF16)
      RA_RETURN_IF_ERROR(linear_forward(backend_, qkv_in.f32, M, ref(k.qkv), nullptr, 0.0f,
                                        {qkv_in.bf16, static_cast<uint16_t*>(s.qkv)}));
    else
      RA_RETURN_IF_ERROR(linear_forward(backend_, qkv_in.f32, M, ref(k.qkv), static_cast<float*>(s.qkv)));
    // With bf16 activations attention's output comes rounded to bf16, which proj's product would
    // do to its operand anyway.
    const bool o_bf16 = bf16_activations();
    uint16_t* o16 = o_bf16 ? reinterpret_cast<uint16_t*>(s.o) : nullptr;
    RA_RETURN_IF_ERROR(backend_.attention_forward(s.qkv, o_bf16 ? nullptr : s.o, o16, s.attn_saved, B, N, c.heads,
                                                  c.head_dim(), compute_dtype_));
    const Bf16Activations proj_in = {o16, nullptr};
    // x_mid = x_in + branch: with stochastic depth through the residual op (which writes x_mid
    // from x_in, no copy); without, the proj product adds into x_mid, a copy of x_in where
    // backward keeps both.
    if (s.keep1) {
      RA_RETURN_IF_ERROR(linear_forward(backend_, s.o, M, ref(k.proj), branch_, 0.0f, proj_in));
      RA_RETURN_IF_ERROR(backend_.residual_add(s.x_mid, s.x_in, branch_, s.keep1, B, N * D));
    } else {
      if (s.x_mid != s.x_in) RA_RETURN_IF_ERROR(backend_.copy(s.x_mid, s.x_in, M * D * sizeof(float)));
      RA_RETURN_IF_ERROR(linear_forward(backend_, s.o, M, ref(k.proj), s.x_mid, 1.0f, proj_in));
    }

    // MLP branch: x_out = x_mid + drop_path(fc2(gelu(fc1(adapter(norm2(x_mid)))))).
    NormOutput fc1_in;
    RA_RETURN_IF_ERROR(norm_and_adapter(i, 1, M, train, true, &fc1_in));
    if (s.g_bf16) {
      RA_RETURN_IF_ERROR(linear_forward(backend_, nullptr, M, ref(k.fc1), nullptr, 0.0f, {fc1_in.bf16, s.h_bf16}));
      RA_RETURN_IF_ERROR(backend_.gelu_forward_bf16(s.h_bf16, s.g_bf16, M * F));
    } else {
      // Backward reads GELU's input (s.h, or its bf16 copy); otherwise GELU runs in place.
      float* fc1_out = s.h ? s.h : s.g;
      RA_RETURN_IF_ERROR(linear_forward(backend_, fc1_in.f32, M, ref(k.fc1), fc1_out));
      if (s.h_bf16) RA_RETURN_IF_ERROR(backend_.convert_to_bf16(fc1_out, s.h_bf16, M * F));
      RA_RETURN_IF_ERROR(backend_.gelu_forward(fc1_out, s.g, M * F));
    }
    const Bf16Activations fc2_in = {s.g_bf16, nullptr};
    if (s.keep2) {
      RA_RETURN_IF_ERROR(linear_forward(backend_, s.g, M, ref(k.fc2), branch_, 0.0f, fc2_in));
      RA_RETURN_IF_ERROR(backend_.residual_add(x_out, s.x_mid, branch_, s.keep2, B, N * D));
    } else {
      if (x_out != s.x_mid) RA_RETURN_IF_ERROR(backend_.copy(x_out, s.x_mid, M * D * sizeof(float)));
      RA_RETURN_IF_ERROR(linear_forward(backend_, s.g, M, ref(k.fc2), x_out, 1.0f, fc2_in));
    }
  }

  // The head reads only the cls token: LayerNorm its rows (stride N·D) and nothing else.
  RA_RETURN_IF_ERROR(backend_.layernorm_forward(x_final_, N * D, norm_.w->data, norm_.b->data, feat_, nullptr, D,
                                                final_mean_, final_rstd_, B, D, c.ln_eps));
  return linear_forward(backend_, feat_, B, ref(head_), logits_);
}

// ---- backward --------------------------------------------------------------------------------

// Block i's GELU input again, as forward computed it (set_recompute_mlp): the norm output, or the
// adapter's with the same dropout draw, then fc1 — into the buffers backward reads it from.
Status ViT::recompute_gelu_input(int64_t i, int64_t M) {
  const Block& k = blocks_[i];
  const Saved& s = saved_[i];
  NormOutput fc1_in;
  RA_RETURN_IF_ERROR(norm_and_adapter(i, 1, M, true, false, &fc1_in));
  if (s.g_bf16) return linear_forward(backend_, nullptr, M, ref(k.fc1), nullptr, 0.0f, {fc1_in.bf16, s.h_bf16});
  RA_RETURN_IF_ERROR(linear_forward(backend_, fc1_in.f32, M, ref(k.fc1), recompute_fc1_out_));
  if (s.h_bf16) return backend_.convert_to_bf16(recompute_fc1_out_, s.h_bf16, M * config_.mlp_hidden);
  return Status::Ok();
}

// Block i's norm `which` (0: norm1, before qkv; 1: norm2, before fc1) of its input, then the
// adapter after it where there is one: the input of the Linear that follows, float32 in the
// shared buffers, or rounded to bf16 in their place with bf16 activations (that Linear's product
// rounds it anyway). stats: keep the norm's mean and rstd where backward needs them.
Status ViT::norm_and_adapter(int64_t i, int which, int64_t M, bool train, bool stats, NormOutput* out) {
  const ViTConfig& c = config_;
  const Block& k = blocks_[i];
  const Saved& s = saved_[i];
  const Norm& norm = which == 0 ? k.norm1 : k.norm2;
  const Adapter& adapter = which == 0 ? k.adapter_attn : k.adapter_mlp;
  const float* x = which == 0 ? s.x_in : s.x_mid;
  float* mean = stats ? (which == 0 ? s.mean1 : s.mean2) : nullptr;
  float* rstd = stats ? (which == 0 ? s.rstd1 : s.rstd2) : nullptr;
  float* y = adapter.A ? (which == 0 ? s.u1 : s.u2) : (which == 0 ? s.a1 : s.a2);
  uint16_t* y16 = bf16_activations() ? reinterpret_cast<uint16_t*>(y) : nullptr;
  if (y16) y = nullptr;
  if (adapter.A)
    RA_RETURN_IF_ERROR(layernorm_adapter_forward(backend_, x, c.width, norm.w->data, norm.b->data, c.ln_eps,
                                                 ref(adapter), nullptr, which == 0 ? s.z1 : s.z2, y, y16, mean,
                                                 rstd, M, train, dropout_draw(i, which)));
  else
    RA_RETURN_IF_ERROR(backend_.layernorm_forward(x, c.width, norm.w->data, norm.b->data, y, y16, c.width, mean,
                                                  rstd, M, c.width, c.ln_eps));
  *out = {y, y16};
  return Status::Ok();
}

// Checked on the host: a recorded step cannot report a bad label from the device.
Status ViT::check_target(const Target& target, int64_t B) const {
  const int64_t C = config_.num_classes;
  if ((target.labels == nullptr) == (target.soft_targets == nullptr))
    return InvalidArgument("backward needs either integer labels or soft targets");
  if (!(target.smoothing >= 0.0f && target.smoothing < 1.0f))
    return InvalidArgument("label smoothing must be in [0, 1), got " + std::to_string(target.smoothing));
  if (target.labels)
    for (int64_t b = 0; b < B; ++b)
      if (target.labels[b] < 0 || target.labels[b] >= C)
        return OutOfRange("label " + std::to_string(target.labels[b]) + " of sample " +
                          std::to_string(b) + " is outside [0, " + std::to_string(C) + ")");
  return Status::Ok();
}

Status ViT::stage_target(const Target& target, int64_t B) {
  if (target.labels) return backend_.upload(labels_, target.labels, B * sizeof(int32_t));
  return backend_.upload(soft_, target.soft_targets, B * config_.num_classes * sizeof(float));
}

Status ViT::backward(const Target& target, float* loss_host) {
  if (!have_forward_)
    return InvalidArgument("backward needs a training-mode forward first (call train() and forward)");
  RA_RETURN_IF_ERROR(check_target(target, last_B_));
  RA_RETURN_IF_ERROR(stage_target(target, last_B_));
  RA_RETURN_IF_ERROR(backward_compute(target));
  return backend_.download(loss_host, loss_, sizeof(float));
}

// Reads only where the target lives (labels or soft targets) and its smoothing from `target`.
Status ViT::backward_compute(const Target& target) {
  const ViTConfig& c = config_;
  const int64_t B = last_B_, N = c.tokens(), P = c.patches(), D = c.width, F = c.mlp_hidden;
  const int64_t C = c.num_classes, M = B * N;
  RA_RETURN_IF_ERROR(backend_.cross_entropy(logits_, target.labels ? labels_ : nullptr,
                                            target.soft_targets ? soft_ : nullptr, target.smoothing,
                                            loss_, d_logits_, B, C));

  const bool through_backbone = plan_.keep;
  RA_RETURN_IF_ERROR(linear_backward(backend_, d_logits_, feat_, B, ref(head_), through_backbone ? d_feat_ : nullptr));
  if (!through_backbone) return Status::Ok();

  // The norm outputs that weight gradients read (conv_A's, or qkv's / fc1's when the backbone
  // trains without an adapter in between), recomputed: forward kept only their statistics.
  const bool adapters_train = c.trainable != Trainable::kHead, all = c.trainable == Trainable::kAll;
  auto norm_output = [&](const Norm& n, const float* x, float* a, bool has_adapter) -> Status {
    if (!(has_adapter ? adapters_train : all)) return Status::Ok();
    return backend_.layernorm_forward(x, D, n.w->data, n.b->data, a, nullptr, D, nullptr, nullptr, M, D, c.ln_eps);
  };
  RA_RETURN_IF_ERROR(backend_.fill(dx_, M * D, 0.0f));
  RA_RETURN_IF_ERROR(backend_.layernorm_backward(d_feat_, D, x_final_, N * D, norm_.w->data, final_mean_,
                                                 final_rstd_, dx_, norm_.w->grad, norm_.b->grad, B, D));
  for (int64_t i = c.depth - 1; i >= 0; --i) {
    const Block& k = blocks_[i];
    const Saved& s = saved_[i];
    // MLP branch. With stochastic depth the branch's gradient is its own tensor, which with bf16
    // activations the residual op hands over in bf16 (fc2, frozen, rounds it anyway).
    const bool bf16 = bf16_activations();
    uint16_t* d_branch16 = bf16 && s.keep2 ? reinterpret_cast<uint16_t*>(d_branch_) : nullptr;
    const float* d_branch = dx_;
    if (s.keep2) {
      RA_RETURN_IF_ERROR(backend_.residual_backward(dx_, d_branch16 ? nullptr : d_branch_, d_branch16, s.keep2, B,
                                                    N * D));
      d_branch = d_branch16 ? nullptr : d_branch_;
    }
    const float* fc1_in = k.adapter_mlp.A ? s.u2 : s.a2;
    if (recompute_mlp_) RA_RETURN_IF_ERROR(recompute_gelu_input(i, M));
    if (s.g_bf16) {
      // bf16 gradients through the frozen MLP, as the activations went (forward's GELU output
      // buffer holds them): fc2's input gradient, GELU's backward, fc1's input gradient.
      RA_RETURN_IF_ERROR(linear_backward(backend_, d_branch, nullptr, M, ref(k.fc2), nullptr, 0.0f, {d_branch16, s.g_bf16}));
      RA_RETURN_IF_ERROR(backend_.gelu_backward_bf16_grads(s.h_bf16, s.g_bf16, s.g_bf16, M * F));
      RA_RETURN_IF_ERROR(norm_output(k.norm2, s.x_mid, s.a2, k.adapter_mlp.A != nullptr));
      RA_RETURN_IF_ERROR(linear_backward(backend_, nullptr, fc1_in, M, ref(k.fc1), d_u_, 0.0f, {s.g_bf16, nullptr}));
    } else {
      RA_RETURN_IF_ERROR(linear_backward(backend_, d_branch, s.g, M, ref(k.fc2), d_wide_));
      if (s.h_bf16)
        RA_RETURN_IF_ERROR(backend_.gelu_backward_bf16(s.h_bf16, d_wide_, M * F));
      else
        RA_RETURN_IF_ERROR(backend_.gelu_backward(s.h, d_wide_, M * F));
      RA_RETURN_IF_ERROR(norm_output(k.norm2, s.x_mid, s.a2, k.adapter_mlp.A != nullptr));
      RA_RETURN_IF_ERROR(linear_backward(backend_, d_wide_, fc1_in, M, ref(k.fc1), d_u_));
    }
    if (k.adapter_mlp.A)
      RA_RETURN_IF_ERROR(adapter_backward(backend_, ref(k.adapter_mlp), s.a2, s.z2, d_u_, d_z_, M, true, dropout_draw(i, 1)));
    RA_RETURN_IF_ERROR(backend_.layernorm_backward(d_u_, D, s.x_mid, D, k.norm2.w->data, s.mean2, s.rstd2,
                                                   dx_, k.norm2.w->grad, k.norm2.b->grad, M, D));
    // Attention branch.
    d_branch16 = bf16 && s.keep1 ? reinterpret_cast<uint16_t*>(d_branch_) : nullptr;
    d_branch = dx_;
    if (s.keep1) {
      RA_RETURN_IF_ERROR(backend_.residual_backward(dx_, d_branch16 ? nullptr : d_branch_, d_branch16, s.keep1, B,
                                                    N * D));
      d_branch = d_branch16 ? nullptr : d_branch_;
    }
    RA_RETURN_IF_ERROR(linear_backward(backend_, d_branch, s.o, M, ref(k.proj), d_o_, 0.0f, {d_branch16, nullptr}));
    // With bf16 activations attention's input gradient comes rounded to bf16, which the qkv
    // product's rounding of its operand would do anyway.
    const float* qkv_in = k.adapter_attn.A ? s.u1 : s.a1;
    if (bf16_activations()) {
      uint16_t* d_qkv16 = reinterpret_cast<uint16_t*>(d_wide_);
      RA_RETURN_IF_ERROR(backend_.attention_backward(d_o_, s.qkv, s.attn_saved, nullptr, d_qkv16, B, N, c.heads,
                                                     c.head_dim(), compute_dtype_));
      RA_RETURN_IF_ERROR(norm_output(k.norm1, s.x_in, s.a1, k.adapter_attn.A != nullptr));
      RA_RETURN_IF_ERROR(linear_backward(backend_, nullptr, qkv_in, M, ref(k.qkv), d_u_, 0.0f, {d_qkv16, nullptr}));
    } else {
      RA_RETURN_IF_ERROR(backend_.attention_backward(d_o_, s.qkv, s.attn_saved, d_wide_, nullptr, B, N, c.heads,
                                                     c.head_dim(), compute_dtype_));
      RA_RETURN_IF_ERROR(norm_output(k.norm1, s.x_in, s.a1, k.adapter_attn.A != nullptr));
      RA_RETURN_IF_ERROR(linear_backward(backend_, d_wide_, qkv_in, M, ref(k.qkv), d_u_));
    }
    if (k.adapter_attn.A)
      RA_RETURN_IF_ERROR(adapter_backward(backend_, ref(k.adapter_attn), s.a1, s.z1, d_u_, d_z_, M, true, dropout_draw(i, 0)));
    RA_RETURN_IF_ERROR(backend_.layernorm_backward(d_u_, D, s.x_in, D, k.norm1.w->data, s.mean1, s.rstd1,
                                                   dx_, k.norm1.w->grad, k.norm1.b->grad, M, D));
  }
  RA_RETURN_IF_ERROR(backend_.tokens_backward(dx_, d_embedded_, cls_->grad, pos_->grad, B, P, D));
  if (d_embedded_)
    RA_RETURN_IF_ERROR(linear_backward(backend_, d_embedded_, patches_, B * P, ref(patch_embed_), d_patches_));
  if (d_images_) {
    RA_RETURN_IF_ERROR(backend_.patchify_backward(d_patches_, d_images_, B, c.image_size, c.patch_size));
    have_input_grad_ = true;
  }
  return Status::Ok();
}

Status ViT::zero_grad() {
  if (trainable_numel_) return backend_.fill(grad_, trainable_numel_, 0.0f);
  return Status::Ok();
}

Status ViT::input_grad(float* host) const {
  if (!have_input_grad_)
    return InvalidArgument("no input gradient: run forward with inputGrad requested, then backward");
  const int64_t S = config_.image_size;
  return backend_.download(host, d_images_, last_B_ * 3 * S * S * sizeof(float));
}

// ---- optimizer ---------------------------------------------------------------------------------

Status ViT::ensure_optimizer_state(int slots) {
  float** state[2] = {&state0_, &state1_};
  for (int k = 0; k < slots; ++k) {
    if (*state[k] || trainable_numel_ == 0) continue;
    RA_RETURN_IF_ERROR(backend_.allocate(trainable_numel_ * sizeof(float), reinterpret_cast<void**>(state[k])));
    RA_RETURN_IF_ERROR(backend_.fill(*state[k], trainable_numel_, 0.0f));
  }
  return Status::Ok();
}

// Ranges must lie in the buffer and not overlap: the backends update all of them in one pass.
static Status check_ranges(const std::vector<ViT::UpdateRange>& ranges, int64_t total) {
  auto text = [](const ViT::UpdateRange& r) {
    return "[" + std::to_string(r.offset) + ", " + std::to_string(r.offset + r.n) + ")";
  };
  for (const auto& r : ranges)
    if (r.offset < 0 || r.n < 0 || r.offset + r.n > total)
      return OutOfRange("optimizer range " + text(r) + " is outside the trainable buffer of " +
                        std::to_string(total) + " values");
  std::vector<ViT::UpdateRange> sorted = ranges;
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.offset < b.offset; });
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i].offset < sorted[i - 1].offset + sorted[i - 1].n)
      return InvalidArgument("optimizer ranges " + text(sorted[i - 1]) + " and " + text(sorted[i]) + " overlap");
  return Status::Ok();
}

// The step buffer: the dropout key, Σ grad², the update's scalars, then room for `jobs` jobs;
// 64-byte aligned parts. Growing it keeps the values already written (a forward's key must
// survive until its backward) and drops the recordings, which read the old one.
Status ViT::ensure_step_buffer(int64_t jobs) {
  if (step_buffer_ && jobs <= job_capacity_) return Status::Ok();
  constexpr size_t kHeader = 64 + 64 + (std::max(sizeof(AdamWScalars), sizeof(SgdScalars)) + 63) / 64 * 64;
  const int64_t capacity = std::max<int64_t>({jobs, 2 * job_capacity_, 64});
  void* grown = nullptr;
  RA_RETURN_IF_ERROR(backend_.allocate(kHeader + capacity * sizeof(UpdateJob), &grown));
  if (step_buffer_) {
    const Status copied = backend_.copy(grown, step_buffer_, kHeader);
    if (!copied.ok()) {
      backend_.release(grown);
      return copied;
    }
  }
  drop_graph();
  backend_.release(step_buffer_);
  step_buffer_ = grown;
  char* base = static_cast<char*>(grown);
  step_key_ = reinterpret_cast<uint64_t*>(base);
  grad_sum_squares_ = reinterpret_cast<double*>(base + 64);
  update_scalars_ = base + 128;
  update_jobs_ = reinterpret_cast<UpdateJob*>(base + kHeader);
  job_capacity_ = capacity;
  return Status::Ok();
}

// Exactly one of adamw and sgd: the update's jobs and scalars into the step buffer.
Status ViT::stage_update(const std::vector<UpdateRange>& ranges, const AdamWStep* adamw,
                         const SgdStep* sgd) {
  int64_t total = 0;
  const std::vector<UpdateJob> jobs =
      update_jobs(ranges.data(), static_cast<int64_t>(ranges.size()), adamw, &total);
  const int64_t count = static_cast<int64_t>(jobs.size());
  RA_RETURN_IF_ERROR(ensure_step_buffer(count));
  if (count) RA_RETURN_IF_ERROR(backend_.upload(update_jobs_, jobs.data(), count * sizeof(UpdateJob)));
  if (adamw) {
    const AdamWScalars s = adamw_scalars(*adamw);
    RA_RETURN_IF_ERROR(backend_.upload(update_scalars_, &s, sizeof(s)));
  } else {
    const SgdScalars s = sgd_scalars(*sgd);
    RA_RETURN_IF_ERROR(backend_.upload(update_scalars_, &s, sizeof(s)));
  }
  job_count_ = count;
  job_total_ = total;
  return Status::Ok();
}

Status ViT::update_compute(bool adamw) {
  if (adamw)
    return backend_.adamw_update(trainable_, grad_, state0_, state1_, update_jobs_, job_count_,
                                 job_total_, static_cast<const AdamWScalars*>(update_scalars_));
  return backend_.sgd_update(trainable_, grad_, state0_, update_jobs_, job_count_, job_total_,
                             static_cast<const SgdScalars*>(update_scalars_));
}

Status ViT::adamw_step(const std::vector<UpdateRange>& ranges, AdamWStep hyper) {
  if (patch_embed_.w->trainable) bf16_stale_ = true;  // the backbone trains: new masters
  RA_RETURN_IF_ERROR(check_ranges(ranges, trainable_numel_));
  RA_RETURN_IF_ERROR(ensure_optimizer_state(2));
  RA_RETURN_IF_ERROR(stage_update(ranges, &hyper, nullptr));
  return update_compute(true);
}

Status ViT::sgd_step(const std::vector<UpdateRange>& ranges, SgdStep hyper) {
  if (patch_embed_.w->trainable) bf16_stale_ = true;
  RA_RETURN_IF_ERROR(check_ranges(ranges, trainable_numel_));
  if (hyper.momentum != 0.0f) RA_RETURN_IF_ERROR(ensure_optimizer_state(1));
  RA_RETURN_IF_ERROR(stage_update(ranges, nullptr, &hyper));
  return update_compute(false);
}

Status ViT::grad_sum_squares(double* out) {
  *out = 0;
  if (trainable_numel_ == 0) return Status::Ok();
  RA_RETURN_IF_ERROR(ensure_step_buffer(0));
  RA_RETURN_IF_ERROR(backend_.sum_squares(grad_, trainable_numel_, grad_sum_squares_));
  return backend_.download(out, grad_sum_squares_, sizeof(double));
}

// ---- the whole training step -------------------------------------------------------------------

Status ViT::train_step(const float* images_host, int64_t B, const Target& target,
                       const OptimizerStep& update, float* loss_host, float* logits_host,
                       double* grad_norm_host) {
  const ViTConfig& c = config_;
  if (B <= 0) return InvalidArgument("batch size must be positive");
  const bool adamw = update.kind == OptimizerStep::Kind::kAdamW;
  const bool clip = update.clip_max_norm > 0;
  const float pre_scale = adamw ? update.adamw.grad_scale : update.sgd.grad_scale;
  RA_RETURN_IF_ERROR(check_target(target, B));
  RA_RETURN_IF_ERROR(check_ranges(update.ranges, trainable_numel_));
  have_forward_ = false;
  have_input_grad_ = false;
  const bool keep = c.trainable != Trainable::kHead;
  RA_RETURN_IF_ERROR(plan(B, true, keep, false));
  RA_RETURN_IF_ERROR(refresh_bf16());
  RA_RETURN_IF_ERROR(ensure_optimizer_state(adamw ? 2 : update.sgd.momentum != 0.0f ? 1 : 0));
  // Everything the step reads goes to backend memory first.
  RA_RETURN_IF_ERROR(stage_update(update.ranges, adamw ? &update.adamw : nullptr, adamw ? nullptr : &update.sgd));
  ++step_;
  RA_RETURN_IF_ERROR(stage_draws(B));
  RA_RETURN_IF_ERROR(backend_.upload(images_, images_host, B * 3 * c.image_size * c.image_size * sizeof(float)));
  last_B_ = B;
  RA_RETURN_IF_ERROR(stage_target(target, B));
  auto compute = [&]() -> Status {
    RA_RETURN_IF_ERROR(forward_compute(B, true));
    RA_RETURN_IF_ERROR(backward_compute(target));
    if (trainable_numel_ == 0) return Status::Ok();
    if (clip) {
      // Where the scalars keep grad_scale: the update reads it after this writes it.
      float* grad_scale = adamw ? &static_cast<AdamWScalars*>(update_scalars_)->grad_scale
                                : &static_cast<SgdScalars*>(update_scalars_)->grad_scale;
      RA_RETURN_IF_ERROR(backend_.sum_squares(grad_, trainable_numel_, grad_sum_squares_));
      RA_RETURN_IF_ERROR(backend_.clip_grad_scale(grad_sum_squares_, pre_scale, update.clip_max_norm, grad_scale));
    }
    RA_RETURN_IF_ERROR(update_compute(adamw));
    return backend_.fill(grad_, trainable_numel_, 0.0f);
  };
  if (graphs_ && !graphs_unavailable_) {
    // What a recording bakes in by value: everything else it reads from backend memory.
    const std::vector<double> key = {static_cast<double>(B), adamw ? 1.0 : 0.0,
                                     static_cast<double>(job_count_), static_cast<double>(job_total_),
                                     update.clip_max_norm, pre_scale, target.labels ? 1.0 : 0.0,
                                     target.smoothing};
    RA_RETURN_IF_ERROR(run_recorded(step_recording_, key, compute));
  } else {
    RA_RETURN_IF_ERROR(compute());
  }
  if (patch_embed_.w->trainable) bf16_stale_ = true;  // the backbone trained: new masters
  RA_RETURN_IF_ERROR(backend_.download(loss_host, loss_, sizeof(float)));
  if (logits_host)
    RA_RETURN_IF_ERROR(backend_.download(logits_host, logits_, B * c.num_classes * sizeof(float)));
  if (grad_norm_host) {
    double sum = 0;
    if (clip && trainable_numel_) RA_RETURN_IF_ERROR(backend_.download(&sum, grad_sum_squares_, sizeof(double)));
    *grad_norm_host = std::sqrt(sum) * pre_scale;
  }
  return Status::Ok();
}

// ---- the fold --------------------------------------------------------------------------------

Status ViT::fold() {
  const ViTConfig& c = config_;
  if (!c.adapter_attn()) return Status::Ok();
  const AdapterConfig& a = c.adapter;
  for (int64_t i = 0; i < c.depth; ++i) {
    const Block& k = blocks_[i];
    const Adapter* adapters[2] = {&k.adapter_attn, &k.adapter_mlp};
    const Linear* targets[2] = {&k.qkv, &k.fc1};
    for (int j = 0; j < 2; ++j) {
      const Adapter& p = *adapters[j];
      if (!p.A) continue;
      const Linear& l = *targets[j];
      RA_RETURN_IF_ERROR(backend_.adapter_fold(l.w->data, l.b->data, p.A->data, p.a->data, p.Bw->data,
                                               p.b->data, l.w->shape[0], c.width, a.hidden, a.groups,
                                               a.scale));
    }
  }
  // The adapters are gone: rebuild the parameter list without them and move every value over.
  std::vector<Param> previous = params_;
  config_.adapter.placement = Placement::kNone;
  build_params();
  std::unordered_map<std::string, const Param*> by_name;
  for (const Param& p : previous) by_name[p.name] = &p;
  for (Param& p : params_) p.data = by_name.at(p.name)->data;
  return layout(true);
}

}  // namespace repadapter
