// Matrix products through cuBLASLt, in row-major terms.
//
// cuBLAS is column-major. A row-major matrix with leading dimension ld is, byte for byte, the
// column-major transpose with the same ld, so C = op(A)·op(B) (row-major, M×N) is computed as
// the column-major product Cᵀ = op(B)ᵀ·op(A)ᵀ (N×M): cuBLAS's first operand is our B, its second
// our A, and m = N, n = M, k = K. No operand is copied or transposed in memory.
//
// Precision: CUBLAS_COMPUTE_32F, float32 inputs, products and accumulation; TF32 is never used
// (cuBLASLt uses it only when asked with CUBLAS_COMPUTE_32F_FAST_TF32), so a product matches
// oneDNN's on the CPU to float rounding (~1e-6 relative for K up to a few thousand). The TF32
// mode (REPADAPTER_CUDA_TF32=1, see cuda_backend.h) is opt-in and not what the checks assume.
//
// Bias: the cuBLASLt BIAS epilogue, D = alpha·op(A)op(B) + beta·C + bias, bias broadcast over
// rows of the row-major C (over columns of cuBLAS's D, whose rows are our columns) and shared by
// every batch entry (bias batch stride 0), exactly the CPU's C = A·B + bias + beta·C. As on the
// CPU, a bias needs alpha = 1.
//
// Each distinct shape (flags, sizes, strides, pointer alignments) is planned once: descriptors
// and the heuristic's first algorithm are cached. If cuBLASLt has no algorithm for a shape (odd
// alignments, say), cublasSgemmStridedBatched does it in the same precision and a small kernel
// adds the bias.
#include <climits>
#include <string>

#include "../core/bf16.h"
#include "common.cuh"

