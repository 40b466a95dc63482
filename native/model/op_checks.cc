#include "op_checks.h"

#include <functional>
#include <memory>

#include "../core/bf16.h"
#include "../core/optimizer_step.h"
#include "layers.h"

namespace repadapter {
namespace {

// Backend copies of named host tensors, released together.
class Buffers {
 public:
  explicit Buffers(Backend& be) : be_(be) {}
  ~Buffers() {
    for (auto& [name, entry] : entries_) be_.release(entry.ptr);
  }
  Status put(const std::string& name, const std::vector<float>& host) {
    RA_RETURN_IF_ERROR(zeros(name, static_cast<int64_t>(host.size())));
    return be_.upload(entries_[name].ptr, host.data(), host.size() * sizeof(float));
  }
  Status zeros(const std::string& name, int64_t n) {
    Entry e;
    e.n = n;
    RA_RETURN_IF_ERROR(be_.allocate(std::max<int64_t>(n, 1) * sizeof(float), reinterpret_cast<void**>(&e.ptr)));
    entries_[name] = e;
    return be_.fill(e.ptr, std::max<int64_t>(n, 1), 0.0f);
  }
  // Values the ops read from backend memory as they are (a step key, an update's jobs and
  // scalars), as raw bytes.
  template <typename T>
  Status put_values(const std::string& name, const std::vector<T>& host) {
    RA_RETURN_IF_ERROR(zeros(name, static_cast<int64_t>((host.size() * sizeof(T) + 3) / 4)));
    return be_.upload(entries_[name].ptr, host.data(), host.size() * sizeof(T));
  }
  template <typename T>
  T* as(const std::string& name) { return reinterpret_cast<T*>(entries_.at(name).ptr); }
  float* operator[](const std::string& name) { return entries_.at(name).ptr; }
  // A buffer of n bf16 values (in a float buffer of half the length) into `name`, widened.
  Status get_bf16(const std::string& buffer, int64_t n, const std::string& name, HostTensors* out) {
    std::vector<uint16_t> bits(n);
    RA_RETURN_IF_ERROR(be_.download(bits.data(), entries_.at(buffer).ptr, n * sizeof(uint16_t)));
    std::vector<float>& v = (*out)[name];
    v.resize(n);
    for (int64_t i = 0; i < n; ++i) v[i] = bf16_to_float(bits[i]);
    return Status::Ok();
  }
  Status get(const std::string& name, HostTensors* out) {
    std::vector<float>& v = (*out)[name];
    v.resize(entries_.at(name).n);
    return be_.download(v.data(), entries_.at(name).ptr, v.size() * sizeof(float));
  }

 private:
  struct Entry { float* ptr = nullptr; int64_t n = 0; };
  Backend& be_;
  std::map<std::string, Entry> entries_;
};

struct Context {
  Backend& be;
  const OpAttrs& attrs;
  const HostTensors& in;
  const HostTensors* dout;
  HostTensors* out;
  Buffers buf;

