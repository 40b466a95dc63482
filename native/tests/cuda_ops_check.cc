// Every op of the CUDA backend against the CPU backend, on the same random inputs.
//
//   cuda_ops_check [--small] [--lib-dir DIR] [--only OP] [--self-test]
//
// Part 1 runs each op of op_names() (native/model/op_checks.cc, forward and backward) at a few
// small shapes and one ViT-B/16-like shape (skipped with --small, e.g. under compute-sanitizer)
// through run_op on both backends. Part 2 calls backend entry points directly for what run_op
// does not reach: gemm with every flag (transposes, batches, strides, alpha, beta, bias,
// unaligned pointers), in float32 and in bf16, convert_to_bf16 (must be bit-identical), dropout
// masks (must be bit-identical), strided LayerNorm, attention without saved state, a bad label,
// overlapping copies, sum_squares.
//
// bf16 tolerances (the Linear with bf16=1, the bf16 gemm cases). Both backends round the same
// operands to bf16 to nearest even and multiply them exactly (a bf16 × bf16 product fits a
// float32), so they differ only in how the K products are summed in float32: order, blocking,
// and the tensor cores' rounding of partial sums (which may truncate). Modelled at the ViT-B
// shapes below (bf16 operands, sums against a float64 reference, relative to the output's
// largest value): a float32 sum in another order differs by ~2e-7; even a float32 accumulator
// that truncates every addition, summing all K = 3072 products one after another (the worst
// order), stays at 1.4e-5, its error growing with K rather than √K. Hence 2e-5 for K up to a few
// hundred and 1e-4 at K = 768…3072. A wrong bf16 path lands far above: leaving A in float32
// gives 1.1e-3…1.6e-3, rounding A by truncation instead of to nearest 2.8e-3…3.9e-3 (forward
// and dx), over ten times the largest tolerance. The Linear's weight and bias gradients are
// float32 products either way and meet these tolerances with room to spare.
//
// Both backends are wrapped in PoisonBackend: outputs an op overwrites are NaN before it runs.
// Prints one table row per output tensor (see check_util.h for the metric).
// --self-test runs the CPU backend against a second CPU backend instead of CUDA: it checks the
// harness itself (inputs, poisoning, comparisons) on a machine without a GPU.
// Exit: 0 all passed, 1 a check failed, 2 the CUDA backend is unavailable here, 3 bad usage.
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "../cpu/cpu_backend.h"
#include "../model/op_checks.h"
#include "check_util.h"
#include "poison_backend.h"

using namespace repadapter;
using namespace repadapter::check;

