// Speed and memory of the ViT with RepAdapter on one backend: our side of the GPU benchmark,
// measured beside PyTorch by bench/gpu-check.sh (bench/pytorch_bench.py --device cuda runs the
// same rows, bench/gpu_compare.py pairs them by id).
//
//   cuda_bench [--device cuda|cpu] [--config tiny|small|vit_b16] [--batch B] [--infer-batch B]
//              [--dtypes bf16,f32] [--placements attn,block] [--kinds train,infer]
//              [--warmup W] [--repeats R] [--max-seconds T] [--out FILE] [--lib-dir DIR]
//
// Defaults: cuda, vit_b16 (vit_base_patch16_224), batch 64, inference batch 256, both dtypes,
// both placements, warm-up 2, up to 20 timed steps or 2 s per row (at least 3 steps).
// `--device cpu --config tiny --batch 4 --infer-batch 8` is the smoke run for a machine without
// a GPU (the same code over the CPU backend).
//
// Rows, ids METHOD/MODEL/bBATCH/DTYPE (DTYPE f32 or bf16: ViT::set_compute_dtype; bf16 products
// for the backbone's Linears, everything else float32):
//   repadapter-attn, repadapter-block   one training step at --batch (ViT::train_step): forward
//       in training mode (adapter dropout 0.1 on), backward (cross-entropy against integer
//       labels), AdamW (lr 1e-3, weight decay 1e-4) over the whole trainable buffer: adapters +
//       head, the backbone frozen; zeroed gradients. Adapters: hidden 8, groups 2, scale 1
//       (bench/pytorch_bench.py's).
//   repadapter-attn-graph, repadapter-block-graph   the same steps replayed as one CUDA graph
//       each (ViT::set_graphs); bench/gpu_compare.py sets them beside the same PyTorch rows.
//   repadapter-attn-recompute-graph, …   graphed, with backward recomputing each block's GELU
//       input instead of keeping it (ViT::set_recompute_mlp): less memory, one more fc1 product.
//   infer-plain            inference forward at --infer-batch, a ViT without adapters
//   infer-unfolded-attn    the attn model (after its training rows) with its adapters in place
//   infer-folded           the same model after fold(): a plain ViT again
//   infer-folded-graph     the same, each forward replayed as a CUDA graph (no PyTorch row)
// Models are built in this order, each destroyed before the next: block (its training rows),
// attn (training, unfolded, fold, folded), plain. Adapters get random non-zero values.
//
// Timing: each step is bracketed by Backend::synchronize and read off a steady clock; warm-up
// steps first, then timed steps until --repeats or --max-seconds (at least 3). A step is what a
// user's call does: forward uploads the images from host memory and downloads the logits,
// backward downloads the loss. uploadMs is that image upload alone (the same bytes through
// Backend::upload, median of 5), so a reader can see the step without it.
// FLOPs, per image, counted from the config (matrix products only: Linears, attention's two
// products, adapters, head): infer = forward; train = forward + the backward of a frozen
// backbone (input gradients of every Linear but the patch embedding, attention's four products,
// adapter and head weight gradients). ViT-B/16: 35.2 and 71.6 GFLOP.
//
// Memory (cuda): repadapter_cuda.so's repadapter_cuda_memory_stats (memory.cu).
//   peakAllocatedMB  high-water mark of the bytes held in Backend::allocate's allocations during
//                    the row (parameters, gradients, optimizer state, bf16 weight copies,
//                    activation arena), reset at the row's start
//   deviceUsedMB     device memory in use after the row's timed steps (total − free from
//                    cudaMemGetInfo) minus the same before the backend was created: everything
//                    the backend holds, its cuBLASLt workspace and scratch and cudaMalloc's
//                    rounding included. The model allocates nothing per step, so this is the
//                    row's peak; scratch only grows, so it may include what an earlier row needed
//                    (the training rows come first).
// Memory (cpu): peakRssMB, the process's peak RSS so far (getrusage).
//
// JSON (--out, default cuda_bench.json), schema "repadapter-cuda-bench/1":
//   { schema, implementation: "repadapter", createdAt, device, backend, bf16Native,
//     model, config: {imageSize, patchSize, width, depth, heads, mlpHidden, numClasses,
//                     adapter: {hidden, groups, scale, dropout}},
//     settings: {batch, inferBatch, warmup, repeats, maxSeconds, lr, weightDecay},
//     flopsPerImage: {train, infer},
//     memory: {source, baselineUsedMB, totalMB} (cuda only),
//     rows: [{ id, method, kind: "train"|"infer", placement, dtype: "f32"|"bf16", batch,
//              status: "ok"|"error", note?, samplesMs: [..], stepMs: {median, min, max, q1, q3,
//              iqr, mean}, imagesPerSec, tflops (FLOPs over the median step), uploadMs,
//              peakAllocatedMB?, deviceUsedMB?, peakRssMB }] }
// stepMs has the shape bench/pytorch_bench.py writes.
// Exit: 0 every row ran, 1 a row failed, 2 the CUDA backend is unavailable, 3 bad usage.
#include <dlfcn.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "../cpu/cpu_backend.h"
#include "../model/vit.h"
#include "check_util.h"