namespace repadapter {
namespace {

// Largest power of two (at most 256) dividing the address of every batch entry.
int64_t alignment(const void* p, int64_t stride_floats, int64_t batch) {
  uint64_t a = reinterpret_cast<uint64_t>(p);
  if (batch > 1 && stride_floats != 0) a |= static_cast<uint64_t>(stride_floats) * sizeof(float);
  if (a == 0) return 256;
  const uint64_t low = a & (~a + 1);
  return static_cast<int64_t>(low > 256 ? 256 : low);
}

std::string shape_text(const Gemm& g) {
  return "M=" + std::to_string(g.M) + " N=" + std::to_string(g.N) + " K=" + std::to_string(g.K) +
         " batch=" + std::to_string(g.batch) + (g.trans_a ? " Aᵀ" : "") + (g.trans_b ? " Bᵀ" : "");
}

Status lt_error(cublasStatus_t s, const char* what, const Gemm& g) {
  return Internal(std::string("cuBLASLt: ") + what + " failed for " + shape_text(g) + ": " +
                  cublasLtGetStatusName(s) + " (" + cublasLtGetStatusString(s) + ")");
}

// C[b, m, n] += bias[n] for the fallback path.
__global__ void add_bias_kernel(float* C, const float* bias, int64_t batch, int64_t M, int64_t N,
                                int64_t ldc, int64_t stride_c) {
  RA_GRID_LOOP(i, batch * M * N) {
    const int64_t n = i % N, m = (i / N) % M, b = i / (M * N);
    C[b * stride_c + m * ldc + n] += bias[n];
  }
}

struct BiasColumn {  // dy [M, N] read down column n
  const float* dy;
  int64_t N;
  __device__ double operator()(int64_t m, int64_t n) const { return dy[m * N + n]; }
};

}  // namespace

Status CudaBackend::gemm_plan(const Gemm& g, const GemmKey& key, GemmPlan** out) {
  auto found = plans_.find(key);
  if (found != plans_.end()) {
    *out = found->second.get();
    return Status::Ok();
  }
  std::unique_ptr<GemmPlan> plan(new GemmPlan());
  const cublasComputeType_t compute =
      math_mode_ == MathMode::kTf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  cublasStatus_t s = cublasLtMatmulDescCreate(&plan->desc, compute, CUDA_R_32F);
  if (s != CUBLAS_STATUS_SUCCESS) return lt_error(s, "cublasLtMatmulDescCreate", g);
  // cuBLAS's A is our B, its B our A (see the top of this file).
  const int32_t op_a = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int32_t op_b = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  s = cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a));
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b));
  if (s == CUBLAS_STATUS_SUCCESS && g.bias) {
    const uint32_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const int64_t bias_stride = 0;  // one bias for every batch entry
    s = cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
    // The heuristic reads the bias pointer's alignment, so set it before asking.
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias));
    if (s == CUBLAS_STATUS_SUCCESS && g.batch > 1)
      s = cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &bias_stride,
                                         sizeof(bias_stride));
  }
  if (s != CUBLAS_STATUS_SUCCESS) return lt_error(s, "cublasLtMatmulDescSetAttribute", g);

  // Stored shapes, column-major: cuBLAS's A (our B) is m×k or k×m, its B (our A) k×n or n×k.
  auto layout = [&](cublasLtMatrixLayout_t* l, int64_t rows, int64_t cols, int64_t ld,
                    int64_t stride) -> cublasStatus_t {
    cublasStatus_t st = cublasLtMatrixLayoutCreate(l, CUDA_R_32F, static_cast<uint64_t>(rows),
                                                   static_cast<uint64_t>(cols), ld);
    if (st != CUBLAS_STATUS_SUCCESS || g.batch == 1) return st;
    const int32_t count = static_cast<int32_t>(g.batch);
    st = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count));
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    return cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                            sizeof(stride));
  };
  s = layout(&plan->a, g.trans_b ? g.K : g.N, g.trans_b ? g.N : g.K, g.ldb, g.stride_b);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = layout(&plan->b, g.trans_a ? g.M : g.K, g.trans_a ? g.K : g.M, g.lda, g.stride_a);
  if (s == CUBLAS_STATUS_SUCCESS) s = layout(&plan->c, g.N, g.M, g.ldc, g.stride_c);
  if (s != CUBLAS_STATUS_SUCCESS) return lt_error(s, "cublasLtMatrixLayoutCreate", g);

  cublasLtMatmulPreference_t pref = nullptr;
  s = cublasLtMatmulPreferenceCreate(&pref);
  if (s != CUBLAS_STATUS_SUCCESS) return lt_error(s, "cublasLtMatmulPreferenceCreate", g);
  const uint64_t ws = workspace_bytes_;
  // cuBLASLt assumes 256-byte aligned operands unless told otherwise; slices of qkv are not.
  const uint32_t align_a = static_cast<uint32_t>(key[14]), align_b = static_cast<uint32_t>(key[13]),
                 align_c = static_cast<uint32_t>(key[15]);
  s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a));
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b));
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c));
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c));
  if (s != CUBLAS_STATUS_SUCCESS) {
    cublasLtMatmulPreferenceDestroy(pref);
    return lt_error(s, "cublasLtMatmulPreferenceSetAttribute", g);
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found_count = 0;
  s = cublasLtMatmulAlgoGetHeuristic(lt_, plan->desc, plan->a, plan->b, plan->c, plan->c, pref, 1,
                                     &result, &found_count);
  cublasLtMatmulPreferenceDestroy(pref);
  // NOT_SUPPORTED (no algorithm) is not an error: the fallback takes this shape.
  if (s != CUBLAS_STATUS_SUCCESS && s != CUBLAS_STATUS_NOT_SUPPORTED)
    return lt_error(s, "cublasLtMatmulAlgoGetHeuristic", g);
  plan->lt_ok = s == CUBLAS_STATUS_SUCCESS && found_count > 0 && result.state == CUBLAS_STATUS_SUCCESS;
  if (plan->lt_ok) plan->algo = result.algo;
  GemmPlan* raw = plan.get();
  try {
    plans_.emplace(key, std::move(plan));
  } catch (...) {
    return OutOfMemory("gemm: could not cache a cuBLASLt plan");
  }
  *out = raw;
  return Status::Ok();
}