namespace {

struct Case {
  std::string label;
  OpAttrs attrs;
  HostTensors inputs;
  HostTensors d_outputs;  // empty: forward only
  double tol = 1e-5;
};

std::string label_of(const OpAttrs& attrs) {
  std::string s;
  for (const auto& [k, v] : attrs) {
    if (!s.empty()) s += ",";
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%s=%g", k.c_str(), v);
    s += buf;
  }
  return s.size() > 40 ? s.substr(0, 38) + ".." : s;
}

// Builds one case of op `op` with attrs; the inputs and output gradients follow the op's
// contract in op_checks.cc. Returns false for an op this check does not know.
bool make_case(const std::string& op, const OpAttrs& attrs, double tol, uint64_t seed, Case* out) {
  Gen g(seed);
  auto at = [&](const char* k) -> int64_t {
    auto it = attrs.find(k);
    return it == attrs.end() ? 0 : static_cast<int64_t>(it->second);
  };
  Case c;
  c.attrs = attrs;
  c.tol = tol;
  c.label = label_of(attrs);
  HostTensors& in = c.inputs;
  HostTensors& dy = c.d_outputs;
  if (op == "linear") {
    const int64_t M = at("M"), I = at("in"), O = at("out");
    in["x"] = g.uniform(M * I, -1, 1);
    in["w"] = g.uniform(O * I, -0.1f, 0.1f);
    in["b"] = g.uniform(O, -1, 1);
    dy["y"] = g.uniform(M * O, -1, 1);
  } else if (op == "layernorm") {
    const int64_t M = at("M"), D = at("D");
    in["x"] = g.uniform(M * D, -2, 3);
    in["w"] = g.uniform(D, 0.5f, 1.5f);
    in["b"] = g.uniform(D, -0.5f, 0.5f);
    dy["y"] = g.uniform(M * D, -1, 1);
  } else if (op == "gelu") {
    const int64_t n = at("n");
    in["x"] = g.uniform(n, -5, 5);
    dy["y"] = g.uniform(n, -1, 1);
  } else if (op == "attention") {
    const int64_t B = at("B"), N = at("N"), D = at("H") * at("Dh");
    in["qkv"] = g.uniform(B * N * 3 * D, -2, 2);
    dy["out"] = g.uniform(B * N * D, -1, 1);
  } else if (op == "adapter") {
    const int64_t M = at("M"), D = at("D"), R = at("R"), G = at("G");
    in["x"] = g.uniform(M * D, -1, 1);
    in["A"] = g.uniform(R * D, -0.3f, 0.3f);
    in["a"] = g.uniform(R, -0.3f, 0.3f);
    in["Bw"] = g.uniform(D * (R / G), -0.5f, 0.5f);
    in["b"] = g.uniform(D, -0.5f, 0.5f);
    dy["y"] = g.uniform(M * D, -1, 1);
  } else if (op == "layernorm_adapter") {  // forward only: no output gradients
    const int64_t M = at("M"), D = at("D"), R = at("R"), G = at("G");
    const int64_t ldx = attrs.count("ldx") ? at("ldx") : D;
    in["x"] = g.uniform(M * ldx, -2, 3);
    in["ln_w"] = g.uniform(D, 0.5f, 1.5f);
    in["ln_b"] = g.uniform(D, -0.5f, 0.5f);
    in["A"] = g.uniform(R * D, -0.3f, 0.3f);
    in["a"] = g.uniform(R, -0.3f, 0.3f);
    in["Bw"] = g.uniform(D * (R / G), -0.5f, 0.5f);
    in["b"] = g.uniform(D, -0.5f, 0.5f);
  } else if (op == "patch_embed") {
    const int64_t B = at("B"), S = at("S"), p = at("p"), D = at("D");
    const int64_t P = (S / p) * (S / p), Q = 3 * p * p;
    in["images"] = g.uniform(B * 3 * S * S, -1, 1);
    in["w"] = g.uniform(D * Q, -0.1f, 0.1f);
    in["b"] = g.uniform(D, -1, 1);
    dy["y"] = g.uniform(B * P * D, -1, 1);
  } else if (op == "tokens") {
    const int64_t B = at("B"), P = at("P"), D = at("D");
    in["embedded"] = g.uniform(B * P * D, -1, 1);
    in["cls"] = g.uniform(D, -1, 1);
    in["pos"] = g.uniform((P + 1) * D, -1, 1);
    dy["x"] = g.uniform(B * (P + 1) * D, -1, 1);
  } else if (op == "residual") {
    const int64_t B = at("B"), row = at("row");
    in["x"] = g.uniform(B * row, -1, 1);
    in["branch"] = g.uniform(B * row, -1, 1);
    std::vector<float> keep(B);
    const float kinds[4] = {0.0f, 1.0f / 0.9f, 1.0f, 2.0f};  // dropped, kept, plain, odd
    for (int64_t b = 0; b < B; ++b) keep[b] = kinds[b % 4];
    in["keep"] = keep;
    dy["y"] = g.uniform(B * row, -1, 1);
  } else if (op == "cross_entropy") {
    const int64_t B = at("B"), C = at("C");
    in["logits"] = g.uniform(B * C, -4, 4);
    if (at("soft")) {
      std::vector<float> soft = g.uniform(B * C, 0, 1);
      for (int64_t b = 0; b < B; ++b) {
        double sum = 0;
        for (int64_t k = 0; k < C; ++k) sum += soft[b * C + k];
        for (int64_t k = 0; k < C; ++k) soft[b * C + k] = static_cast<float>(soft[b * C + k] / sum);
      }
      in["soft"] = soft;
    } else {
      std::vector<float> labels(B);
      for (int64_t b = 0; b < B; ++b) labels[b] = static_cast<float>(g.integer(C));
      in["labels"] = labels;
    }
    dy["loss"] = {0.75f};
  } else if (op == "fold") {
    const int64_t O = at("O"), D = at("D"), R = at("R"), G = at("G");
    in["W"] = g.uniform(O * D, -0.1f, 0.1f);
    in["c"] = g.uniform(O, -1, 1);
    in["A"] = g.uniform(R * D, -0.3f, 0.3f);
    in["a"] = g.uniform(R, -0.3f, 0.3f);
    in["Bw"] = g.uniform(D * (R / G), -0.5f, 0.5f);
    in["b"] = g.uniform(D, -0.5f, 0.5f);
  } else if (op == "adamw") {
    const int64_t n = at("n");
    in["param"] = g.uniform(n, -1, 1);
    in["grad"] = g.uniform(n, -1, 1);
    in["m"] = g.uniform(n, -0.1f, 0.1f);
    in["v"] = g.uniform(n, 0, 0.01f);
  } else if (op == "sgd") {
    const int64_t n = at("n");
    in["param"] = g.uniform(n, -1, 1);
    in["grad"] = g.uniform(n, -1, 1);
    in["buf"] = g.uniform(n, -0.5f, 0.5f);
  } else {
    return false;
  }
  *out = std::move(c);
  return true;
}

// The shapes each op runs at: small ones, then (large = true) one ViT-B/16-like shape
// (batch 8: M = 8·197 = 1576 tokens, D = 768, F = 3072, H = 12, Dh = 64).
std::vector<std::pair<OpAttrs, double>> shapes(const std::string& op, bool large) {
  std::vector<std::pair<OpAttrs, double>> s;
  auto add = [&](OpAttrs a, double tol) { s.emplace_back(std::move(a), tol); };
  if (op == "linear") {
    add({{"M", 7}, {"in", 13}, {"out", 5}}, 1e-5);
    add({{"M", 64}, {"in", 96}, {"out", 48}}, 1e-5);
    if (large) add({{"M", 1576}, {"in", 768}, {"out", 2304}}, 2e-5);
    if (large) add({{"M", 1576}, {"in", 3072}, {"out", 768}}, 2e-5);
    // bf16 compute (see the top of this file for the tolerances); in = 13 gives bf16 rows of
    // 26 bytes, too unaligned for cuBLASLt: the cublasGemmStridedBatchedEx fallback.
    add({{"M", 7}, {"in", 13}, {"out", 5}, {"bf16", 1}}, 2e-5);
    add({{"M", 64}, {"in", 96}, {"out", 48}, {"bf16", 1}}, 2e-5);
    if (large) add({{"M", 1576}, {"in", 768}, {"out", 2304}, {"bf16", 1}}, 1e-4);
    if (large) add({{"M", 1576}, {"in", 3072}, {"out", 768}, {"bf16", 1}}, 1e-4);
    // bf16 activations (bf16 = 2: A and C in bf16): the same sums rounded once to bf16, where a
    // sum that lands on the other side of a rounding boundary moves by one bf16 step, 2⁻⁸ of the
    // value: the bound is two steps of the largest output. in = 13: the fallback (bias, then
    // rounding, in its own kernel).
    add({{"M", 7}, {"in", 13}, {"out", 5}, {"bf16", 2}}, 8e-3);
    add({{"M", 64}, {"in", 96}, {"out", 48}, {"bf16", 2}}, 8e-3);
    if (large) add({{"M", 1576}, {"in", 768}, {"out", 3072}, {"bf16", 2}}, 8e-3);
  } else if (op == "layernorm") {
    add({{"M", 5}, {"D", 7}, {"eps", 1e-6}}, 1e-5);
    add({{"M", 33}, {"D", 192}, {"eps", 1e-5}}, 1e-5);
    if (large) add({{"M", 1576}, {"D", 768}, {"eps", 1e-6}}, 1e-5);
    // y in bf16: rounded once, so a value within float rounding of a bf16 rounding boundary may
    // land one bf16 step away: 8e-3 is two steps of the largest.
    add({{"M", 33}, {"D", 192}, {"eps", 1e-5}, {"bf16_out", 1}}, 8e-3);
  } else if (op == "gelu") {
    add({{"n", 1001}}, 1e-5);
    add({{"n", 1001}, {"bf16", 1}}, 1e-5);  // backward from the bf16 copy of x
    add({{"n", 1001}, {"bf16", 2}}, 8e-3);  // and forward bf16 → bf16: a step where erff differs
    if (large) add({{"n", 1576 * 3072}}, 1e-5);
  } else if (op == "attention") {
    add({{"B", 2}, {"N", 5}, {"H", 3}, {"Dh", 4}}, 1e-5);
    add({{"B", 3}, {"N", 17}, {"H", 2}, {"Dh", 5}}, 1e-5);  // odd Dh: unaligned head slices
    // Dh = 32 and 64 take CUDA's fused kernels (64 query rows per forward block, 32 rows per
    // backward block): N below, just past and between tile sizes, and many (b, h) blocks.
    add({{"B", 2}, {"N", 50}, {"H", 4}, {"Dh", 32}}, 1e-5);
    add({{"B", 2}, {"N", 7}, {"H", 3}, {"Dh", 64}}, 1e-5);
    add({{"B", 1}, {"N", 65}, {"H", 2}, {"Dh", 64}}, 1e-5);
    add({{"B", 2}, {"N", 197}, {"H", 2}, {"Dh", 64}}, 1e-5);
    add({{"B", 64}, {"N", 12}, {"H", 24}, {"Dh", 32}}, 1e-5);
    if (large) add({{"B", 8}, {"N", 197}, {"H", 12}, {"Dh", 64}}, 2e-5);
    if (large) add({{"B", 64}, {"N", 197}, {"H", 12}, {"Dh", 64}}, 2e-5);  // a training batch
    // bf16 compute (dtype 1) at Dh = 32 and 64: the tensor-core kernels (flash_attention_bf16.cuh,
    // 64 rows per block, keys 64 per forward step and 32 per backward step) against the CPU's bf16
    // attention. They differ by bf16 rounding, not summation order: forward rounds each
    // exp(s − m) against the running row maximum instead of the final one, and backward's
    // D = rowsum(dÔ ∘ out) carries out's roundings where the CPU sums dP ∘ p. The host emulation
    // (flash_attention_emulation) measured up to 1.4e-3 (out) and 3.1e-3 (d_qkv) on these input
    // ranges, and each kernel alone matches its float64 definition to 3e-7; hence 1e-2. A wrong
    // fragment layout or a lost tile is O(1). Float32 kernels in place of the bf16 ones would
    // differ by the bf16 effect itself (3e-3…7e-3) and might pass: that distinction is the
    // emulation's tight check, not this one.
    add({{"B", 2}, {"N", 7}, {"H", 3}, {"Dh", 64}, {"dtype", 1}}, 1e-2);
    add({{"B", 2}, {"N", 50}, {"H", 4}, {"Dh", 32}, {"dtype", 1}}, 1e-2);
    add({{"B", 2}, {"N", 197}, {"H", 2}, {"Dh", 64}, {"dtype", 1}}, 1e-2);
    add({{"B", 1}, {"N", 197}, {"H", 3}, {"Dh", 32}, {"dtype", 1}}, 1e-2);
    add({{"B", 64}, {"N", 12}, {"H", 24}, {"Dh", 32}, {"dtype", 1}}, 1e-2);
    if (large) add({{"B", 8}, {"N", 197}, {"H", 12}, {"Dh", 64}, {"dtype", 1}}, 1e-2);
    if (large) add({{"B", 64}, {"N", 197}, {"H", 12}, {"Dh", 64}, {"dtype", 1}}, 1e-2);
    // d_qkv handed over in bf16 (a frozen qkv Linear): the same, rounded as it is stored; Dh = 8
    // goes through the float32 kernels and a rounding pass instead. And out in bf16 (a frozen
    // proj Linear), likewise.
    add({{"B", 2}, {"N", 197}, {"H", 2}, {"Dh", 64}, {"dtype", 1}, {"bf16_grad", 1}, {"bf16_out", 1}}, 1e-2);
    add({{"B", 2}, {"N", 20}, {"H", 2}, {"Dh", 8}, {"dtype", 1}, {"bf16_grad", 1}, {"bf16_out", 1}}, 1e-2);
  } else if (op == "adapter") {
    add({{"M", 9}, {"D", 12}, {"R", 4}, {"G", 2}, {"scale", 0.7}, {"train", 0}}, 1e-5);
    add({{"M", 9}, {"D", 12}, {"R", 4}, {"G", 1}, {"scale", 1.0}, {"train", 1}, {"dropout", 0.25}, {"seed", 42}}, 1e-5);
    add({{"M", 40}, {"D", 64}, {"R", 8}, {"G", 4}, {"scale", 0.1}, {"train", 1}, {"dropout", 0.1}, {"seed", 7}}, 1e-5);
    if (large)
      add({{"M", 1576}, {"D", 768}, {"R", 8}, {"G", 2}, {"scale", 0.1}, {"train", 1}, {"dropout", 0.1}, {"seed", 3}}, 2e-5);
  } else if (op == "layernorm_adapter") {
    add({{"M", 9}, {"D", 12}, {"R", 4}, {"G", 2}, {"scale", 0.7}, {"train", 0}, {"keep", 0}}, 1e-5);
    add({{"M", 9}, {"D", 12}, {"R", 4}, {"G", 1}, {"scale", 1.0}, {"train", 1}, {"dropout", 0.25}, {"seed", 42},
         {"keep", 1}, {"eps", 1e-5}}, 1e-5);
    // Strided rows and D not a multiple of 32 (lanes idle in the last pass over a row).
    add({{"M", 300}, {"D", 72}, {"R", 8}, {"G", 4}, {"ldx", 77}, {"scale", 0.1}, {"train", 1}, {"dropout", 0.1},
         {"seed", 7}, {"keep", 1}}, 1e-5);
    // More rows than the grid has warps (132 SMs · 16 blocks · 4 warps on an H100): warps loop.
    add({{"M", 9000}, {"D", 40}, {"R", 8}, {"G", 2}, {"scale", 0.5}, {"train", 1}, {"dropout", 0.2}, {"seed", 11},
         {"keep", 1}}, 1e-5);
    if (large)
      add({{"M", 1576}, {"D", 768}, {"R", 8}, {"G", 2}, {"scale", 0.1}, {"train", 1}, {"dropout", 0.1}, {"seed", 3},
           {"keep", 1}}, 2e-5);
    // u in bf16 (for a frozen bf16 Linear): the same value rounded, where a value within float
    // rounding of a bf16 rounding boundary may land one bf16 step away: 8e-3 (two steps of the
    // largest).
    add({{"M", 300}, {"D", 72}, {"R", 8}, {"G", 4}, {"scale", 0.1}, {"train", 1}, {"dropout", 0.1},
         {"seed", 9}, {"keep", 1}, {"bf16_out", 1}}, 8e-3);
  } else if (op == "patch_embed") {
    add({{"B", 2}, {"S", 8}, {"p", 4}, {"D", 6}}, 1e-5);
    add({{"B", 2}, {"S", 10}, {"p", 4}, {"D", 6}}, 1e-5);  // a border patchify never reads
    if (large) add({{"B", 8}, {"S", 224}, {"p", 16}, {"D", 768}}, 2e-5);
  } else if (op == "tokens") {
    add({{"B", 2}, {"P", 4}, {"D", 6}}, 1e-6);
    add({{"B", 5}, {"P", 16}, {"D", 40}}, 1e-6);
    if (large) add({{"B", 8}, {"P", 196}, {"D", 768}}, 1e-6);
  } else if (op == "residual") {
    add({{"B", 4}, {"row", 10}}, 1e-6);
    add({{"B", 4}, {"row", 10}, {"in_place", 1}}, 1e-6);
    add({{"B", 4}, {"row", 10}, {"bf16_grad", 1}}, 8e-3);  // d_branch in bf16: one rounding
    if (large) add({{"B", 8}, {"row", 197 * 768}}, 1e-6);
  } else if (op == "cross_entropy") {
    add({{"B", 4}, {"C", 10}, {"smoothing", 0.1}}, 1e-5);
    add({{"B", 4}, {"C", 10}, {"smoothing", 0.0}}, 1e-5);
    add({{"B", 5}, {"C", 7}, {"soft", 1}}, 1e-5);
    if (large) add({{"B", 8}, {"C", 1000}, {"smoothing", 0.1}}, 1e-5);
  } else if (op == "fold") {
    add({{"O", 12}, {"D", 8}, {"R", 4}, {"G", 2}, {"scale", 0.5}}, 1e-6);
    add({{"O", 12}, {"D", 8}, {"R", 4}, {"G", 1}, {"scale", 1.0}}, 1e-6);
    add({{"O", 30}, {"D", 16}, {"R", 8}, {"G", 4}, {"scale", 0.1}}, 1e-6);
    if (large) add({{"O", 2304}, {"D", 768}, {"R", 8}, {"G", 2}, {"scale", 0.1}}, 1e-6);
  } else if (op == "adamw") {
    add({{"n", 1000}, {"lr", 1e-3}, {"weight_decay", 0.05}, {"step", 1}}, 1e-6);
    add({{"n", 1000}, {"lr", 3e-4}, {"beta1", 0.8}, {"beta2", 0.99}, {"eps", 1e-6}, {"step", 7},
         {"grad_scale", 0.5}}, 1e-6);
    add({{"n", 1000}, {"split", 377}, {"lr", 1e-3}, {"weight_decay", 0.05}, {"lr2", 2e-3},
         {"weight_decay2", 0.0}, {"step", 3}}, 1e-6);  // two groups in one launch
    if (large) add({{"n", 1 << 20}, {"lr", 1e-3}, {"weight_decay", 1e-4}, {"step", 100}}, 1e-6);
  } else if (op == "sgd") {
    add({{"n", 1000}, {"lr", 0.1}}, 1e-6);
    add({{"n", 1000}, {"lr", 0.1}, {"momentum", 0.9}, {"first", 1}}, 1e-6);
    add({{"n", 1000}, {"lr", 0.05}, {"momentum", 0.9}, {"dampening", 0.1}, {"weight_decay", 1e-4},
         {"nesterov", 1}, {"grad_scale", 0.25}}, 1e-6);
    add({{"n", 1000}, {"split", 1}, {"lr", 0.1}, {"lr2", 0.01}, {"weight_decay2", 1e-3},
         {"momentum", 0.9}}, 1e-6);
  }
  return s;
}

// ---- part 1: every op through run_op ---------------------------------------------------------

void run_op_cases(Backend& cpu, Backend& gpu, bool large, const std::string& only,
                  std::vector<Result>* results) {
  uint64_t seed = 1000;
  for (const std::string& op : op_names()) {
    if (!only.empty() && op != only) continue;
    const auto list = shapes(op, large);
    if (list.empty()) {
      results->push_back(failure(op, "-", "no cases for this op: add it to cuda_ops_check.cc"));
      print_result(results->back());
      continue;
    }
    for (const auto& [attrs, tol] : list) {
      Case c;
      if (!make_case(op, attrs, tol, ++seed, &c)) {
        results->push_back(failure(op, label_of(attrs), "no input recipe for this op: add it to cuda_ops_check.cc"));
        print_result(results->back());
        break;
      }
      const HostTensors* douts = c.d_outputs.empty() ? nullptr : &c.d_outputs;
      HostTensors out_cpu, out_gpu;
      Status s_cpu = run_op(cpu, op, c.attrs, c.inputs, douts, &out_cpu);
      Status s_gpu = run_op(gpu, op, c.attrs, c.inputs, douts, &out_gpu);
      if (!s_cpu.ok() || !s_gpu.ok()) {
        results->push_back(failure(op, c.label, "cpu: " + (s_cpu.ok() ? std::string("ok") : s_cpu.message()) +
                                                    " | cuda: " + (s_gpu.ok() ? std::string("ok") : s_gpu.message())));
        print_result(results->back());
        continue;
      }
      std::set<std::string> names;
      for (const auto& [k, v] : out_cpu) names.insert(k);
      for (const auto& [k, v] : out_gpu) names.insert(k);
      for (const std::string& k : names) {
        auto a = out_cpu.find(k), b = out_gpu.find(k);
        if (a == out_cpu.end() || b == out_gpu.end()) {
          results->push_back(failure(op, c.label, "output " + k + " missing on one backend"));
        } else {
          results->push_back(compare(op, c.label, k, a->second, b->second, c.tol));
        }
        print_result(results->back());
      }
    }
  }
}

// ---- part 2: direct calls ---------------------------------------------------------------------

// A gemm with every knob, run on one backend; returns the whole C buffer (gaps included: they
// must be left as they were).
struct GemmCase {
  bool ta = false, tb = false;
  int64_t M = 1, N = 1, K = 1, batch = 1;
  float alpha = 1, beta = 0;
  bool bias = false;
  int64_t pad = 0;     // extra leading-dimension floats
  int64_t offset = 0;  // elements by which every pointer is moved off cudaMalloc's alignment
  bool bf16 = false;   // B as bf16 (convert_to_bf16 of the same values), A rounded by the gemm
};

struct GemmData {
  int64_t lda, ldb, ldc, sa, sb, sc;
  std::vector<float> A, B, C, bias;
};

GemmData gemm_data(const GemmCase& k, uint64_t seed) {
  Gen g(seed);
  GemmData d;
  const int64_t rows_a = k.ta ? k.K : k.M, rows_b = k.tb ? k.N : k.K;
  d.lda = (k.ta ? k.M : k.K) + k.pad;
  d.ldb = (k.tb ? k.K : k.N) + k.pad;
  d.ldc = k.N + k.pad;
  d.sa = rows_a * d.lda + 3;  // batch strides with a gap, too
  d.sb = rows_b * d.ldb + 5;
  d.sc = k.M * d.ldc + 2;
  d.A = g.uniform(k.offset + (k.batch - 1) * d.sa + rows_a * d.lda, -1, 1);
  d.B = g.uniform(k.offset + (k.batch - 1) * d.sb + rows_b * d.ldb, -1, 1);
  d.C = g.uniform(k.offset + (k.batch - 1) * d.sc + k.M * d.ldc, -1, 1);
  d.bias = g.uniform(k.offset + k.N, -1, 1);
  return d;
}

Status run_gemm(Backend& be, const GemmCase& k, const GemmData& d, std::vector<float>* C) {
  Pool pool(be);
  float *A = nullptr, *B = nullptr, *Cd = nullptr, *bias = nullptr;
  RA_RETURN_IF_ERROR(pool.put(d.A, &A));
  RA_RETURN_IF_ERROR(pool.put(d.B, &B));
  RA_RETURN_IF_ERROR(pool.put(d.C, &Cd));
  RA_RETURN_IF_ERROR(pool.put(d.bias, &bias));
  Gemm g;
  g.trans_a = k.ta; g.trans_b = k.tb;
  g.M = k.M; g.N = k.N; g.K = k.K; g.batch = k.batch;
  g.A = A + k.offset; g.lda = d.lda; g.stride_a = d.sa;
  g.B = B + k.offset; g.ldb = d.ldb; g.stride_b = d.sb;
  g.C = Cd + k.offset; g.ldc = d.ldc; g.stride_c = d.sc;
  g.bias = k.bias ? bias + k.offset : nullptr;
  g.alpha = k.alpha; g.beta = k.beta;
  if (k.bf16) {  // the whole B buffer, gaps included, so strides and offset carry over
    const int64_t n = static_cast<int64_t>(d.B.size());
    float* storage = nullptr;
    RA_RETURN_IF_ERROR(pool.alloc((n + 1) / 2, &storage));
    uint16_t* B16 = reinterpret_cast<uint16_t*>(storage);
    RA_RETURN_IF_ERROR(be.convert_to_bf16(B, B16, n));
    g.B_bf16 = B16 + k.offset;
  }
  RA_RETURN_IF_ERROR(be.gemm(g));
  return pool.get(Cd, static_cast<int64_t>(d.C.size()), C);
}

void gemm_cases(Backend& cpu, Backend& gpu, std::vector<Result>* results) {
  struct Scalars { float alpha, beta; bool bias; };
  const Scalars scalars[] = {{1, 0, true}, {0.5f, 0, false}, {1, 1, true}, {0.75f, 0.25f, false}};
  struct Size { int64_t M, N, K, pad, offset; };
  const Size sizes[] = {{13, 7, 9, 0, 0}, {64, 48, 32, 0, 0}, {33, 65, 17, 3, 1}, {128, 96, 200, 4, 0}};
  uint64_t seed = 5000;
  for (bool bf16 : {false, true})
  for (const Size& sz : sizes)
    for (int t = 0; t < 4; ++t)
      for (int64_t batch : {1, 3})
        for (const Scalars& sc : scalars) {
          GemmCase k;
          k.ta = t & 1; k.tb = (t >> 1) & 1;
          k.M = sz.M; k.N = sz.N; k.K = sz.K; k.batch = batch;
          k.alpha = sc.alpha; k.beta = sc.beta; k.bias = sc.bias;
          k.pad = sz.pad; k.offset = sz.offset;
          k.bf16 = bf16;
          char label[96];
          std::snprintf(label, sizeof(label), "%lldx%lldx%lld%s%s b%lld a%g b%g%s%s%s",
                        (long long)k.M, (long long)k.N, (long long)k.K, k.ta ? " At" : "", k.tb ? " Bt" : "",
                        (long long)k.batch, k.alpha, k.beta, k.bias ? " bias" : "", k.offset ? " +1" : "",
                        k.bf16 ? " bf16" : "");
          const GemmData d = gemm_data(k, ++seed);
          std::vector<float> c_cpu, c_gpu;
          Status s1 = run_gemm(cpu, k, d, &c_cpu);
          Status s2 = run_gemm(gpu, k, d, &c_gpu);
          if (!s1.ok() || !s2.ok())
            results->push_back(failure("gemm", label, "cpu: " + s1.message() + " | cuda: " + s2.message()));
          else  // K ≤ 200 here: bf16 sums differ by order only (see the top of this file)
            results->push_back(compare("gemm", label, "C", c_cpu, c_gpu, bf16 ? 2e-5 : 1e-5));
          print_result(results->back());
        }
}

// convert_to_bf16 must give the same bits on both backends (the model's bf16 weight copies are
// made by it): every sign, exponent and upper mantissa half, each with the lower halves that
// decide the rounding — 0 (exact), 0x7FFF (just below a tie), 0x8000 (the tie: to even),
// 0x8001 (just above) and 0xFFFF (carries into the exponent, overflows to inf at the top).
// That covers ±0, subnormals, ±inf, quiet and signalling NaNs of either sign, and the largest
// finite floats.
void convert_bf16_case(Backend& cpu, Backend& gpu, std::vector<Result>* results) {
  const uint32_t lows[] = {0x0000u, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu};
  std::vector<float> x;
  x.reserve(65536 * 5);
  for (uint32_t hi = 0; hi < 65536; ++hi)
    for (uint32_t lo : lows) {
      const uint32_t bits = hi << 16 | lo;
      float v;
      std::memcpy(&v, &bits, sizeof v);
      x.push_back(v);
    }
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<uint16_t> out[2];
  Backend* be[2] = {&cpu, &gpu};
  for (int i = 0; i < 2; ++i) {
    Pool pool(*be[i]);
    float *px = nullptr, *py = nullptr;
    Status st = pool.put(x, &px);
    if (st.ok()) st = pool.alloc((n + 1) / 2, &py);
    if (st.ok()) st = be[i]->convert_to_bf16(px, reinterpret_cast<uint16_t*>(py), n);
    out[i].resize(static_cast<size_t>(n));
    if (st.ok()) st = be[i]->synchronize();
    if (st.ok()) st = be[i]->download(out[i].data(), py, static_cast<size_t>(n) * sizeof(uint16_t));
    if (!st.ok()) {
      results->push_back(failure("convert_bf16", "all bit patterns (bitwise)", st.message()));
      print_result(results->back());
      return;
    }
  }
  Result r = failure("convert_bf16", "all bit patterns (bitwise)", "");
  r.output = "y";
  r.n = n;
  int64_t differ = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (out[0][i] == out[1][i]) continue;
    if (differ++ == 0) {
      uint32_t bits;
      std::memcpy(&bits, &x[i], sizeof bits);
      char buf[96];
      std::snprintf(buf, sizeof(buf), "first at input 0x%08X: cpu 0x%04X, cuda 0x%04X", bits, out[0][i], out[1][i]);
      r.note = buf;
    }
  }
  r.max_abs = static_cast<double>(differ);  // here: how many bit patterns differ
  r.pass = differ == 0;
  if (differ) r.note = std::to_string(differ) + " differ; " + r.note;
  results->push_back(r);
  print_result(results->back());
}

