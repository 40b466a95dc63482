// Matrix products on the CPU through oneDNN's matmul primitive.
//
// A primitive is compiled once per (shapes, strides, flags) and cached: creation costs far more
// than execution. Transposes, leading dimensions and batch strides are expressed as memory
// strides, so no operand is ever copied. Scratchpads are owned per thread ("user" mode) so the
// same primitive may run concurrently, e.g. once per attention head inside an OpenMP loop.
#include <algorithm>
#include <array>
#include <cstring>
#include <unordered_map>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

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

dnnl::memory::desc operand(int64_t batch, int64_t rows, int64_t cols, bool transposed,
                           int64_t ld, int64_t stride) {
  using dims = dnnl::memory::dims;
  // Logical [batch,] rows × cols; a transposed operand is stored cols × rows with leading dim ld.
  dims strides2 = transposed ? dims{1, ld} : dims{ld, 1};
  if (batch == 1) return {dims{rows, cols}, dnnl::memory::data_type::f32, strides2};
  return {dims{batch, rows, cols}, dnnl::memory::data_type::f32,
          dims{stride, strides2[0], strides2[1]}};
}

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
    c.a = operand(g.batch, g.M, g.K, g.trans_a, g.lda, g.stride_a);
    c.b = operand(g.batch, g.K, g.N, g.trans_b, g.ldb, g.stride_b);
    c.c = operand(g.batch, g.M, g.N, false, g.ldc, g.stride_c);
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

bool is_skinny(const Gemm& g) { return g.batch == 1 && !g.trans_a && g.trans_b && g.N <= 16; }

}  // namespace

Status CpuBackend::gemm(const Gemm& g) {
  if (g.M <= 0 || g.N <= 0 || g.K <= 0 || g.batch <= 0)
    return InvalidArgument("gemm: empty or negative dimensions");
  // oneDNN scales the bias together with the product; we never need that, so forbid it.
  if (g.bias && g.alpha != 1.0f) return InvalidArgument("gemm: a bias needs alpha = 1");
  if (is_skinny(g)) {
    if (omp_in_parallel()) {
      skinny_rows(g, 0, g.M);
    } else {
#pragma omp parallel for schedule(static)
      for (int64_t m0 = 0; m0 < g.M; m0 += 64) skinny_rows(g, m0, std::min(g.M, m0 + 64));
    }
    return Status::Ok();
  }
  Key key = {g.trans_a, g.trans_b, g.M, g.N, g.K, g.batch, g.lda, g.stride_a, g.ldb, g.stride_b,
             g.ldc, g.stride_c, g.bias != nullptr, 0, 0, 0};
  static_assert(sizeof(float) == 4, "float32");
  std::memcpy(&key[13], &g.alpha, sizeof(float));
  std::memcpy(&key[14], &g.beta, sizeof(float));
  const Compiled* c = nullptr;
  RA_RETURN_IF_ERROR(compile(g, key, &c));

  thread_local dnnl::stream stream(cpu_engine());
  thread_local std::vector<char> scratch;
  size_t scratch_bytes = c->scratch.get_size();
  if (scratch.size() < scratch_bytes) scratch.resize(scratch_bytes);
  try {
    auto& eng = cpu_engine();
    std::unordered_map<int, dnnl::memory> args = {
        {DNNL_ARG_SRC, dnnl::memory(c->a, eng, const_cast<float*>(g.A))},
        {DNNL_ARG_WEIGHTS, dnnl::memory(c->b, eng, const_cast<float*>(g.B))},
        {DNNL_ARG_DST, dnnl::memory(c->c, eng, g.C)},
        {DNNL_ARG_SCRATCHPAD, dnnl::memory(c->scratch, eng, scratch.data())},
    };
    if (g.bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(c->bias, eng, const_cast<float*>(g.bias)));
    c->primitive.execute(stream, args);
    stream.wait();
  } catch (const dnnl::error& e) {
    return Internal(std::string("oneDNN matmul failed: ") + e.what());
  }
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