using namespace repadapter;

namespace {

using Clock = std::chrono::steady_clock;
constexpr double kMB = 1024.0 * 1024.0;

struct Options {
  Device device = Device::kCUDA;
  std::string config = "vit_b16";
  int64_t batch = 64, infer_batch = 256;
  std::vector<DType> dtypes = {DType::kBF16, DType::kF32};
  std::vector<Placement> placements = {Placement::kAttn, Placement::kBlock};
  bool train = true, infer = true;
  int warmup = 2, repeats = 20;
  double max_seconds = 2.0;
  std::string out = "cuda_bench.json";
};

// The config presets of cuda_model_check, named as timm names them where they are timm models.
bool preset(const std::string& name, ViTConfig* c, std::string* model) {
  if (name == "tiny") {
    c->image_size = 32; c->patch_size = 8; c->width = 64; c->depth = 2; c->heads = 4;
    c->mlp_hidden = 128; c->num_classes = 10;
    *model = "tiny";
  } else if (name == "small") {
    c->image_size = 64; c->patch_size = 16; c->width = 192; c->depth = 4; c->heads = 3;
    c->mlp_hidden = 768; c->num_classes = 100;
    *model = "small";
  } else if (name == "vit_b16") {
    c->image_size = 224; c->patch_size = 16; c->width = 768; c->depth = 12; c->heads = 12;
    c->mlp_hidden = 3072; c->num_classes = 1000;
    *model = "vit_base_patch16_224";
  } else {
    return false;
  }
  c->adapter.hidden = 8;
  c->adapter.groups = 2;
  c->adapter.scale = 1.0f;
  c->adapter.dropout = 0.1f;
  c->drop_path = 0.0f;  // timm's default, as the PyTorch side builds it
  c->trainable = Trainable::kAdapters;
  return true;
}

// FLOPs per image of the matrix products (see the header).
struct Flops { double infer = 0, train = 0; };
Flops count_flops(const ViTConfig& c, Placement placement) {
  const double N = c.tokens(), P = c.patches(), D = c.width, F = c.mlp_hidden, Q = c.patch_dim();
  const double R = c.adapter.hidden, G = c.adapter.groups, C = c.num_classes;
  const double adapters = placement == Placement::kBlock ? 2 : placement == Placement::kAttn ? 1 : 0;
  const double block_linear = N * (3 * D * D + D * D + D * F + F * D);  // multiply-adds
  const double attention = 2 * N * N * D;                               // QKᵀ and PV
  const double adapter = adapters * N * (D * R + R * D / G);
  const double patch = P * Q * D, head = D * C;
  Flops f;
  f.infer = 2 * (patch + c.depth * (block_linear + attention + adapter) + head);
  const double backward = 2 * (c.depth * (block_linear + 2 * attention + 2 * adapter) + 2 * head);
  f.train = f.infer + backward;
  return f;
}

struct Spread { double median = 0, min = 0, max = 0, q1 = 0, q3 = 0, iqr = 0, mean = 0; };
double quantile(const std::vector<double>& s, double q) {
  const double pos = (s.size() - 1) * q;
  const size_t lo = static_cast<size_t>(std::floor(pos)), hi = static_cast<size_t>(std::ceil(pos));
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}
Spread spread(std::vector<double> s) {
  Spread r;
  if (s.empty()) return r;
  std::sort(s.begin(), s.end());
  r.median = quantile(s, 0.5);
  r.min = s.front();
  r.max = s.back();
  r.q1 = quantile(s, 0.25);
  r.q3 = quantile(s, 0.75);
  r.iqr = r.q3 - r.q1;
  double sum = 0;
  for (double v : s) sum += v;
  r.mean = sum / s.size();
  return r;
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024.0;  // KiB on Linux
}

// repadapter_cuda_memory_stats from the loaded library, or null (CPU, or an older library).
using MemoryStatsFn = int (*)(uint64_t*, int);
struct DeviceMemory {
  MemoryStatsFn fn = nullptr;
  double baseline_used = 0, total = 0;  // bytes
  // out: {held, peak, used} in bytes; false when unavailable.
  bool read(bool reset_peak, double* held, double* peak, double* used) const {
    if (!fn) return false;
    uint64_t v[4] = {0, 0, 0, 0};
    if (fn(v, reset_peak ? 1 : 0) != 0) return false;
    *held = static_cast<double>(v[0]);
    *peak = static_cast<double>(v[1]);
    *used = static_cast<double>(v[3] - v[2]);
    return true;
  }
};

struct Row {
  std::string id, method, kind, placement, dtype;
  int64_t batch = 0;
  std::string status = "ok", note;
  std::vector<double> samples;
  Spread step;
  double images_per_sec = 0, tflops = 0, upload_ms = 0;
  double peak_allocated_mb = -1, device_used_mb = -1, peak_rss_mb = 0;
};

class Bench {
 public:
  Bench(Backend& be, const Options& o, const ViTConfig& base, const std::string& model,
        const DeviceMemory& mem)
      : be_(be), o_(o), base_(base), model_(model), mem_(mem) {}