// Dropout masks must be bit-identical: same hash, same comparison (tolerance 0).
void dropout_case(Backend& cpu, Backend& gpu, std::vector<Result>* results) {
  const int64_t n = 100003;
  Gen g(77);
  const std::vector<float> z = g.uniform(n, 0.5f, 1.5f);
  std::vector<float> out[2];
  Backend* be[2] = {&cpu, &gpu};
  for (int i = 0; i < 2; ++i) {
    Pool pool(*be[i]);
    float *d = nullptr, *key = nullptr;  // the step key: 8 bytes of backend memory
    const uint64_t step_key = 0xABC000ull;
    Status st = pool.put(z, &d);
    if (st.ok()) st = pool.put(std::vector<float>(2), &key);
    if (st.ok()) st = be[i]->upload(key, &step_key, sizeof(step_key));
    const uint64_t* k = reinterpret_cast<const uint64_t*>(key);
    if (st.ok()) st = be[i]->dropout_forward(d, n, 0.3f, 123456789ull, k, 0xDEFull);
    if (st.ok()) st = be[i]->dropout_backward(d, n, 0.3f, 123456789ull, k, 0xDEFull);  // twice
    if (st.ok()) st = pool.get(d, n, &out[i]);
    if (!st.ok()) {
      results->push_back(failure("dropout", "n=100003 p=0.3", st.message()));
      print_result(results->back());
      return;
    }
  }
  int64_t zeros = 0;
  for (float v : out[0]) zeros += v == 0.0f;
  Result r = compare("dropout", "n=100003 p=0.3 (bitwise)", "z", out[0], out[1], 0.0);
  r.note = "dropped " + std::to_string(zeros) + " of " + std::to_string(n);
  results->push_back(r);
  print_result(results->back());
}

