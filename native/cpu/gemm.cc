// Matrix products on the CPU through oneDNN's matmul primitive.
//
// A primitive is compiled once per (shapes, strides, flags) and cached: creation costs far more
// than execution. Transposes, leading dimensions and batch strides are expressed as memory
// strides, so no operand is ever copied. Scratchpads are owned per thread ("user" mode) so the
// same primitive may run concurrently, e.g. once per attention head inside an OpenMP loop.
//
// bf16 GEMMs (Gemm::B_bf16) run oneDNN's bf16 matmul where the CPU has bf16 dot products
// (avx512_core_bf16 or AMX): the activation operand is rounded to a dense bf16 copy, the
// weights are bf16 already. Elsewhere they are emulated — the same rounded operands multiplied
// in float32 — so the bf16 numbers can be checked on any CPU, without the speed-up.
#include <algorithm>
#include <array>
#include <cstring>
#include <unordered_map>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

#include "../core/bf16.h"
#include "cpu_backend.h"
#include "vmath.h"

namespace repadapter {
namespace {

using Key = std::array<int64_t, 16>;

struct Compiled {
  dnnl::matmul primitive;
  dnnl::memory::desc a, b, c, bias, scratch;
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

using dt = dnnl::memory::data_type;

dnnl::memory::desc operand(int64_t batch, int64_t rows, int64_t cols, bool transposed,
                           int64_t ld, int64_t stride, dt type = dt::f32) {
  using dims = dnnl::memory::dims;
  // Logical [batch,] rows × cols; a transposed operand is stored cols × rows with leading dim ld.
  dims strides2 = transposed ? dims{1, ld} : dims{ld, 1};
  if (batch == 1) return {dims{rows, cols}, type, strides2};
  return {dims{batch, rows, cols}, type, dims{stride, strides2[0], strides2[1]}};
}

// Key slot 15: the operand types (0 float32; 1 bf16 A and B, float32 C; 2 bf16 A, B and C).
constexpr int kKeyBf16 = 15;

Status compile(const Gemm& g, const Key& key, const Compiled** out) {
  static std::mutex mutex;
  static std::map<Key, Compiled> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find(key);
  if (found != cache.end()) {
    *out = &found->second;
    return Status::Ok();
  }
  try {
    Compiled c;
    const dt ab = key[kKeyBf16] ? dt::bf16 : dt::f32;
    c.a = operand(g.batch, g.M, g.K, g.trans_a, g.lda, g.stride_a, ab);
    c.b = operand(g.batch, g.K, g.N, g.trans_b, g.ldb, g.stride_b, ab);
    c.c = operand(g.batch, g.M, g.N, false, g.ldc, g.stride_c, key[kKeyBf16] == 2 ? dt::bf16 : dt::f32);
    if (g.bias) c.bias = operand(g.batch, 1, g.N, false, g.N, 0);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (g.alpha != 1.0f) attr.set_output_scales(0, {g.alpha});
    if (g.beta != 0.0f) {
      dnnl::post_ops ops;
      ops.append_sum(g.beta);
      attr.set_post_ops(ops);
    }
    dnnl::matmul::desc desc = g.bias ? dnnl::matmul::desc(c.a, c.b, c.bias, c.c)
                                     : dnnl::matmul::desc(c.a, c.b, c.c);
    dnnl::matmul::primitive_desc pd(desc, attr, cpu_engine());
    c.scratch = pd.scratchpad_desc();
    c.primitive = dnnl::matmul(pd);
    *out = &cache.emplace(key, std::move(c)).first->second;
    return Status::Ok();
  } catch (const dnnl::error& e) {
    return Internal(std::string("oneDNN could not build a matmul for M=") + std::to_string(g.M) +
                    " N=" + std::to_string(g.N) + " K=" + std::to_string(g.K) + ": " + e.what());
  }
}

// C = alpha·A·Bᵀ + beta·C + bias for a handful of output columns (the adapter's
// down-projection, N = R = 8): one dot product of two contiguous rows per output. oneDNN's
// blocked kernels pack all of A for so few columns and run at 1% of peak here.
RA_VECTOR_CLONES void skinny_rows(const Gemm& g, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; ++m) {
    const float* a = g.A + m * g.lda;
    float* c = g.C + m * g.ldc;
    for (int64_t n = 0; n < g.N; ++n) {
      const float* b = g.B + n * g.ldb;
      float dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t k = 0; k < g.K; ++k) dot += a[k] * b[k];
      float v = g.alpha * dot + (g.bias ? g.bias[n] : 0.0f);
      c[n] = g.beta != 0.0f ? v + g.beta * c[n] : v;
    }
  }
}

bool is_skinny(const Gemm& g) {
  return g.batch == 1 && !g.trans_a && g.trans_b && g.N <= 16 && !g.B_bf16;
}

// Runs a compiled primitive; A, B and C point at data of the types the key says.
Status execute(const Gemm& g, const Compiled& c, const void* A, const void* B, void* C) {
  thread_local dnnl::stream stream(cpu_engine());
  thread_local std::vector<char> scratch;
  size_t scratch_bytes = c.scratch.get_size();
  if (scratch.size() < scratch_bytes) scratch.resize(scratch_bytes);
  try {
    auto& eng = cpu_engine();
    std::unordered_map<int, dnnl::memory> args = {
        {DNNL_ARG_SRC, dnnl::memory(c.a, eng, const_cast<void*>(A))},
        {DNNL_ARG_WEIGHTS, dnnl::memory(c.b, eng, const_cast<void*>(B))},
        {DNNL_ARG_DST, dnnl::memory(c.c, eng, C)},
        {DNNL_ARG_SCRATCHPAD, dnnl::memory(c.scratch, eng, scratch.data())},
    };
    if (g.bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(c.bias, eng, const_cast<float*>(g.bias)));
    c.primitive.execute(stream, args);
    stream.wait();
  } catch (const dnnl::error& e) {
    return Internal(std::string("oneDNN matmul failed: ") + e.what());
  }
  return Status::Ok();
}

Key key_of(const Gemm& g, bool bf16) {
  Key key = {g.trans_a, g.trans_b, g.M, g.N, g.K, g.batch, g.lda, g.stride_a, g.ldb, g.stride_b,
             g.ldc, g.stride_c, g.bias != nullptr, 0, 0, bf16 ? (g.C_bf16 ? 2 : 1) : 0};
  static_assert(sizeof(float) == 4, "float32");
  std::memcpy(&key[13], &g.alpha, sizeof(float));
  std::memcpy(&key[14], &g.beta, sizeof(float));
  return key;
}

// Copies `batches` stored matrices of rows × cols (row stride ld, batch stride `stride`) into a
// dense buffer, converting each value.
template <typename From, typename To, typename Convert>
void densify(const From* src, int64_t batches, int64_t rows, int64_t cols, int64_t ld,
             int64_t stride, To* dst, Convert convert) {
#pragma omp parallel for collapse(2) schedule(static) if (!omp_in_parallel() && batches * rows * cols > 16384)
  for (int64_t b = 0; b < batches; ++b)
    for (int64_t r = 0; r < rows; ++r) {
      const From* in = src + b * stride + r * ld;
      To* out = dst + (b * rows + r) * cols;
      for (int64_t c = 0; c < cols; ++c) out[c] = convert(in[c]);
    }
}

bool probe_bf16_matmul() {
  // avx512_core_bf16 is a superset bit pattern of the lower ISA levels (dnnl_types.h).
  const int isa = static_cast<int>(dnnl::get_effective_cpu_isa());
  const int bf16 = static_cast<int>(dnnl::cpu_isa::avx512_core_bf16);
  if ((isa & bf16) != bf16) return false;
  try {
    dnnl::memory::desc a({8, 8}, dt::bf16, dnnl::memory::format_tag::ab);
    dnnl::memory::desc c({8, 8}, dt::f32, dnnl::memory::format_tag::ab);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, a, c), cpu_engine());
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

// op(A) · op(B) with both operands in bf16 and float32 accumulation; A given in float32 (then
// rounded) or in bf16 (A_bf16), the result in float32 (C) or rounded to bf16 (C_bf16).
Status bf16_gemm(CpuBackend& be, const Gemm& g) {
  // Operands as stored: a transposed A is K × M, a transposed B is N × K.
  const int64_t a_rows = g.trans_a ? g.K : g.M, a_cols = g.trans_a ? g.M : g.K;
  const int64_t b_rows = g.trans_b ? g.N : g.K, b_cols = g.trans_b ? g.K : g.N;
  const int64_t a_batches = g.batch > 1 && g.stride_a ? g.batch : 1;
  const int64_t b_batches = g.batch > 1 && g.stride_b ? g.batch : 1;
  Gemm dense = g;  // A becomes a dense copy; B keeps its layout unless expanded below
  dense.B_bf16 = nullptr;
  dense.lda = a_cols;
  dense.stride_a = a_batches > 1 ? a_rows * a_cols : 0;
  const size_t a_n = static_cast<size_t>(a_batches * a_rows * a_cols);
  if (be.bf16_native()) {
    // A layout oneDNN has no bf16 kernel for falls back to the emulation below, which gives the
    // same numbers; the refusal is remembered, as trying costs as much as a small product.
    static std::mutex mutex;
    static std::set<Key> refused;
    const Key key = key_of(dense, true);
    bool known_refused;
    {
      std::lock_guard<std::mutex> lock(mutex);
      known_refused = refused.count(key) != 0;
    }
    const Compiled* c = nullptr;
    if (!known_refused && compile(dense, key, &c).ok()) {
      thread_local std::vector<uint16_t> a16;
      if (a16.size() < a_n) a16.resize(a_n);
      if (g.A_bf16)
        densify(g.A_bf16, a_batches, a_rows, a_cols, g.lda, g.stride_a, a16.data(), [](uint16_t v) { return v; });
      else
        densify(g.A, a_batches, a_rows, a_cols, g.lda, g.stride_a, a16.data(), bf16_from_float);
      return execute(dense, *c, a16.data(), g.B_bf16, g.C_bf16 ? static_cast<void*>(g.C_bf16) : g.C);
    }
    std::lock_guard<std::mutex> lock(mutex);
    refused.insert(key);
  }
  thread_local std::vector<float> a32, b32;
  const size_t b_n = static_cast<size_t>(b_batches * b_rows * b_cols);
  if (a32.size() < a_n) a32.resize(a_n);
  if (b32.size() < b_n) b32.resize(b_n);
  if (g.A_bf16)
    densify(g.A_bf16, a_batches, a_rows, a_cols, g.lda, g.stride_a, a32.data(), bf16_to_float);
  else
    densify(g.A, a_batches, a_rows, a_cols, g.lda, g.stride_a, a32.data(),
            [](float x) { return bf16_to_float(bf16_from_float(x)); });
  densify(g.B_bf16, b_batches, b_rows, b_cols, g.ldb, g.stride_b, b32.data(), bf16_to_float);
  dense.A = a32.data();
  dense.A_bf16 = nullptr;
  dense.B = b32.data();
  dense.ldb = b_cols;
  dense.stride_b = b_batches > 1 ? b_rows * b_cols : 0;
  if (!g.C_bf16) return be.gemm(dense);
  // A bf16 result: the float32 one (bias included), rounded.
  thread_local std::vector<float> c32;
  if (c32.size() < static_cast<size_t>(g.M * g.N)) c32.resize(static_cast<size_t>(g.M * g.N));
  dense.C_bf16 = nullptr;
  dense.C = c32.data();
  dense.ldc = g.N;
  RA_RETURN_IF_ERROR(be.gemm(dense));
#pragma omp parallel for schedule(static) if (g.M * g.N > 16384)
  for (int64_t m = 0; m < g.M; ++m)
    for (int64_t n = 0; n < g.N; ++n) g.C_bf16[m * g.ldc + n] = bf16_from_float(c32[m * g.N + n]);
  return Status::Ok();
}

}  // namespace

