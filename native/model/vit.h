// The Vision Transformer with RepAdapter, composed once over the Backend interface.
//
// Parameters live in two flat buffers, frozen and trainable, with one flat gradient buffer that
// mirrors the trainable one (so an optimizer step is one fused call over it). Activations live
// in one arena planned per (batch size, what backward needs); nothing is allocated per step.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../core/backend.h"
#include "config.h"
#include "layers.h"

namespace repadapter {

enum class Role { kBackbone, kNorm, kAdapter, kHead };

struct Param {
  std::string name;            // timm / official RepAdapter name
  std::vector<int64_t> shape;  // as PyTorch stores it
  Role role;
  int64_t numel = 0;
  bool trainable = false;
  int64_t offset = 0;          // in the frozen or the trainable buffer, in floats
  float* data = nullptr;
  float* grad = nullptr;       // null when frozen
};

struct Target {
  const int32_t* labels = nullptr;        // [B], host memory
  const float* soft_targets = nullptr;    // [B, C], host memory
  float smoothing = 0.0f;
};

// One optimizer update as train_step applies it: AdamW or SGD over ranges of the flat trainable
// buffer, after clipping the gradient to a global norm where clip_max_norm > 0.
struct OptimizerStep {
  enum class Kind { kAdamW, kSgd } kind = Kind::kAdamW;
  std::vector<UpdateRange> ranges;
  AdamWStep adamw;
  SgdStep sgd;
  double clip_max_norm = 0;
};

class ViT {
 public:
  ViT(Backend& backend, const ViTConfig& config);
  ~ViT();
  ViT(const ViT&) = delete;
  ViT& operator=(const ViT&) = delete;

  // Validates the config and initialises: timm's init for the backbone and head, the paper's for
  // adapters (A xavier-uniform, a, B, b zero: a new adapter is the identity).
  static Status Create(Backend& backend, const ViTConfig& config, uint64_t seed,
                       std::unique_ptr<ViT>* out);

  const ViTConfig& config() const { return config_; }
  Backend& backend() { return backend_; }
  const std::vector<Param>& params() const { return params_; }
  Param* find(const std::string& name);
  int64_t trainable_count() const { return trainable_numel_; }

  Status set_trainable(Trainable mode);

  // Compute precision of the backbone's Linears (patch embedding, qkv, proj, fc1, fc2): float32,
  // or bf16 products of bf16 copies of those weights with float32 accumulation. Parameters,
  // gradients, optimizer state and every other op stay float32 (the master copies); the bf16
  // copies are remade from them whenever they change.
  Status set_compute_dtype(DType dtype);
  DType compute_dtype() const { return compute_dtype_; }
  // Eval forwards and train_step as recorded graphs (CUDA graphs), where the backend has them:
  // per shape, the first call runs the ops, the second records them, every later one replays the
  // recording with one call. Anything that moves a buffer (a new batch size, set_trainable, fold,
  // a dtype change) drops the recordings. Off by default; no effect where the backend has none.
  void set_graphs(bool on);
  bool graphs() const { return graphs_; }
  // Activation memory for compute: backward recomputes each block's GELU input (fc1 of the norm
  // or adapter output) instead of keeping it — the largest kept activation (8 of ~26 bytes per
  // token and width unit per block in bf16, 16 of ~44 in float32) for one more fc1 product per
  // block (~15% more FLOPs in frozen-backbone training). Same numbers either way. Off by default.
  void set_recompute_mlp(bool on);
  bool recompute_mlp() const { return recompute_mlp_; }
  // Writes a parameter's values from host memory.
  Status write_param(const Param& p, const float* host);
  void set_seed(uint64_t seed) { seed_ = seed; }
  uint64_t seed() const { return seed_; }
  uint64_t step() const { return step_; }
  void set_step(uint64_t step) { step_ = step; }

  // images_host [B,3,S,S] → logits_host [B,C]. train: dropout and drop path on, activations
  // kept for backward (and, with want_input_grad, for the image gradient too).
  Status forward(const float* images_host, int64_t B, bool train, bool want_input_grad,
                 float* logits_host);
  // Loss of the last training forward against target; accumulates gradients into the
  // trainable gradient buffer (and the image gradient, if asked for at forward).
  Status backward(const Target& target, float* loss_host);
  Status zero_grad();
  // d loss / d images [B,3,S,S] of the last backward.
  Status input_grad(float* host) const;