// LayerNorm on strided rows (the final norm reads the cls rows, N·D apart); dx adds, dw and db
// accumulate onto non-zero values, and the gaps between rows must stay untouched.
void strided_layernorm_case(Backend& cpu, Backend& gpu, std::vector<Result>* results) {
  const int64_t M = 6, D = 40, ldx = 3 * D + 1, ldy = 2 * D;
  Gen g(91);
  const auto x = g.uniform(M * ldx, -2, 2), w = g.uniform(D, 0.5f, 1.5f), b = g.uniform(D, -1, 1);
  const auto y0 = g.uniform(M * ldy, -1, 1), dy = g.uniform(M * ldy, -1, 1);
  const auto dx0 = g.uniform(M * ldx, -1, 1), dw0 = g.uniform(D, -1, 1), db0 = g.uniform(D, -1, 1);
  const char* names[5] = {"y", "mean", "dx", "dw", "db"};
  std::vector<float> out[2][5];
  Backend* be[2] = {&cpu, &gpu};
  for (int i = 0; i < 2; ++i) {
    Pool pool(*be[i]);
    float *px, *pw, *pb, *py, *pm, *pr, *pdy, *pdx, *pdw, *pdb;
    Status st = pool.put(x, &px);
    if (st.ok()) st = pool.put(w, &pw);
    if (st.ok()) st = pool.put(b, &pb);
    if (st.ok()) st = pool.put(y0, &py);
    if (st.ok()) st = pool.alloc(M, &pm);
    if (st.ok()) st = pool.alloc(M, &pr);
    if (st.ok()) st = pool.put(dy, &pdy);
    if (st.ok()) st = pool.put(dx0, &pdx);
    if (st.ok()) st = pool.put(dw0, &pdw);
    if (st.ok()) st = pool.put(db0, &pdb);
    if (st.ok()) st = be[i]->layernorm_forward(px, ldx, pw, pb, py, nullptr, ldy, pm, pr, M, D, 1e-6f);
    if (st.ok()) st = be[i]->layernorm_backward(pdy, ldy, px, ldx, pw, pm, pr, pdx, pdw, pdb, M, D);
    if (st.ok()) st = pool.get(py, M * ldy, &out[i][0]);
    if (st.ok()) st = pool.get(pm, M, &out[i][1]);
    if (st.ok()) st = pool.get(pdx, M * ldx, &out[i][2]);
    if (st.ok()) st = pool.get(pdw, D, &out[i][3]);
    if (st.ok()) st = pool.get(pdb, D, &out[i][4]);
    if (!st.ok()) {
      results->push_back(failure("layernorm", "strided", st.message()));
      print_result(results->back());
      return;
    }
  }
  for (int k = 0; k < 5; ++k) {
    results->push_back(compare("layernorm", "strided ldx=121 ldy=80 (+= grads)", names[k], out[0][k], out[1][k], 1e-5));
    print_result(results->back());
  }
}