  int64_t i(const char* k) const {
    auto it = attrs.find(k);
    return it == attrs.end() ? 0 : static_cast<int64_t>(it->second);
  }
  float f(const char* k, float fallback = 0) const {
    auto it = attrs.find(k);
    return it == attrs.end() ? fallback : static_cast<float>(it->second);
  }
  // Uploads the named inputs, checking each has the expected size.
  Status inputs(std::initializer_list<std::pair<const char*, int64_t>> specs) {
    for (auto& [name, n] : specs) {
      auto it = in.find(name);
      if (it == in.end()) return InvalidArgument(std::string("missing input ") + name);
      if (static_cast<int64_t>(it->second.size()) != n)
        return InvalidArgument(std::string("input ") + name + " has " + std::to_string(it->second.size()) +
                               " values, expected " + std::to_string(n));
      RA_RETURN_IF_ERROR(buf.put(name, it->second));
    }
    return Status::Ok();
  }
  Status grad_of(const char* output, int64_t n) {
    auto it = dout->find(output);
    if (it == dout->end() || static_cast<int64_t>(it->second.size()) != n)
      return InvalidArgument(std::string("missing or mis-sized gradient for output ") + output);
    return buf.put(std::string("dy_") + output, it->second);
  }
  Status zeros(const std::string& name, int64_t n) { return buf.zeros(name, n); }
  // The optimizer ops' ranges: all n values with lr / weight_decay, or, with split = k, [0, k)
  // with those and [k, n) with lr2 / weight_decay2 (two parameter groups in one update).
  std::vector<UpdateRange> ranges(int64_t n, float default_lr) const {
    const float lr = f("lr", default_lr), wd = f("weight_decay");
    const int64_t k = i("split");
    if (k <= 0 || k >= n) return {{0, n, lr, wd}};
    return {{0, k, lr, wd}, {k, n - k, f("lr2", lr), f("weight_decay2", wd)}};
  }
  Status get(std::initializer_list<const char*> names) {
    for (const char* n : names) RA_RETURN_IF_ERROR(buf.get(n, out));
    return Status::Ok();
  }
};

using OpFn = std::function<Status(Context&)>;

const std::map<std::string, OpFn>& registry() {
  static const std::map<std::string, OpFn> ops = {
    // x [M,in], w [out,in], b [out] → y [M,out]; bf16: 1 as the model's bf16 mode, 2 with bf16
    // activations too (x handed over in bf16, y returned in bf16, widened here).
    {"linear", [](Context& c) {
       const int64_t M = c.i("M"), in = c.i("in"), out = c.i("out");
       RA_RETURN_IF_ERROR(c.inputs({{"x", M * in}, {"w", out * in}, {"b", out}}));
       RA_RETURN_IF_ERROR(c.zeros("y", M * out));
       LinearRef l{c.buf["w"], c.buf["b"], nullptr, nullptr, out, in};
       if (c.i("bf16")) {
         RA_RETURN_IF_ERROR(c.zeros("w_bf16", (out * in + 1) / 2));  // bf16 values, two per float
         uint16_t* w16 = reinterpret_cast<uint16_t*>(c.buf["w_bf16"]);
         RA_RETURN_IF_ERROR(c.be.convert_to_bf16(c.buf["w"], w16, out * in));
         l.w_bf16 = w16;
       }
       if (c.i("bf16") == 2) {
         RA_RETURN_IF_ERROR(c.zeros("x_bf16", (M * in + 1) / 2));
         RA_RETURN_IF_ERROR(c.zeros("y_bf16", (M * out + 1) / 2));
         uint16_t* x16 = reinterpret_cast<uint16_t*>(c.buf["x_bf16"]);
         RA_RETURN_IF_ERROR(c.be.convert_to_bf16(c.buf["x"], x16, M * in));
         RA_RETURN_IF_ERROR(linear_forward(c.be, nullptr, M, l, nullptr, 0.0f,
                                           {x16, reinterpret_cast<uint16_t*>(c.buf["y_bf16"])}));
         RA_RETURN_IF_ERROR(c.buf.get_bf16("y_bf16", M * out, "y", c.out));
       } else {
         RA_RETURN_IF_ERROR(linear_forward(c.be, c.buf["x"], M, l, c.buf["y"]));
         RA_RETURN_IF_ERROR(c.get({"y"}));
       }
       if (!c.dout) return Status::Ok();
       RA_RETURN_IF_ERROR(c.grad_of("y", M * out));
       RA_RETURN_IF_ERROR(c.zeros("d_x", M * in));
       RA_RETURN_IF_ERROR(c.zeros("d_w", out * in));
       RA_RETURN_IF_ERROR(c.zeros("d_b", out));
       l.dw = c.buf["d_w"];
       l.db = c.buf["d_b"];
       RA_RETURN_IF_ERROR(linear_backward(c.be, c.buf["dy_y"], c.buf["x"], M, l, c.buf["d_x"]));
       return c.get({"d_x", "d_w", "d_b"});
     }},
    // x [M,D], w [D], b [D] → y [M,D]; bf16_out: 1 returns y in bf16 (widened here).
    {"layernorm", [](Context& c) {
       const int64_t M = c.i("M"), D = c.i("D");
       RA_RETURN_IF_ERROR(c.inputs({{"x", M * D}, {"w", D}, {"b", D}}));
       RA_RETURN_IF_ERROR(c.zeros("y", M * D));
       RA_RETURN_IF_ERROR(c.zeros("mean", M));
       RA_RETURN_IF_ERROR(c.zeros("rstd", M));
       if (c.i("bf16_out")) {
         RA_RETURN_IF_ERROR(c.zeros("y16", (M * D + 1) / 2));
         RA_RETURN_IF_ERROR(c.be.layernorm_forward(c.buf["x"], D, c.buf["w"], c.buf["b"], nullptr,
                                                   reinterpret_cast<uint16_t*>(c.buf["y16"]), D, c.buf["mean"],
                                                   c.buf["rstd"], M, D, c.f("eps", 1e-6f)));
         return c.buf.get_bf16("y16", M * D, "y", c.out);  // forward only
       }
       RA_RETURN_IF_ERROR(c.be.layernorm_forward(c.buf["x"], D, c.buf["w"], c.buf["b"], c.buf["y"], nullptr, D,
                                                 c.buf["mean"], c.buf["rstd"], M, D, c.f("eps", 1e-6f)));
       RA_RETURN_IF_ERROR(c.get({"y"}));
       if (!c.dout) return Status::Ok();
       RA_RETURN_IF_ERROR(c.grad_of("y", M * D));
       RA_RETURN_IF_ERROR(c.zeros("d_x", M * D));
       RA_RETURN_IF_ERROR(c.zeros("d_w", D));
       RA_RETURN_IF_ERROR(c.zeros("d_b", D));
       RA_RETURN_IF_ERROR(c.be.layernorm_backward(c.buf["dy_y"], D, c.buf["x"], D, c.buf["w"], c.buf["mean"],
                                                  c.buf["rstd"], c.buf["d_x"], c.buf["d_w"], c.buf["d_b"], M, D));
       return c.get({"d_x", "d_w", "d_b"});
     }},
    // x [n] → y [n]; bf16: 1 takes backward from a bf16 copy of x, 2 also runs forward in bf16
    // (x rounded, y rounded, widened here).
    {"gelu", [](Context& c) {
       const int64_t n = c.i("n");
       RA_RETURN_IF_ERROR(c.inputs({{"x", n}}));
       RA_RETURN_IF_ERROR(c.zeros("y", n));
       if (c.i("bf16") == 2) {
         RA_RETURN_IF_ERROR(c.zeros("x16", (n + 1) / 2));
         RA_RETURN_IF_ERROR(c.zeros("y16", (n + 1) / 2));
         uint16_t* x16 = reinterpret_cast<uint16_t*>(c.buf["x16"]);
         RA_RETURN_IF_ERROR(c.be.convert_to_bf16(c.buf["x"], x16, n));
         RA_RETURN_IF_ERROR(c.be.gelu_forward_bf16(x16, reinterpret_cast<uint16_t*>(c.buf["y16"]), n));
         RA_RETURN_IF_ERROR(c.buf.get_bf16("y16", n, "y", c.out));
       } else {
         RA_RETURN_IF_ERROR(c.be.gelu_forward(c.buf["x"], c.buf["y"], n));
         RA_RETURN_IF_ERROR(c.get({"y"}));
       }
       if (!c.dout) return Status::Ok();
       RA_RETURN_IF_ERROR(c.grad_of("y", n));
       if (c.i("bf16") == 2) {  // bf16 gradients too: dy rounded, dx rounded (widened here)
         RA_RETURN_IF_ERROR(c.zeros("dy16", (n + 1) / 2));
         uint16_t* x16 = reinterpret_cast<uint16_t*>(c.buf["x16"]);
         uint16_t* dy16 = reinterpret_cast<uint16_t*>(c.buf["dy16"]);
         RA_RETURN_IF_ERROR(c.be.convert_to_bf16(c.buf["dy_y"], dy16, n));
         RA_RETURN_IF_ERROR(c.be.gelu_backward_bf16_grads(x16, dy16, dy16, n));
         return c.buf.get_bf16("dy16", n, "d_x", c.out);
       }
       if (c.i("bf16")) {  // backward from a bf16 copy of x, as bf16 compute keeps it
         RA_RETURN_IF_ERROR(c.zeros("x_bf16", (n + 1) / 2));
         uint16_t* x16 = reinterpret_cast<uint16_t*>(c.buf["x_bf16"]);
         RA_RETURN_IF_ERROR(c.be.convert_to_bf16(c.buf["x"], x16, n));
         RA_RETURN_IF_ERROR(c.be.gelu_backward_bf16(x16, c.buf["dy_y"], n));
       } else {
         RA_RETURN_IF_ERROR(c.be.gelu_backward(c.buf["x"], c.buf["dy_y"], n));
       }
       RA_RETURN_IF_ERROR(c.buf.get("dy_y", c.out));
       (*c.out)["d_x"] = std::move((*c.out)["dy_y"]);
       c.out->erase("dy_y");
       return Status::Ok();
     }},
    // qkv [B,N,3D] → out [B,N,D]; dtype: 0 float32 (default), 1 bf16 compute (qkv handed over
    // in bf16, rounded here, as the model stores it); bf16_out / bf16_grad: 1 asks for out /
    // d_qkv in bf16.
    {"attention", [](Context& c) {
       const int64_t B = c.i("B"), N = c.i("N"), H = c.i("H"), Dh = c.i("Dh"), D = H * Dh;
       const DType dtype = c.i("dtype") == 1 ? DType::kBF16 : DType::kF32;
       RA_RETURN_IF_ERROR(c.inputs({{"qkv", B * N * 3 * D}}));
       const void* qkv = c.buf["qkv"];
       if (dtype == DType::kBF16) {
         RA_RETURN_IF_ERROR(c.zeros("qkv16", (B * N * 3 * D + 1) / 2));
         uint16_t* q16 = reinterpret_cast<uint16_t*>(c.buf["qkv16"]);
         RA_RETURN_IF_ERROR(c.be.convert_to_bf16(c.buf["qkv"], q16, B * N * 3 * D));
         qkv = q16;
       }
       RA_RETURN_IF_ERROR(c.zeros("out", B * N * D));
       RA_RETURN_IF_ERROR(c.zeros("saved", c.be.attention_saved_floats(B, N, H, Dh, dtype)));
       if (c.i("bf16_out")) {  // out returned in bf16 (bf16 compute), widened here
         RA_RETURN_IF_ERROR(c.zeros("out16", (B * N * D + 1) / 2));
         RA_RETURN_IF_ERROR(c.be.attention_forward(qkv, nullptr, reinterpret_cast<uint16_t*>(c.buf["out16"]),
                                                   c.buf["saved"], B, N, H, Dh, dtype));
         RA_RETURN_IF_ERROR(c.buf.get_bf16("out16", B * N * D, "out", c.out));
       } else {
         RA_RETURN_IF_ERROR(c.be.attention_forward(qkv, c.buf["out"], nullptr, c.buf["saved"], B, N, H, Dh, dtype));
         RA_RETURN_IF_ERROR(c.get({"out"}));
       }
       if (!c.dout) return Status::Ok();
       RA_RETURN_IF_ERROR(c.grad_of("out", B * N * D));
       RA_RETURN_IF_ERROR(c.zeros("d_qkv", B * N * 3 * D));
       if (c.i("bf16_grad")) {  // d_qkv returned in bf16 (bf16 compute), widened here
         RA_RETURN_IF_ERROR(c.zeros("d_qkv16", (B * N * 3 * D + 1) / 2));
         RA_RETURN_IF_ERROR(c.be.attention_backward(c.buf["dy_out"], qkv, c.buf["saved"], nullptr,
                                                    reinterpret_cast<uint16_t*>(c.buf["d_qkv16"]), B, N, H,
                                                    Dh, dtype));
         return c.buf.get_bf16("d_qkv16", B * N * 3 * D, "d_qkv", c.out);
       }
       RA_RETURN_IF_ERROR(c.be.attention_backward(c.buf["dy_out"], qkv, c.buf["saved"], c.buf["d_qkv"], nullptr,
                                                  B, N, H, Dh, dtype));
       return c.get({"d_qkv"});
     }},
    {"adapter", [](Context& c) {  // x [M,D], A [R,D], a [R], Bw [D,R/G], b [D] → y [M,D]
       const int64_t M = c.i("M"), D = c.i("D"), R = c.i("R"), G = c.i("G");
       const bool train = c.i("train") != 0;
       const uint64_t seed = static_cast<uint64_t>(c.i("seed"));
       RA_RETURN_IF_ERROR(c.inputs({{"x", M * D}, {"A", R * D}, {"a", R}, {"Bw", D * (R / G)}, {"b", D}}));
       RA_RETURN_IF_ERROR(c.zeros("y", M * D));
       RA_RETURN_IF_ERROR(c.zeros("z", M * R));
       AdapterRef p{{c.buf["A"], c.buf["a"], nullptr, nullptr, R, D}, c.buf["Bw"], c.buf["b"], nullptr, nullptr,
                    D, R, G, c.f("scale", 1.0f), c.f("dropout")};
       // The masks' stream is 7 = key 7 ^ site 0, as the tests' reference draws them.
       RA_RETURN_IF_ERROR(c.buf.put_values<uint64_t>("step_key", {7}));
       const DropoutDraw draw{seed, c.buf.as<uint64_t>("step_key"), 0};
       RA_RETURN_IF_ERROR(adapter_forward(c.be, p, c.buf["x"], c.buf["z"], c.buf["y"], M, train, draw));
       RA_RETURN_IF_ERROR(c.get({"y", "z"}));  // z: what backward reads, after dropout
       if (!c.dout) return Status::Ok();
       RA_RETURN_IF_ERROR(c.grad_of("y", M * D));
       for (auto [n, size] : {std::pair<const char*, int64_t>{"d_A", R * D}, {"d_a", R}, {"d_Bw", D * (R / G)},
                              {"d_b", D}, {"dz", M * R}})
         RA_RETURN_IF_ERROR(c.zeros(n, size));
       p.down.dw = c.buf["d_A"];
       p.down.db = c.buf["d_a"];
       p.d_up_w = c.buf["d_Bw"];
       p.d_up_b = c.buf["d_b"];
       RA_RETURN_IF_ERROR(adapter_backward(c.be, p, c.buf["x"], c.buf["z"], c.buf["dy_y"], c.buf["dz"], M,
                                           train, draw));
       RA_RETURN_IF_ERROR(c.buf.get("dy_y", c.out));
       (*c.out)["d_x"] = std::move((*c.out)["dy_y"]);
       c.out->erase("dy_y");
       return c.get({"d_A", "d_a", "d_Bw", "d_b"});
     }},
    // x [M, ldx] (ldx ≥ D, default D), ln_w, ln_b [D], adapter A [R,D], a [R], Bw [D,R/G], b [D]
    // → u [M,D], z [M,R]; with keep: 1 also a [M,D], mean, rstd [M]; with bf16_out: 1 u in bf16
    // (widened here). Forward only: the model's backward runs layernorm's and the adapter's.
    {"layernorm_adapter", [](Context& c) {
       const int64_t M = c.i("M"), D = c.i("D"), R = c.i("R"), G = c.i("G");
       const int64_t ldx = c.attrs.count("ldx") ? c.i("ldx") : D;
       const bool train = c.i("train") != 0, keep = c.i("keep") != 0;
       if (c.dout) return InvalidArgument("layernorm_adapter is forward only (backward: layernorm's and adapter's)");
       if (G <= 0 || R % G != 0 || ldx < D) return InvalidArgument("layernorm_adapter: needs G | R and ldx >= D");
       RA_RETURN_IF_ERROR(c.inputs({{"x", M * ldx}, {"ln_w", D}, {"ln_b", D}, {"A", R * D}, {"a", R},
                                    {"Bw", D * (R / G)}, {"b", D}}));
       const bool bf16_out = c.i("bf16_out") != 0;  // u returned in bf16, widened here
       RA_RETURN_IF_ERROR(c.zeros("u16", (M * D + 1) / 2));
       RA_RETURN_IF_ERROR(c.zeros("u", M * D));
       RA_RETURN_IF_ERROR(c.zeros("z", M * R));
       if (keep) {
         RA_RETURN_IF_ERROR(c.zeros("a_out", M * D));
         RA_RETURN_IF_ERROR(c.zeros("mean", M));
         RA_RETURN_IF_ERROR(c.zeros("rstd", M));
       }
       AdapterRef p{{c.buf["A"], c.buf["a"], nullptr, nullptr, R, D}, c.buf["Bw"], c.buf["b"], nullptr, nullptr,
                    D, R, G, c.f("scale", 1.0f), c.f("dropout")};
       RA_RETURN_IF_ERROR(c.buf.put_values<uint64_t>("step_key", {7}));  // stream 7, as "adapter"
       const DropoutDraw draw{static_cast<uint64_t>(c.i("seed")), c.buf.as<uint64_t>("step_key"), 0};
       RA_RETURN_IF_ERROR(layernorm_adapter_forward(
           c.be, c.buf["x"], ldx, c.buf["ln_w"], c.buf["ln_b"], c.f("eps", 1e-6f), p, keep ? c.buf["a_out"] : nullptr,
           c.buf["z"], bf16_out ? nullptr : c.buf["u"], bf16_out ? reinterpret_cast<uint16_t*>(c.buf["u16"]) : nullptr,
           keep ? c.buf["mean"] : nullptr, keep ? c.buf["rstd"] : nullptr, M, train, draw));
       if (bf16_out)
         RA_RETURN_IF_ERROR(c.buf.get_bf16("u16", M * D, "u", c.out));
       else
         RA_RETURN_IF_ERROR(c.get({"u"}));
       RA_RETURN_IF_ERROR(c.get({"z"}));
       return keep ? c.get({"a_out", "mean", "rstd"}) : Status::Ok();
     }},
    {"patch_embed", [](Context& c) {  // images [B,3,S,S], w [D,Q], b [D] → y [B·P, D]
       const int64_t B = c.i("B"), S = c.i("S"), p = c.i("p"), D = c.i("D");
       const int64_t P = (S / p) * (S / p), Q = 3 * p * p;
       RA_RETURN_IF_ERROR(c.inputs({{"images", B * 3 * S * S}, {"w", D * Q}, {"b", D}}));
       RA_RETURN_IF_ERROR(c.zeros("patches", B * P * Q));
       RA_RETURN_IF_ERROR(c.zeros("y", B * P * D));
       LinearRef l{c.buf["w"], c.buf["b"], nullptr, nullptr, D, Q};
       RA_RETURN_IF_ERROR(c.be.patchify(c.buf["images"], c.buf["patches"], B, S, p));
       RA_RETURN_IF_ERROR(linear_forward(c.be, c.buf["patches"], B * P, l, c.buf["y"]));
       RA_RETURN_IF_ERROR(c.get({"y"}));
       if (!c.dout) return Status::Ok();
       RA_RETURN_IF_ERROR(c.grad_of("y", B * P * D));
       RA_RETURN_IF_ERROR(c.zeros("d_patches", B * P * Q));
       RA_RETURN_IF_ERROR(c.zeros("d_images", B * 3 * S * S));
       RA_RETURN_IF_ERROR(c.zeros("d_w", D * Q));
       RA_RETURN_IF_ERROR(c.zeros("d_b", D));
       l.dw = c.buf["d_w"];
       l.db = c.buf["d_b"];
       RA_RETURN_IF_ERROR(linear_backward(c.be, c.buf["dy_y"], c.buf["patches"], B * P, l, c.buf["d_patches"]));
       RA_RETURN_IF_ERROR(c.be.patchify_backward(c.buf["d_patches"], c.buf["d_images"], B, S, p));
       return c.get({"d_images", "d_w", "d_b"});
     }},
    {"tokens", [](Context& c) {  // embedded [B·P,D], cls [D], pos [N,D] → x [B,N,D]
       const int64_t B = c.i("B"), P = c.i("P"), D = c.i("D"), N = P + 1;
       RA_RETURN_IF_ERROR(c.inputs({{"embedded", B * P * D}, {"cls", D}, {"pos", N * D}}));
       RA_RETURN_IF_ERROR(c.zeros("x", B * N * D));
       RA_RETURN_IF_ERROR(c.be.tokens_forward(c.buf["embedded"], c.buf["cls"], c.buf["pos"], c.buf["x"], B, P, D));
       RA_RETURN_IF_ERROR(c.get({"x"}));
       if (!c.dout) return Status::Ok();
       RA_RETURN_IF_ERROR(c.grad_of("x", B * N * D));
       RA_RETURN_IF_ERROR(c.zeros("d_embedded", B * P * D));
       RA_RETURN_IF_ERROR(c.zeros("d_cls", D));
       RA_RETURN_IF_ERROR(c.zeros("d_pos", N * D));
       RA_RETURN_IF_ERROR(c.be.tokens_backward(c.buf["dy_x"], c.buf["d_embedded"], c.buf["d_cls"], c.buf["d_pos"], B, P, D));
       return c.get({"d_embedded", "d_cls", "d_pos"});
     }},
    // x [B,row], branch [B,row], keep [B] → y = x + keep·branch; in_place: 1 writes y over x;
    // bf16_grad: 1 returns d_branch in bf16 (widened here).
    {"residual", [](Context& c) {
       const int64_t B = c.i("B"), row = c.i("row");
       RA_RETURN_IF_ERROR(c.inputs({{"x", B * row}, {"branch", B * row}, {"keep", B}}));
       RA_RETURN_IF_ERROR(c.zeros("y", B * row));
       float* y = c.i("in_place") ? c.buf["x"] : c.buf["y"];
       RA_RETURN_IF_ERROR(c.be.residual_add(y, c.buf["x"], c.buf["branch"], c.buf["keep"], B, row));
       RA_RETURN_IF_ERROR(c.buf.get(c.i("in_place") ? "x" : "y", c.out));
       if (c.i("in_place")) {
         (*c.out)["y"] = std::move((*c.out)["x"]);
         c.out->erase("x");
       }
       if (!c.dout) return Status::Ok();
       RA_RETURN_IF_ERROR(c.grad_of("y", B * row));
       RA_RETURN_IF_ERROR(c.zeros("d_branch", B * row));
       if (c.i("bf16_grad")) {  // d_branch returned in bf16, widened here
         RA_RETURN_IF_ERROR(c.zeros("d_branch16", (B * row + 1) / 2));
         RA_RETURN_IF_ERROR(c.be.residual_backward(c.buf["dy_y"], nullptr, reinterpret_cast<uint16_t*>(c.buf["d_branch16"]),
                                                   c.buf["keep"], B, row));
         RA_RETURN_IF_ERROR(c.buf.get_bf16("d_branch16", B * row, "d_branch", c.out));
       } else {
         RA_RETURN_IF_ERROR(c.be.residual_backward(c.buf["dy_y"], c.buf["d_branch"], nullptr, c.buf["keep"], B, row));
         RA_RETURN_IF_ERROR(c.get({"d_branch"}));
       }
       RA_RETURN_IF_ERROR(c.buf.get("dy_y", c.out));
       (*c.out)["d_x"] = std::move((*c.out)["dy_y"]);  // the skip path: dx = dy
       c.out->erase("dy_y");
       return Status::Ok();
     }},
    {"cross_entropy", [](Context& c) {  // logits [B,C] + labels [B] or soft [B,C] → loss [1]
       const int64_t B = c.i("B"), C = c.i("C");
       const bool soft = c.in.count("soft") > 0;
       RA_RETURN_IF_ERROR(c.inputs({{"logits", B * C}}));
       int32_t* labels = nullptr;
       std::vector<int32_t> host_labels;
       if (soft) {
         RA_RETURN_IF_ERROR(c.inputs({{"soft", B * C}}));
       } else {
         auto it = c.in.find("labels");
         if (it == c.in.end() || static_cast<int64_t>(it->second.size()) != B)
           return InvalidArgument("cross_entropy needs labels [B] or soft [B,C]");
         for (float v : it->second) host_labels.push_back(static_cast<int32_t>(v));
         RA_RETURN_IF_ERROR(c.zeros("labels", B));
         labels = reinterpret_cast<int32_t*>(c.buf["labels"]);
         RA_RETURN_IF_ERROR(c.be.upload(labels, host_labels.data(), B * sizeof(int32_t)));
       }
       RA_RETURN_IF_ERROR(c.zeros("loss", 1));
       RA_RETURN_IF_ERROR(c.zeros("d_logits", B * C));
       RA_RETURN_IF_ERROR(c.be.cross_entropy(c.buf["logits"], labels, soft ? c.buf["soft"] : nullptr,
                                             c.f("smoothing"), c.buf["loss"], c.buf["d_logits"], B, C));
       RA_RETURN_IF_ERROR(c.get({"loss"}));
       if (!c.dout) return Status::Ok();
       auto it = c.dout->find("loss");
       if (it == c.dout->end() || it->second.size() != 1) return InvalidArgument("missing gradient for loss");
       RA_RETURN_IF_ERROR(c.get({"d_logits"}));
       for (float& v : (*c.out)["d_logits"]) v *= it->second[0];
       return Status::Ok();
     }},
    {"adamw", [](Context& c) {  // param, grad, m, v [n] → updated param, m, v
       const int64_t n = c.i("n");
       RA_RETURN_IF_ERROR(c.inputs({{"param", n}, {"grad", n}, {"m", n}, {"v", n}}));
       AdamWStep s;
       s.beta1 = c.attrs.count("beta1") ? c.attrs.at("beta1") : s.beta1;
       s.beta2 = c.attrs.count("beta2") ? c.attrs.at("beta2") : s.beta2;
       s.eps = c.f("eps", s.eps); s.step = c.i("step");
       s.grad_scale = c.f("grad_scale", 1.0f);
       const std::vector<UpdateRange> ranges = c.ranges(n, 1e-3f);
       int64_t total = 0;
       const std::vector<UpdateJob> jobs = update_jobs(ranges.data(), static_cast<int64_t>(ranges.size()), &s, &total);
       RA_RETURN_IF_ERROR(c.buf.put_values("jobs", jobs));
       RA_RETURN_IF_ERROR(c.buf.put_values("scalars", std::vector<AdamWScalars>{adamw_scalars(s)}));
       RA_RETURN_IF_ERROR(c.be.adamw_update(c.buf["param"], c.buf["grad"], c.buf["m"], c.buf["v"],
                                            c.buf.as<UpdateJob>("jobs"), static_cast<int64_t>(jobs.size()), total,
                                            c.buf.as<AdamWScalars>("scalars")));
       return c.get({"param", "m", "v"});
     }},
    {"sgd", [](Context& c) {  // param, grad, buf [n] → updated param, buf
       const int64_t n = c.i("n");
       RA_RETURN_IF_ERROR(c.inputs({{"param", n}, {"grad", n}, {"buf", n}}));
       SgdStep s;
       s.momentum = c.f("momentum"); s.dampening = c.f("dampening");
       s.nesterov = c.i("nesterov") != 0; s.first = c.i("first") != 0;
       s.grad_scale = c.f("grad_scale", 1.0f);
       const std::vector<UpdateRange> ranges = c.ranges(n, 1e-2f);
       int64_t total = 0;
       const std::vector<UpdateJob> jobs = update_jobs(ranges.data(), static_cast<int64_t>(ranges.size()), nullptr, &total);
       RA_RETURN_IF_ERROR(c.buf.put_values("jobs", jobs));
       RA_RETURN_IF_ERROR(c.buf.put_values("scalars", std::vector<SgdScalars>{sgd_scalars(s)}));
       RA_RETURN_IF_ERROR(c.be.sgd_update(c.buf["param"], c.buf["grad"], c.buf["buf"], c.buf.as<UpdateJob>("jobs"),
                                          static_cast<int64_t>(jobs.size()), total, c.buf.as<SgdScalars>("scalars")));
       return c.get({"param", "buf"});
     }},
    {"fold", [](Context& c) {  // W [O,D], c [O], adapter (A, a, Bw, b) → folded W, c
       const int64_t O = c.i("O"), D = c.i("D"), R = c.i("R"), G = c.i("G");
       RA_RETURN_IF_ERROR(c.inputs({{"W", O * D}, {"c", O}, {"A", R * D}, {"a", R}, {"Bw", D * (R / G)}, {"b", D}}));
       RA_RETURN_IF_ERROR(c.be.adapter_fold(c.buf["W"], c.buf["c"], c.buf["A"], c.buf["a"], c.buf["Bw"], c.buf["b"],
                                            O, D, R, G, c.f("scale", 1.0f)));
       return c.get({"W", "c"});
     }},
  };
  return ops;
}

}  // namespace

std::vector<std::string> op_names() {
  std::vector<std::string> names;
  for (const auto& [name, fn] : registry()) names.push_back(name);
  return names;
}

Status run_op(Backend& backend, const std::string& name, const OpAttrs& attrs,
              const HostTensors& inputs, const HostTensors* d_outputs, HostTensors* outputs) {
  auto it = registry().find(name);
  if (it == registry().end()) return InvalidArgument("no op named '" + name + "'");
  Context context{backend, attrs, inputs, d_outputs, outputs, Buffers(backend)};
  RA_RETURN_IF_ERROR(it->second(context));
  return backend.synchronize();
}

}  // namespace repadapter