  // ---- optimizer ------------------------------------------------------------------------------
  // One update over ranges of the flat trainable buffer (offsets and sizes in floats, as
  // Param::offset), each with its own learning rate and weight decay. The state (Adam's m and v,
  // or SGD's momentum) lives beside the buffer and is dropped when the trainable set changes.
  using UpdateRange = repadapter::UpdateRange;
  Status adamw_step(const std::vector<UpdateRange>& ranges, AdamWStep hyper);
  Status sgd_step(const std::vector<UpdateRange>& ranges, SgdStep hyper);
  // Σ grad² over the trainable buffer, for clipping by global norm.
  Status grad_sum_squares(double* out);
  // Optimizer state slot k (0: m or momentum, 1: v), trainable_count() floats; null if none yet.
  float* optimizer_state(int k) { return k == 0 ? state0_ : k == 1 ? state1_ : nullptr; }
  Status ensure_optimizer_state(int slots);

  // A whole training step in one call: a training forward of images_host [B,3,S,S], the loss
  // against target and its backward, the optimizer update, and zeroed gradients — exactly
  // forward, backward, adamw_step / sgd_step (after clipping) and zero_grad in sequence. With
  // graphs on (set_graphs), the step is recorded once and every later step with the same shape
  // replays it in one launch: every per-step value (images, labels, dropout key, drop-path
  // masks, learning rates, Adam's bias corrections, the clipping) is written to backend memory
  // first. Writes the loss, the logits (may be null) and, when clipping, the global gradient norm
  // before clipping (as optimizer code reports it) to host memory.
  Status train_step(const float* images_host, int64_t B, const Target& target,
                    const OptimizerStep& update, float* loss_host, float* logits_host,
                    double* grad_norm_host);

  // Structural re-parameterisation: every adapter into its qkv / fc1; afterwards the model is a
  // plain ViT with placement none.
  Status fold();

 private:
  struct Linear { Param* w = nullptr; Param* b = nullptr; const uint16_t* w_bf16 = nullptr; };
  struct Norm { Param* w = nullptr; Param* b = nullptr; };
  struct Adapter { Param* A = nullptr; Param* a = nullptr; Param* Bw = nullptr; Param* b = nullptr; };
  struct Block {
    Norm norm1, norm2;
    Adapter adapter_attn, adapter_mlp;  // A == nullptr when absent
    Linear qkv, proj, fc1, fc2;
  };
  // Per-block activations; pointers into the arena. Entries marked "shared" point to one buffer
  // reused by every block when backward does not need them.
  struct Saved {
    float *x_in, *mean1, *rstd1, *a1, *z1, *u1, *attn_saved, *o;  // attn_saved: what the backend keeps for attention_backward
    void* qkv;  // in the compute dtype: float32, or bf16 (the backend's attention reads it so)
    float *x_mid, *mean2, *rstd2, *a2, *z2, *u2, *h, *g;
    uint16_t* h_bf16;  // GELU's input for backward, in bf16 compute (then h is null)
    uint16_t* g_bf16;  // GELU's output in bf16, where the MLP's activations are bf16 (then g is null)
    float *keep1, *keep2;
  };

  void build_params();
  void bind_layers();
  Status layout(bool keep_values);
  Status init_params(uint64_t seed);
  Status plan(int64_t B, bool train, bool keep, bool want_input_grad);
  void free_buffers();