// Inference attention (saved null): the materialised path keeps its scores in scratch, the
// fused one (Dh = 32, 64) writes out alone; in both compute dtypes (bf16: tolerance as in shapes()).
void attention_inference_case(Backend& cpu, Backend& gpu, std::vector<Result>* results) {
  struct Shape { int64_t B, N, H, Dh; DType compute; };
  const Shape shapes[] = {{3, 19, 2, 8, DType::kF32},  {2, 197, 3, 64, DType::kF32},
                          {4, 50, 2, 32, DType::kF32}, {2, 7, 3, 64, DType::kF32},
                          {2, 197, 3, 64, DType::kBF16}, {4, 50, 2, 32, DType::kBF16}};
  uint64_t seed = 33;
  for (const Shape& sh : shapes) {
    const int64_t B = sh.B, N = sh.N, H = sh.H, Dh = sh.Dh, D = H * Dh;
    const bool bf16 = sh.compute == DType::kBF16;
    char label[96];
    std::snprintf(label, sizeof(label), "saved=null B=%lld N=%lld H=%lld Dh=%lld%s",
                  (long long)B, (long long)N, (long long)H, (long long)Dh, bf16 ? " bf16" : "");
    Gen g(seed++);
    const auto qkv = g.uniform(B * N * 3 * D, -2, 2);
    std::vector<float> out[2];
    Backend* be[2] = {&cpu, &gpu};
    Status st;
    for (int i = 0; i < 2 && st.ok(); ++i) {
      Pool pool(*be[i]);
      float *pq = nullptr, *po = nullptr, *pq16 = nullptr;
      st = pool.put(qkv, &pq);
      if (st.ok()) st = pool.alloc(B * N * D, &po);
      // bf16 compute takes qkv in bf16, as the model stores it.
      if (st.ok() && bf16) st = pool.alloc((B * N * 3 * D + 1) / 2, &pq16);
      if (st.ok() && bf16) st = be[i]->convert_to_bf16(pq, reinterpret_cast<uint16_t*>(pq16), B * N * 3 * D);
      if (st.ok()) st = be[i]->attention_forward(bf16 ? pq16 : pq, po, nullptr, nullptr, B, N, H, Dh, sh.compute);
      if (st.ok()) st = pool.get(po, B * N * D, &out[i]);
    }
    results->push_back(st.ok() ? compare("attention", label, "out", out[0], out[1], bf16 ? 1e-2 : 1e-5)
                               : failure("attention", label, st.message()));
    print_result(results->back());
  }
}