Status CpuBackend::gemm(const Gemm& g) {
  if (g.M <= 0 || g.N <= 0 || g.K <= 0 || g.batch <= 0)
    return InvalidArgument("gemm: empty or negative dimensions");
  // oneDNN scales the bias together with the product; we never need that, so forbid it.
  if (g.bias && g.alpha != 1.0f) return InvalidArgument("gemm: a bias needs alpha = 1");
  RA_RETURN_IF_ERROR(check_bf16_activations(g));
  if (g.B_bf16) return bf16_gemm(*this, g);
  if (is_skinny(g)) {
    if (omp_in_parallel()) {
      skinny_rows(g, 0, g.M);
    } else {
#pragma omp parallel for schedule(static)
      for (int64_t m0 = 0; m0 < g.M; m0 += 64) skinny_rows(g, m0, std::min(g.M, m0 + 64));
    }
    return Status::Ok();
  }
  const Compiled* c = nullptr;
  RA_RETURN_IF_ERROR(compile(g, key_of(g, false), &c));
  return execute(g, *c, g.A, g.B, g.C);
}

bool CpuBackend::bf16_native() const {
  static const bool native = probe_bf16_matmul();
  return native;
}

RA_VECTOR_CLONES static void convert_range(const float* x, uint16_t* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_from_float(x[i]);
}

Status CpuBackend::convert_to_bf16(const float* x, uint16_t* y, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i0 = 0; i0 < n; i0 += 16384) convert_range(x + i0, y + i0, std::min<int64_t>(16384, n - i0));
  return Status::Ok();
}

Status CpuBackend::bias_backward(const float* dy, float* db, int64_t M, int64_t N) {
  // Columns are split across threads; each thread walks all rows of its columns, so the sum
  // order per column is fixed and the result is deterministic.
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 64) {
      int64_t n1 = n0 + 64 < N ? n0 + 64 : N;
      double acc[64] = {0};
      for (int64_t m = 0; m < M; ++m) {
        const float* row = dy + m * N;
        for (int64_t n = n0; n < n1; ++n) acc[n - n0] += row[n];
      }
      for (int64_t n = n0; n < n1; ++n) db[n] += static_cast<float>(acc[n - n0]);
    }
  }
  return Status::Ok();
}

}  // namespace repadapter