  Status prepare() {
    const int64_t S = base_.image_size, max_b = std::max(o_.batch, o_.infer_batch);
    check::Gen g(2024);
    images_ = g.uniform(max_b * 3 * S * S, -1.0f, 1.0f);
    labels_.resize(o_.batch);
    for (auto& l : labels_) l = static_cast<int32_t>(g.integer(base_.num_classes));
    logits_.resize(max_b * base_.num_classes);
    for (int64_t b : {o_.batch, o_.infer_batch}) RA_RETURN_IF_ERROR(time_upload(b, b == o_.batch ? &upload_train_ms_ : &upload_infer_ms_));
    return Status::Ok();
  }

  void run() {
    // Training first (see the header on scratch), block before attn: the attn model goes on to
    // the inference rows.
    if (o_.train && has(Placement::kBlock)) {
      std::unique_ptr<ViT> m;
      if (create(Placement::kBlock, &m, "repadapter-block"))
        for (DType d : o_.dtypes) train_rows(*m, "repadapter-block", "block", d);
    }
    if ((o_.train && has(Placement::kAttn)) || o_.infer) {
      std::unique_ptr<ViT> m;
      const char* what = o_.train && has(Placement::kAttn) ? "repadapter-attn" : "infer-unfolded-attn";
      if (create(Placement::kAttn, &m, what)) {
        if (o_.train && has(Placement::kAttn))
          for (DType d : o_.dtypes) train_rows(*m, "repadapter-attn", "attn", d);
        if (o_.infer) {
          for (DType d : o_.dtypes) infer_row(*m, "infer-unfolded-attn", "attn", d);
          const Status st = m->fold();
          for (DType d : o_.dtypes) {
            if (st.ok()) infer_row(*m, "infer-folded", "attn", d);
            else failed_row("infer-folded", "infer", "attn", d, o_.infer_batch, "fold: " + st.message());
          }
          // The same folded forward replayed as a CUDA graph (ViT::set_graphs); the first two
          // forwards (eager, then recording) fall in the warm-up.
          if (st.ok()) {
            m->set_graphs(true);
            for (DType d : o_.dtypes) infer_row(*m, "infer-folded-graph", "attn", d);
            m->set_graphs(false);
          }
        }
      }
    }
    if (o_.infer) {
      std::unique_ptr<ViT> m;
      if (create(Placement::kNone, &m, "infer-plain"))
        for (DType d : o_.dtypes) infer_row(*m, "infer-plain", "none", d);
    }
  }

  const std::vector<Row>& rows() const { return rows_; }
  int failed() const {
    int n = 0;
    for (const Row& r : rows_) n += r.status != "ok";
    return n;
  }