// A label outside [0, C) is the same error on both backends.
void bad_label_case(Backend& cpu, Backend& gpu, std::vector<Result>* results) {
  const int64_t B = 4, C = 10;
  Gen g(55);
  const auto logits = g.uniform(B * C, -1, 1);
  const int32_t labels[B] = {3, 9, -1, 12};
  Status st[2];
  Backend* be[2] = {&cpu, &gpu};
  for (int i = 0; i < 2; ++i) {
    Pool pool(*be[i]);
    float *pl, *pt, *ploss, *pd;
    st[i] = pool.put(logits, &pl);
    if (st[i].ok()) st[i] = pool.alloc(B, &pt);
    if (st[i].ok()) st[i] = be[i]->upload(pt, labels, sizeof(labels));
    if (st[i].ok()) st[i] = pool.alloc(1, &ploss);
    if (st[i].ok()) st[i] = pool.alloc(B * C, &pd);
    if (st[i].ok())
      st[i] = be[i]->cross_entropy(pl, reinterpret_cast<const int32_t*>(pt), nullptr, 0.1f, ploss, pd, B, C);
  }
  Result r = failure("cross_entropy", "label -1 of sample 2", "");
  r.pass = !st[0].ok() && !st[1].ok() && st[0].code() == st[1].code() && st[0].message() == st[1].message();
  r.note = "cpu: \"" + st[0].message() + "\" cuda: \"" + st[1].message() + "\"";
  results->push_back(r);
  print_result(results->back());
}