  LinearRef ref(const Linear& l) const;
  std::vector<Linear*> backbone_linears();
  Status refresh_bf16();
  // Where the activations a frozen backbone Linear reads (attention's output, the MLP's) and the
  // gradients it returns are handed over in bf16: bf16 compute, and the backbone frozen (it
  // trains only with everything; a training Linear's weight gradient reads its input in
  // float32). The Linear's bf16 product rounds them anyway, so no number changes but fc1's
  // output before GELU, which autocast rounds as well.
  bool bf16_activations() const {
    return compute_dtype_ == DType::kBF16 && config_.trainable != Trainable::kAll;
  }
  // A training step's random draws, written to backend memory before its ops run: the dropout
  // key and the drop-path keep scales.
  Status stage_draws(int64_t B);
  // Everything of forward() between uploading the images and downloading the logits.
  Status forward_compute(int64_t B, bool train);
  Status check_target(const Target& target, int64_t B) const;
  Status stage_target(const Target& target, int64_t B);
  // Everything of backward() between uploading the target and downloading the loss.
  Status backward_compute(const Target& target);
  // The step buffer in backend memory, with room for `jobs` update jobs.
  Status ensure_step_buffer(int64_t jobs);
  // The update's jobs and scalars into it (exactly one of adamw and sgd).
  Status stage_update(const std::vector<UpdateRange>& ranges, const AdamWStep* adamw,
                      const SgdStep* sgd);
  Status update_compute(bool adamw);
  Status recompute_gelu_input(int64_t i, int64_t M);
  struct NormOutput {  // one of the two
    const float* f32 = nullptr;
    const uint16_t* bf16 = nullptr;
  };
  Status norm_and_adapter(int64_t i, int which, int64_t M, bool train, bool stats, NormOutput* out);
  // A recorded graph of one computation, for the shape `key` (see run_recorded).
  struct Recording {
    void* graph = nullptr;
    bool warm = false;  // buffers and plans for `key` exist from an eager run
    std::vector<double> key;
  };
  // compute() run eagerly, recorded, or replayed, as set_graphs describes.
  Status run_recorded(Recording& r, const std::vector<double>& key,
                      const std::function<Status()>& compute);
  void drop_graph();
  AdapterRef ref(const Adapter& a) const;
  DropoutDraw dropout_draw(int64_t block, int which) const;

  Backend& backend_;
  ViTConfig config_;
  std::vector<Param> params_;
  Param *cls_ = nullptr, *pos_ = nullptr;
  Linear patch_embed_, head_;
  Norm norm_;
  std::vector<Block> blocks_;

  float* frozen_ = nullptr;
  float* trainable_ = nullptr;
  float* grad_ = nullptr;
  float* state0_ = nullptr;
  float* state1_ = nullptr;
  int64_t trainable_numel_ = 0;
  int64_t frozen_numel_ = 0;

  DType compute_dtype_ = DType::kF32;
  uint16_t* bf16_weights_ = nullptr;  // the bf16 copies, one buffer
  bool bf16_stale_ = true;             // the masters changed since the copies were made

  bool recompute_mlp_ = false;
  float* recompute_fc1_out_ = nullptr;  // fc1's float32 output, recomputed (where fc1 writes float32)

  // The recordings (set_graphs) of the eval forward and of train_step.
  bool graphs_ = false, graphs_unavailable_ = false;
  Recording eval_recording_, step_recording_;

  // Per-step values in backend memory (what the ops read there; backend.h), one buffer.
  void* step_buffer_ = nullptr;
  uint64_t* step_key_ = nullptr;         // mix64(step_): the dropout masks' key
  double* grad_sum_squares_ = nullptr;   // Σ grad², for clipping and the reported norm
  void* update_scalars_ = nullptr;       // AdamWScalars or SgdScalars
  UpdateJob* update_jobs_ = nullptr;
  int64_t job_capacity_ = 0, job_count_ = 0, job_total_ = 0;

  // Activation arena and the plan it was made for.
  void* arena_ = nullptr;
  size_t arena_bytes_ = 0;
  struct Plan { int64_t B = -1; bool train = false, keep = false, input_grad = false; } plan_;
  float* keep_scales_ = nullptr;  // every block's drop-path keep scales, [depth, 2, B]
  float *images_ = nullptr, *patches_ = nullptr, *embedded_ = nullptr, *feat_ = nullptr,
        *logits_ = nullptr, *final_mean_ = nullptr, *final_rstd_ = nullptr, *x_final_ = nullptr,
        *branch_ = nullptr;
  std::vector<Saved> saved_;
  // Backward scratch.
  float *dx_ = nullptr, *d_branch_ = nullptr, *d_wide_ = nullptr, *d_u_ = nullptr, *d_z_ = nullptr,
        *d_o_ = nullptr, *d_feat_ = nullptr, *d_logits_ = nullptr, *d_embedded_ = nullptr,
        *d_patches_ = nullptr, *d_images_ = nullptr, *loss_ = nullptr, *soft_ = nullptr;
  int32_t* labels_ = nullptr;

  uint64_t seed_ = 0;
  uint64_t step_ = 0;          // advances once per training forward: fresh dropout masks
  bool have_forward_ = false;  // a training forward whose activations backward may use
  bool have_input_grad_ = false;
  int64_t last_B_ = 0;
};

}  // namespace repadapter