Status CudaBackend::gemm_fallback(const Gemm& g) {
  for (int64_t v : {g.M, g.N, g.K, g.batch, g.lda, g.ldb, g.ldc})
    if (v > INT_MAX)
      return InvalidArgument("gemm: " + shape_text(g) + " is too large for cublasSgemmStridedBatched");
  const cublasOperation_t op_a = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasStatus_t s = cublasSgemmStridedBatched(
      blas_, op_a, op_b, static_cast<int>(g.N), static_cast<int>(g.M), static_cast<int>(g.K),
      &g.alpha, g.B, static_cast<int>(g.ldb), g.stride_b, g.A, static_cast<int>(g.lda), g.stride_a,
      &g.beta, g.C, static_cast<int>(g.ldc), g.stride_c, static_cast<int>(g.batch));
  if (s != CUBLAS_STATUS_SUCCESS)
    return Internal("cuBLAS: cublasSgemmStridedBatched failed for " + shape_text(g) + ": " +
                    cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ")");
  if (!g.bias) return Status::Ok();
  add_bias_kernel<<<blocks_for(g.batch * g.M * g.N), 256, 0, stream_>>>(g.C, g.bias, g.batch, g.M, g.N,
                                                                          g.ldc, g.stride_c);
  return launched("gemm (bias of the fallback path)");
}

Status CudaBackend::gemm(const Gemm& g) {
  RA_CUDA_ENTRY();
  return gemm_unlocked(g);
}

Status CudaBackend::gemm_unlocked(const Gemm& g) {
  if (g.M <= 0 || g.N <= 0 || g.K <= 0 || g.batch <= 0)
    return InvalidArgument("gemm: empty or negative dimensions");
  if (g.bias && g.alpha != 1.0f) return InvalidArgument("gemm: a bias needs alpha = 1");
  if (g.B_bf16) return Internal("gemm: bf16 operands are not implemented on CUDA yet");
  const bool batched = g.batch > 1;
  const GemmKey key = {g.trans_a,
                       g.trans_b,
                       g.M,
                       g.N,
                       g.K,
                       g.batch,
                       g.lda,
                       batched ? g.stride_a : 0,
                       g.ldb,
                       batched ? g.stride_b : 0,
                       g.ldc,
                       batched ? g.stride_c : 0,
                       g.bias != nullptr,
                       alignment(g.A, g.stride_a, g.batch),  // [13] our A = cuBLAS's B
                       alignment(g.B, g.stride_b, g.batch),  // [14] our B = cuBLAS's A
                       alignment(g.C, g.stride_c, g.batch),  // [15] C and D
                       g.bias ? alignment(g.bias, 0, 1) : 0,
                       static_cast<int64_t>(math_mode_)};
  GemmPlan* plan = nullptr;
  RA_RETURN_IF_ERROR(gemm_plan(g, key, &plan));
  if (!plan->lt_ok) return gemm_fallback(g);
  if (g.bias) {
    // The plan is shared by every bias of this alignment; point it at this call's.
    const cublasStatus_t s = cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias));
    if (s != CUBLAS_STATUS_SUCCESS) return lt_error(s, "setting the bias pointer", g);
  }
  // beta = 0: cuBLASLt does not read C, so C may hold anything (the checks fill it with NaN).
  const cublasStatus_t s = cublasLtMatmul(lt_, plan->desc, &g.alpha, g.B, plan->a, g.A, plan->b, &g.beta,
                                          g.C, plan->c, g.C, plan->c, &plan->algo, workspace_,
                                          workspace_bytes_, stream_);
  if (s == CUBLAS_STATUS_NOT_SUPPORTED) {
    plan->lt_ok = false;  // remember: this shape takes the fallback from now on
    return gemm_fallback(g);
  }
  if (s != CUBLAS_STATUS_SUCCESS) return lt_error(s, "cublasLtMatmul", g);
  return Status::Ok();
}

// db[n] += Σ_m dy[m, n], in double, rows in fixed chunks: deterministic.
Status CudaBackend::bias_backward(const float* dy, float* db, int64_t M, int64_t N) {
  RA_CUDA_ENTRY();
  return cuda_detail::column_sums(*this, "bias_backward", BiasColumn{dy, N}, M, N, 1.0, db);
}

}  // namespace repadapter

namespace repadapter {
namespace {
__global__ void convert_to_bf16_kernel(const float* x, uint16_t* y, int64_t n) {
  RA_GRID_LOOP(i, n) y[i] = bf16_from_float(x[i]);
}
}  // namespace

Status CudaBackend::convert_to_bf16(const float* x, uint16_t* y, int64_t n) {
  RA_CUDA_ENTRY();
  if (n <= 0) return Status::Ok();
  convert_to_bf16_kernel<<<blocks_for(n), 256, 0, stream_>>>(x, y, n);
  return launched("convert_to_bf16");
}

}  // namespace repadapter