// copy has memmove semantics, also for overlapping ranges.
void overlap_copy_case(Backend& cpu, Backend& gpu, std::vector<Result>* results) {
  const int64_t n = 1000;
  std::vector<float> base(n);
  for (int64_t i = 0; i < n; ++i) base[i] = static_cast<float>(i);
  for (int dir = 0; dir < 2; ++dir) {
    std::vector<float> out[2];
    Backend* be[2] = {&cpu, &gpu};
    for (int i = 0; i < 2; ++i) {
      Pool pool(*be[i]);
      float* p;
      Status st = pool.put(base, &p);
      if (st.ok()) st = dir == 0 ? be[i]->copy(p + 10, p, 500 * sizeof(float)) : be[i]->copy(p, p + 10, 500 * sizeof(float));
      if (st.ok()) st = pool.get(p, n, &out[i]);
      if (!st.ok()) {
        results->push_back(failure("copy", "overlapping", st.message()));
        print_result(results->back());
        return;
      }
    }
    results->push_back(compare("copy", dir == 0 ? "overlapping, forward" : "overlapping, backward", "x", out[0], out[1], 0.0));
    print_result(results->back());
  }
}

void sum_squares_case(Backend& cpu, Backend& gpu, std::vector<Result>* results) {
  const int64_t n = 1000003;
  Gen g(66);
  const auto x = g.uniform(n, -1, 1);
  double total[2] = {0, 0};
  float clipped[2] = {0, 0};
  Backend* be[2] = {&cpu, &gpu};
  for (int i = 0; i < 2; ++i) {
    Pool pool(*be[i]);
    float *p, *out;  // out: Σ x² (a double), then the clipped gradient scale
    Status st = pool.put(x, &p);
    if (st.ok()) st = pool.put(std::vector<float>(3), &out);
    double* sum = reinterpret_cast<double*>(out);
    if (st.ok()) st = be[i]->sum_squares(p, n, sum);
    if (st.ok()) st = be[i]->clip_grad_scale(sum, 0.5, 3.0, out + 2);
    if (st.ok()) st = be[i]->download(&total[i], sum, sizeof(double));
    if (st.ok()) st = be[i]->download(&clipped[i], out + 2, sizeof(float));
    if (!st.ok()) {
      results->push_back(failure("sum_squares", "n=1000003", st.message()));
      print_result(results->back());
      return;
    }
  }
  Result r = failure("sum_squares", "n=1000003 (float64)", "");
  r.output = "total";
  r.n = 1;
  r.tol = 1e-12;
  r.max_abs = std::fabs(total[0] - total[1]);
  r.rel = total[0] != 0 ? r.max_abs / std::fabs(total[0]) : r.max_abs;
  r.pass = std::isfinite(total[1]) && r.rel <= r.tol;
  r.note = "";
  results->push_back(r);
  print_result(results->back());
  // The clipped scale from (nearly) the same total: the same float, computed on the device.
  Result c = failure("clip_grad_scale", "pre 0.5, max norm 3", "");
  c.output = "grad_scale";
  c.n = 1;
  c.tol = 1e-6;
  c.max_abs = std::fabs(static_cast<double>(clipped[0]) - clipped[1]);
  c.rel = clipped[0] != 0 ? c.max_abs / std::fabs(clipped[0]) : c.max_abs;
  c.pass = std::isfinite(clipped[1]) && clipped[0] < 0.5f && c.rel <= c.tol;
  c.note = "";
  results->push_back(c);
  print_result(results->back());
}

}  // namespace