 private:
  bool has(Placement p) const {
    return std::find(o_.placements.begin(), o_.placements.end(), p) != o_.placements.end();
  }
  static const char* dtype_name(DType d) { return d == DType::kBF16 ? "bf16" : "f32"; }
  std::string row_id(const std::string& method, DType d, int64_t B) const {
    return method + "/" + model_ + "/b" + std::to_string(B) + "/" + dtype_name(d);
  }

  Status time_upload(int64_t B, double* ms) {
    const size_t bytes = static_cast<size_t>(B * 3 * base_.image_size * base_.image_size) * sizeof(float);
    void* dst = nullptr;
    RA_RETURN_IF_ERROR(be_.allocate(bytes, &dst));
    std::vector<double> t;
    Status st;
    for (int i = 0; i < 6 && st.ok(); ++i) {
      const auto t0 = Clock::now();
      st = be_.upload(dst, images_.data(), bytes);
      if (st.ok()) st = be_.synchronize();
      if (i > 0) t.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    be_.release(dst);
    *ms = spread(t).median;
    return st;
  }

  // A row's identity: what every row, measured or failed, starts with.
  Row new_row(const std::string& method, const std::string& kind, const std::string& placement,
              DType d, int64_t B) const {
    Row r;
    r.id = row_id(method, d, B);
    r.method = method;
    r.kind = kind;
    r.placement = placement;
    r.dtype = dtype_name(d);
    r.batch = B;
    return r;
  }

  void failed_row(const std::string& method, const std::string& kind, const std::string& placement,
                  DType d, int64_t B, const std::string& why) {
    Row r = new_row(method, kind, placement, d, B);
    r.status = "error";
    r.note = why;
    r.peak_rss_mb = peak_rss_mb();
    std::printf("%-46s error: %s\n", r.id.c_str(), why.c_str());
    std::fflush(stdout);
    rows_.push_back(r);
  }

  bool create(Placement placement, std::unique_ptr<ViT>* out, const std::string& first_method) {
    ViTConfig c = base_;
    c.adapter.placement = placement;
    const auto t0 = Clock::now();
    Status st = ViT::Create(be_, c, 7, out);
    if (st.ok() && placement != Placement::kNone) {
      // Random non-zero adapters (a new one is the identity: nothing may be optimised away).
      check::Gen g(99);
      for (const Param& p : (*out)->params()) {
        if (p.role != Role::kAdapter || p.name.find("conv_A.weight") != std::string::npos) continue;
        const std::vector<float> v = g.uniform(p.numel, -0.02f, 0.02f);
        st = (*out)->write_param(p, v.data());
        if (!st.ok()) break;
      }
    }
    if (st.ok()) {
      std::printf("(model with placement %s made in %.1f s)\n", placement_name(placement),
                  std::chrono::duration<double>(Clock::now() - t0).count());
      return true;
    }
    out->reset();
    for (DType d : o_.dtypes) {
      const bool train = first_method.rfind("repadapter-", 0) == 0;
      failed_row(first_method, train ? "train" : "infer", placement_name(placement), d,
                 train ? o_.batch : o_.infer_batch, "create: " + st.message());
    }
    return false;
  }

  // Warm-up, then timed steps; fills r.samples and the memory figures.
  void measure(Row& r, const std::function<Status()>& step) {
    double held = 0, peak = 0, used = 0;
    mem_.read(true, &held, &peak, &used);  // the row's high-water mark starts here
    Status st;
    for (int i = 0; i < o_.warmup && st.ok(); ++i) st = step();
    if (st.ok()) st = be_.synchronize();
    const auto start = Clock::now();
    while (st.ok()) {
      const auto t0 = Clock::now();
      st = step();
      if (st.ok()) st = be_.synchronize();
      if (!st.ok()) break;
      const auto t1 = Clock::now();
      r.samples.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      const double total_s = std::chrono::duration<double>(t1 - start).count();
      const int n = static_cast<int>(r.samples.size());
      if (n >= o_.repeats || (n >= 3 && total_s >= o_.max_seconds)) break;
    }
    r.peak_rss_mb = peak_rss_mb();
    if (mem_.read(false, &held, &peak, &used)) {
      r.peak_allocated_mb = peak / kMB;
      r.device_used_mb = (used - mem_.baseline_used) / kMB;
    }
    if (!st.ok()) {
      r.status = "error";
      r.note = st.message();
      return;
    }
    r.step = spread(r.samples);
    r.images_per_sec = r.batch * 1000.0 / r.step.median;
  }

  void finish(Row& r, double flops_per_image) {
    if (r.status == "ok") r.tflops = flops_per_image * r.batch / (r.step.median * 1e-3) / 1e12;
    if (r.status == "ok")
      std::printf("%-46s %9.3f ms  [%8.3f – %8.3f]  %10.1f img/s  %7.2f TFLOP/s  upload %7.3f ms",
                  r.id.c_str(), r.step.median, r.step.min, r.step.max, r.images_per_sec, r.tflops, r.upload_ms);
    else
      std::printf("%-46s error: %s", r.id.c_str(), r.note.c_str());
    if (r.device_used_mb >= 0)
      std::printf("  alloc %8.1f MB  used %8.1f MB\n", r.peak_allocated_mb, r.device_used_mb);
    else
      std::printf("  peak RSS %8.1f MB\n", r.peak_rss_mb);
    std::fflush(stdout);
    rows_.push_back(r);
  }

  // One ViT::train_step per timed step (what Optimizer.trainStep and the Trainer call); with
  // graphs, the step is recorded at the second call and replayed from then on (both in warm-up).
  void train_rows(ViT& m, const std::string& method, const std::string& placement, DType d) {
    // Eager, graphed, and graphed with the GELU input recomputed in backward (less memory).
    for (int variant = 0; variant < 3; ++variant) {
      const bool graphs = variant > 0, recompute = variant == 2;
      const std::string name = method + (recompute ? "-recompute" : "") + (graphs ? "-graph" : "");
      m.set_recompute_mlp(recompute);
      Row r = new_row(name, "train", placement, d, o_.batch);
      r.upload_ms = upload_train_ms_;
      Status st = m.set_compute_dtype(d);
      if (!st.ok()) return failed_row(name, "train", placement, d, o_.batch, st.message());
      m.set_graphs(graphs);
      OptimizerStep update;
      update.ranges = {{0, m.trainable_count(), 1e-3f, 1e-4f}};
      Target target;
      target.labels = labels_.data();
      int64_t step = 0;
      measure(r, [&]() -> Status {
        float loss = 0;
        update.adamw.step = ++step;
        RA_RETURN_IF_ERROR(m.train_step(images_.data(), o_.batch, target, update, &loss, nullptr, nullptr));
        if (!std::isfinite(loss)) return Internal("the loss is not finite: " + std::to_string(loss));
        return Status::Ok();
      });
      m.set_graphs(false);
      m.set_recompute_mlp(false);
      // Recomputation adds one fc1 product per block to the work; the row's FLOPs stay the
      // model's (what a step must do), so its TFLOP/s is comparable across rows.
      finish(r, count_flops(m.config(), m.config().adapter.placement).train);
    }
  }

  void infer_row(ViT& m, const std::string& method, const std::string& placement, DType d) {
    Row r = new_row(method, "infer", placement, d, o_.infer_batch);
    r.upload_ms = upload_infer_ms_;
    Status st = m.set_compute_dtype(d);
    if (!st.ok()) return failed_row(method, "infer", placement, d, o_.infer_batch, st.message());
    measure(r, [&]() -> Status {
      RA_RETURN_IF_ERROR(m.forward(images_.data(), o_.infer_batch, false, false, logits_.data()));
      for (int64_t i = 0; i < std::min<int64_t>(4, o_.infer_batch * base_.num_classes); ++i)
        if (!std::isfinite(logits_[i])) return Internal("the logits are not finite");
      return Status::Ok();
    });
    // The folded model is a plain ViT: its FLOPs are the plain one's.
    finish(r, count_flops(m.config(), m.config().adapter.placement).infer);
  }

  Backend& be_;
  const Options& o_;
  ViTConfig base_;
  std::string model_;
  const DeviceMemory& mem_;
  std::vector<float> images_, logits_;
  std::vector<int32_t> labels_;
  double upload_train_ms_ = 0, upload_infer_ms_ = 0;
  std::vector<Row> rows_;
};

// ---- JSON ----------------------------------------------------------------------------------------
std::string quote(const std::string& s) {
  std::string o = "\"";
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      o += '\\';
      o += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else {
      o += ch;
    }
  }
  return o + "\"";
}
std::string num(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string to_json(const Options& o, const ViTConfig& c, const std::string& model, Backend& be,
                     const DeviceMemory& mem, const std::vector<Row>& rows) {
  std::ostringstream j;
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  const Flops f = count_flops(c, Placement::kAttn);
  j << "{\n  \"schema\": \"repadapter-cuda-bench/1\",\n  \"implementation\": \"repadapter\",\n"
    << "  \"createdAt\": " << quote(stamp) << ",\n  \"device\": " << quote(o.device == Device::kCUDA ? "cuda" : "cpu")
    << ",\n  \"backend\": " << quote(be.name()) << ",\n  \"bf16Native\": " << (be.bf16_native() ? "true" : "false")
    << ",\n  \"model\": " << quote(model) << ",\n  \"config\": {\"imageSize\": " << c.image_size
    << ", \"patchSize\": " << c.patch_size << ", \"width\": " << c.width << ", \"depth\": " << c.depth
    << ", \"heads\": " << c.heads << ", \"mlpHidden\": " << c.mlp_hidden << ", \"numClasses\": " << c.num_classes
    << ", \"adapter\": {\"hidden\": " << c.adapter.hidden << ", \"groups\": " << c.adapter.groups
    << ", \"scale\": " << num(c.adapter.scale) << ", \"dropout\": " << num(c.adapter.dropout) << "}},\n"
    << "  \"settings\": {\"batch\": " << o.batch << ", \"inferBatch\": " << o.infer_batch << ", \"warmup\": " << o.warmup
    << ", \"repeats\": " << o.repeats << ", \"maxSeconds\": " << num(o.max_seconds)
    << ", \"lr\": 0.001, \"weightDecay\": 0.0001},\n"
    << "  \"flopsPerImage\": {\"train\": " << num(f.train) << ", \"infer\": " << num(f.infer) << "},\n";
  if (mem.fn)
    j << "  \"memory\": {\"source\": \"repadapter_cuda_memory_stats\", \"baselineUsedMB\": " << num(mem.baseline_used / kMB)
      << ", \"totalMB\": " << num(mem.total / kMB) << "},\n";
  j << "  \"rows\": [";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    j << (i ? ",\n    {" : "\n    {") << "\"id\": " << quote(r.id) << ", \"method\": " << quote(r.method)
      << ", \"kind\": " << quote(r.kind) << ", \"placement\": " << quote(r.placement) << ", \"dtype\": " << quote(r.dtype)
      << ", \"batch\": " << r.batch << ", \"status\": " << quote(r.status);
    if (!r.note.empty()) j << ", \"note\": " << quote(r.note);
    if (r.status == "ok") {
      j << ", \"samplesMs\": [";
      for (size_t k = 0; k < r.samples.size(); ++k) j << (k ? ", " : "") << num(r.samples[k]);
      const Spread& s = r.step;
      j << "], \"stepMs\": {\"median\": " << num(s.median) << ", \"min\": " << num(s.min) << ", \"max\": " << num(s.max)
        << ", \"q1\": " << num(s.q1) << ", \"q3\": " << num(s.q3) << ", \"iqr\": " << num(s.iqr) << ", \"mean\": " << num(s.mean)
        << "}, \"imagesPerSec\": " << num(r.images_per_sec) << ", \"tflops\": " << num(r.tflops);
    }
    j << ", \"uploadMs\": " << num(r.upload_ms);
    if (r.peak_allocated_mb >= 0)
      j << ", \"peakAllocatedMB\": " << num(r.peak_allocated_mb) << ", \"deviceUsedMB\": " << num(r.device_used_mb);
    j << ", \"peakRssMB\": " << num(r.peak_rss_mb) << "}";
  }
  j << "\n  ]\n}\n";
  return j.str();
}

bool split(const std::string& v, std::vector<std::string>* out) {
  out->clear();
  std::stringstream s(v);
  std::string item;
  while (std::getline(s, item, ','))
    if (!item.empty()) out->push_back(item);
  return !out->empty();
}

bool parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) return false;
    const std::string v = argv[++i];
    std::vector<std::string> items;
    if (a == "--device") {
      if (v != "cuda" && v != "cpu") return false;
      o->device = v == "cuda" ? Device::kCUDA : Device::kCPU;
    } else if (a == "--config") {
      o->config = v;
    } else if (a == "--batch") {
      o->batch = std::atoll(v.c_str());
    } else if (a == "--infer-batch") {
      o->infer_batch = std::atoll(v.c_str());
    } else if (a == "--dtypes") {
      if (!split(v, &items)) return false;
      o->dtypes.clear();
      for (const std::string& d : items) {
        if (d == "bf16") o->dtypes.push_back(DType::kBF16);
        else if (d == "f32") o->dtypes.push_back(DType::kF32);
        else return false;
      }
    } else if (a == "--placements") {
      if (!split(v, &items)) return false;
      o->placements.clear();
      for (const std::string& p : items) {
        if (p == "attn") o->placements.push_back(Placement::kAttn);
        else if (p == "block") o->placements.push_back(Placement::kBlock);
        else return false;
      }
    } else if (a == "--kinds") {
      if (!split(v, &items)) return false;
      o->train = std::find(items.begin(), items.end(), "train") != items.end();
      o->infer = std::find(items.begin(), items.end(), "infer") != items.end();
      if (!o->train && !o->infer) return false;
    } else if (a == "--warmup") {
      o->warmup = std::atoi(v.c_str());
    } else if (a == "--repeats") {
      o->repeats = std::atoi(v.c_str());
    } else if (a == "--max-seconds") {
      o->max_seconds = std::atof(v.c_str());
    } else if (a == "--out") {
      o->out = v;
    } else if (a != "--lib-dir") {
      return false;
    }
  }
  return o->batch > 0 && o->infer_batch > 0 && o->warmup >= 0 && o->repeats >= 1 && o->max_seconds >= 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  ViTConfig config;
  std::string model;
  if (!parse(argc, argv, &o) || !preset(o.config, &config, &model)) {
    std::fprintf(stderr,
                 "usage: %s [--device cuda|cpu] [--config tiny|small|vit_b16] [--batch B] [--infer-batch B]\n"
                 "          [--dtypes bf16,f32] [--placements attn,block] [--kinds train,infer]\n"
                 "          [--warmup W] [--repeats R] [--max-seconds T] [--out FILE] [--lib-dir DIR]\n",
                 argv[0]);
    return 3;
  }

  DeviceMemory mem;
  Backend* be = nullptr;
  if (o.device == Device::kCUDA) {
    const std::string lib_dir = check::lib_dir_from_args(argc, argv);
    // Load the library first (get_backend's dlopen then finds it loaded) to read the device's
    // memory in use before the backend exists: the baseline of deviceUsedMB.
    const std::string path = lib_dir + "/" + kCudaLibraryName;
    if (void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) {
      mem.fn = reinterpret_cast<MemoryStatsFn>(dlsym(lib, "repadapter_cuda_memory_stats"));
      double held = 0, peak = 0, used = 0;
      if (mem.fn && mem.read(false, &held, &peak, &used)) {
        mem.baseline_used = used;
        uint64_t v[4];
        mem.fn(v, 0);
        mem.total = static_cast<double>(v[3]);
      } else {
        mem.fn = nullptr;
      }
    }
    be = check::load_cuda_or_report(lib_dir);
    if (!be) return 2;
    if (!mem.fn) std::printf("note: the CUDA library has no repadapter_cuda_memory_stats: no memory figures\n");
  } else {
    be = &cpu_backend();
  }

  const Flops f = count_flops(config, Placement::kAttn);
  std::printf("cuda_bench: %s on %s (bf16 %s), batch %lld, inference batch %lld, warm-up %d, up to %d steps or %.1f s\n"
              "FLOPs per image (attn adapters): train %.4g G, inference %.4g G\n\n",
              model.c_str(), be->name(), be->bf16_native() ? "native" : "emulated", (long long)o.batch,
              (long long)o.infer_batch, o.warmup, o.repeats, o.max_seconds, f.train / 1e9, f.infer / 1e9);
  std::fflush(stdout);

  Bench bench(*be, o, config, model, mem);
  const Status st = bench.prepare();
  if (!st.ok()) {
    std::printf("cuda_bench: preparing the inputs failed: %s\n", st.message().c_str());
    return 1;
  }
  bench.run();

  const std::string json = to_json(o, config, model, *be, mem, bench.rows());
  FILE* out = std::fopen(o.out.c_str(), "w");
  if (!out || std::fwrite(json.data(), 1, json.size(), out) != json.size()) {
    std::printf("cuda_bench: cannot write %s\n", o.out.c_str());
    if (out) std::fclose(out);
    return 1;
  }
  std::fclose(out);
  std::printf("\ncuda_bench: %zu rows, %d failed; wrote %s\n", bench.rows().size(), bench.failed(), o.out.c_str());
  return bench.failed() ? 1 : 0;
}