int main(int argc, char** argv) {
  bool large = true, self_test = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--small") {
      large = false;
    } else if (a == "--self-test") {
      self_test = true;
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else if (a == "--lib-dir" && i + 1 < argc) {
      ++i;
    } else {
      std::fprintf(stderr, "usage: %s [--small] [--only OP] [--lib-dir DIR] [--self-test]\n", argv[0]);
      return 3;
    }
  }
  CpuBackend second_cpu;
  Backend* cuda = self_test ? &second_cpu : load_cuda_or_report(lib_dir_from_args(argc, argv));
  if (!cuda) return 2;
  std::printf("cuda_ops_check: CPU (%s) against CUDA (%s); %s shapes\n", cpu_backend().name(),
              cuda->name(), large ? "small and ViT-B/16-like" : "small");
  PoisonBackend cpu(cpu_backend()), gpu(*cuda);
  std::vector<Result> results;
  print_header();
  run_op_cases(cpu, gpu, large, only, &results);
  if (only.empty() || only == "gemm") gemm_cases(cpu, gpu, &results);
  if (only.empty() || only == "convert_bf16") convert_bf16_case(cpu, gpu, &results);
  if (only.empty()) {
    dropout_case(cpu, gpu, &results);
    strided_layernorm_case(cpu, gpu, &results);
    attention_inference_case(cpu, gpu, &results);
    bad_label_case(cpu, gpu, &results);
    overlap_copy_case(cpu, gpu, &results);
    sum_squares_case(cpu, gpu, &results);
  }
  int failed = 0;
  for (const Result& r : results) failed += !r.pass;
  std::printf("\n%zu checks, %d failed (poisoned %lld CUDA outputs before writing)\n", results.size(),
              failed, static_cast<long long>(gpu.poisoned()));
  if (failed) {
    std::printf("FAILED:\n");
    for (const Result& r : results)
      if (!r.pass) print_result(r);
  }
  std::printf("%s\n", failed ? "cuda_ops_check: FAIL" : "cuda_ops_check: PASS");
  return failed ? 1 : 0;
}
