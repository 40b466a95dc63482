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
// bf16 (Gemm::B_bf16): A is rounded to nearest-even bf16 into a dense copy in the backend's
// scratch (the weights B are bf16 already), then cuBLASLt multiplies CUDA_R_16BF operands on the
// tensor cores with CUBLAS_COMPUTE_32F: exact bf16 products (8 × 8 significant bits fit a
// float32), float32 accumulation, float32 C and bias. That is the CPU's bf16 GEMM (oneDNN's bf16
// matmul, or its emulation) up to summation order and the tensor cores' rounding of partial
// sums, whatever the math mode: TF32 concerns float32 inputs only. The copy is one pass over A
// (read 4 bytes, write 2 per element) against 2·N flops per element of A in the product: at the
// ViT's N ≥ 768 a fraction of the product's time, not nothing. It lives in scratch, not in
// cuBLASLt's workspace, so the two never overlap. A bf16 plan is keyed apart from the float32
// plan of the same shape.
//
// bf16 activations (Gemm::A_bf16, C_bf16): an A given in bf16 is read as it is, with no copy; a
// bf16 C is cuBLASLt's D in CUDA_R_16BF, the float32 sum plus bias rounded to nearest even once,
// as the CPU's bf16 matmul with a bf16 destination does.
//
// Bias: the cuBLASLt BIAS epilogue, D = alpha·op(A)op(B) + beta·C + bias, bias broadcast over
// rows of the row-major C (over columns of cuBLAS's D, whose rows are our columns) and shared by
// every batch entry (bias batch stride 0), exactly the CPU's C = A·B + bias + beta·C. As on the
// CPU, a bias needs alpha = 1.
//
// No GELU epilogue: cuBLASLt's GELU is the tanh approximation (PyTorch fuses it only for
// gelu(approximate='tanh')), while timm's ViT uses the exact erf form, so fc1's GELU stays its own
// kernel (gelu.cu) and the numbers stay those of the CPU and of PyTorch.
//
// Each distinct shape (flags, sizes, strides, pointer alignments) is planned once: descriptors
// and the heuristic's first algorithm are cached. If cuBLASLt has no algorithm for a shape (odd
// alignments, say), cublasSgemmStridedBatched (bf16: cublasGemmStridedBatchedEx with 16BF inputs
// and 32F compute) does it in the same precision and a small kernel adds the bias.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "../core/bf16.h"
#include "common.cuh"

namespace repadapter {
namespace {

// Largest power of two (at most 256) dividing the address of every batch entry; the batch stride
// counts elements of `element` bytes.
int64_t alignment(const void* p, int64_t stride, int64_t batch, size_t element = sizeof(float)) {
  uint64_t a = reinterpret_cast<uint64_t>(p);
  if (batch > 1 && stride != 0) a |= static_cast<uint64_t>(stride) * element;
  if (a == 0) return 256;
  const uint64_t low = a & (~a + 1);
  return static_cast<int64_t>(low > 256 ? 256 : low);
}

std::string shape_text(const Gemm& g) {
  return "M=" + std::to_string(g.M) + " N=" + std::to_string(g.N) + " K=" + std::to_string(g.K) +
         " batch=" + std::to_string(g.batch) + (g.trans_a ? " Aᵀ" : "") + (g.trans_b ? " Bᵀ" : "") +
         (g.B_bf16 ? " bf16" : "");
}

Status lt_error(cublasStatus_t s, const char* what, const Gemm& g) {
  return Internal(std::string("cuBLASLt: ") + what + " failed for " + shape_text(g) + ": " +
                  cublasLtGetStatusName(s) + " (" + cublasLtGetStatusString(s) + ")");
}

// C[b, m, n] += bias[n] for the fallback path.
// The fallback's bf16 C: c16[m·ldc + n] = bf16(c32[m·N + n] + bias[n]).
__global__ void bias_round_kernel(const float* c32, const float* bias, int64_t M, int64_t N,
                                  int64_t ldc, uint16_t* c16) {
  RA_GRID_LOOP(i, M * N) {
    const int64_t m = i / N, n = i % N;
    c16[m * ldc + n] = bf16_from_float(bias ? __fadd_rn(c32[i], bias[n]) : c32[i]);
  }
}

__global__ void add_bias_kernel(float* C, const float* bias, int64_t batch, int64_t M, int64_t N,
                                int64_t ldc, int64_t stride_c) {
  RA_GRID_LOOP(i, batch * M * N) {
    const int64_t n = i % N, m = (i / N) % M, b = i / (M * N);
    C[b * stride_c + m * ldc + n] += bias[n];
  }
}

// The stored A of a bf16 gemm (rows × cols per batch entry, row stride ld, batch stride
// `stride`) as dense bf16: dst[(b·rows + r)·cols + c] = bf16(src[b·stride + r·ld + c]).
// blockIdx.y walks the rows (all batch entries in a row), x the columns, so no thread divides
// per element.
__global__ void dense_bf16_kernel(const float* src, int64_t ld, int64_t stride, int64_t rows,
                                  int64_t cols, int64_t total_rows, uint16_t* dst) {
  for (int64_t row = blockIdx.y; row < total_rows; row += gridDim.y) {
    const float* in = src + (row / rows) * stride + (row % rows) * ld;
    uint16_t* out = dst + row * cols;
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x)
      out[c] = bf16_from_float(in[c]);
  }
}

// The same, four columns per thread: 16-byte loads, 8-byte stores. Needs cols, ld and stride
// multiples of 4 and src 16-byte aligned (dst is scratch, 256-byte aligned, and every dense row
// starts a multiple of 8 bytes in).
__global__ void dense_bf16_x4_kernel(const float* src, int64_t ld, int64_t stride, int64_t rows,
                                     int64_t cols, int64_t total_rows, uint16_t* dst) {
  const int64_t quads = cols / 4;
  for (int64_t row = blockIdx.y; row < total_rows; row += gridDim.y) {
    const float4* in = reinterpret_cast<const float4*>(src + (row / rows) * stride + (row % rows) * ld);
    uint2* out = reinterpret_cast<uint2*>(dst + row * cols);
    for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < quads;
         q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const float4 v = in[q];
      uint2 o;  // little-endian: the lower half of each word is the earlier column
      o.x = static_cast<uint32_t>(bf16_from_float(v.x)) | static_cast<uint32_t>(bf16_from_float(v.y)) << 16;
      o.y = static_cast<uint32_t>(bf16_from_float(v.z)) | static_cast<uint32_t>(bf16_from_float(v.w)) << 16;
      out[q] = o;
    }
  }
}

// The bf16 gemm without cuBLASLt: A is the dense bf16 copy (row stride lda16, batch stride
// stride_a16), B the caller's bf16 B.
Status gemm_ex_fallback(CudaBackend& be, cublasHandle_t blas, const Gemm& g, const uint16_t* a16,
                        int64_t lda16, int64_t stride_a16) {
  for (int64_t v : {g.M, g.N, g.K, g.batch, lda16, g.ldb, g.ldc})
    if (v > INT_MAX)
      return InvalidArgument("gemm: " + shape_text(g) + " is too large for cublasGemmStridedBatchedEx");
  const cublasOperation_t op_a = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasStatus_t s = cublasGemmStridedBatchedEx(
      blas, op_a, op_b, static_cast<int>(g.N), static_cast<int>(g.M), static_cast<int>(g.K),
      &g.alpha, g.B_bf16, CUDA_R_16BF, static_cast<int>(g.ldb), g.stride_b, a16, CUDA_R_16BF,
      static_cast<int>(lda16), stride_a16, &g.beta, g.C, CUDA_R_32F, static_cast<int>(g.ldc),
      g.stride_c, static_cast<int>(g.batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (s != CUBLAS_STATUS_SUCCESS)
    return Internal("cuBLAS: cublasGemmStridedBatchedEx failed for " + shape_text(g) + ": " +
                    cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ")");
  if (!g.bias) return Status::Ok();
  add_bias_kernel<<<be.blocks_for(g.batch * g.M * g.N), 256, 0, be.stream()>>>(
      g.C, g.bias, g.batch, g.M, g.N, g.ldc, g.stride_c);
  return be.launched("gemm (bias of the bf16 fallback path)");
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
  const bool bf16 = key[18] != 0;
  const cudaDataType_t ab_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const cudaDataType_t c_type = key[19] ? CUDA_R_16BF : CUDA_R_32F;
  const cublasComputeType_t compute = !bf16 && math_mode_ == MathMode::kTf32
                                          ? CUBLAS_COMPUTE_32F_FAST_TF32
                                          : CUBLAS_COMPUTE_32F;
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
    // The bias takes D's type by default (float32 here, bf16 inputs or not); said explicitly so
    // that a bf16 plan can never read the float32 bias as bf16.
    const int32_t bias_type = CUDA_R_32F;
    if (s == CUBLAS_STATUS_SUCCESS && bf16)
      s = cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                         sizeof(bias_type));
  }
  if (s != CUBLAS_STATUS_SUCCESS) return lt_error(s, "cublasLtMatmulDescSetAttribute", g);

  // Stored shapes, column-major: cuBLAS's A (our B) is m×k or k×m, its B (our A) k×n or n×k.
  auto layout = [&](cublasLtMatrixLayout_t* l, cudaDataType_t type, int64_t rows, int64_t cols,
                    int64_t ld, int64_t stride) -> cublasStatus_t {
    cublasStatus_t st = cublasLtMatrixLayoutCreate(l, type, static_cast<uint64_t>(rows),
                                                   static_cast<uint64_t>(cols), ld);
    if (st != CUBLAS_STATUS_SUCCESS || g.batch == 1) return st;
    const int32_t count = static_cast<int32_t>(g.batch);
    st = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count));
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    return cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                            sizeof(stride));
  };
  s = layout(&plan->a, ab_type, g.trans_b ? g.K : g.N, g.trans_b ? g.N : g.K, g.ldb, g.stride_b);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = layout(&plan->b, ab_type, g.trans_a ? g.M : g.K, g.trans_a ? g.K : g.M, g.lda, g.stride_a);
  if (s == CUBLAS_STATUS_SUCCESS) s = layout(&plan->c, c_type, g.N, g.M, g.ldc, g.stride_c);
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
  RA_RETURN_IF_ERROR(check_bf16_activations(g));
  const bool bf16 = g.B_bf16 != nullptr;
  // What cuBLAS reads as our A and B, and the shape its plan is made for: the caller's operands,
  // or for bf16 the dense bf16 copy of A (in its stored orientation; none when A is bf16
  // already) and the caller's bf16 B.
  Gemm shape = g;
  const void* a = g.A;
  const void* b = g.B;
  void* c = g.C_bf16 ? static_cast<void*>(g.C_bf16) : g.C;
  size_t a_element = sizeof(float), b_element = sizeof(float);
  const size_t c_element = g.C_bf16 ? sizeof(uint16_t) : sizeof(float);
  // Stored A: K × M when transposed. A batch stride of 0 shares one A, copied once.
  const int64_t rows = g.trans_a ? g.K : g.M, cols = g.trans_a ? g.M : g.K;
  const int64_t batches = g.batch > 1 && g.stride_a != 0 ? g.batch : 1;
  const bool copy_a = bf16 && !g.A_bf16;
  if (bf16) {
    // The copy of A (and the fallback's float32 C) go to scratch: an operand there would be
    // overwritten, or freed if scratch has to grow.
    const char* lo = static_cast<const char*>(scratch_);
    auto in_scratch = [&](const void* p) {
      const char* q = static_cast<const char*>(p);
      return p && lo && q >= lo && q < lo + scratch_bytes_;
    };
    if (in_scratch(g.A) || in_scratch(g.A_bf16) || in_scratch(g.B_bf16) || in_scratch(g.C) ||
        in_scratch(g.C_bf16) || in_scratch(g.bias))
      return Internal("gemm: " + shape_text(g) + " has an operand in the backend's scratch buffer, "
                      "where a bf16 gemm puts its bf16 copy of A");
    if (copy_a) {
      shape.lda = cols;
      shape.stride_a = batches > 1 ? rows * cols : 0;
    } else {
      a = g.A_bf16;
    }
    b = g.B_bf16;
    a_element = b_element = sizeof(uint16_t);
  }
  const bool batched = g.batch > 1;
  const GemmKey key = {shape.trans_a,
                       shape.trans_b,
                       shape.M,
                       shape.N,
                       shape.K,
                       shape.batch,
                       shape.lda,
                       batched ? shape.stride_a : 0,
                       shape.ldb,
                       batched ? shape.stride_b : 0,
                       shape.ldc,
                       batched ? shape.stride_c : 0,
                       shape.bias != nullptr,
                       // [13] our A = cuBLAS's B: a copy starts scratch, which cudaMalloc aligns to 256
                       copy_a ? 256 : alignment(a, shape.stride_a, shape.batch, a_element),
                       alignment(b, shape.stride_b, shape.batch, b_element),  // [14] our B = cuBLAS's A
                       alignment(c, shape.stride_c, shape.batch, c_element),  // [15] C and D
                       shape.bias ? alignment(shape.bias, 0, 1) : 0,
                       static_cast<int64_t>(math_mode_),
                       bf16 ? 1 : 0,            // [18] operand type: float32 or bf16
                       g.C_bf16 ? 1 : 0};       // [19] C type: float32 or bf16
  GemmPlan* plan = nullptr;
  RA_RETURN_IF_ERROR(gemm_plan(shape, key, &plan));
  // Scratch: the bf16 copy of A, then (a bf16 C without cuBLASLt) the float32 C before rounding.
  const size_t a_bytes = copy_a ? (static_cast<size_t>(batches * rows * cols) * sizeof(uint16_t) + 255) / 256 * 256 : 0;
  const size_t c_bytes = g.C_bf16 && !plan->lt_ok ? static_cast<size_t>(g.M * g.N) * sizeof(float) : 0;
  float* c32 = nullptr;
  if (a_bytes + c_bytes > 0) {
    void* tmp = nullptr;
    RA_RETURN_IF_ERROR(scratch(a_bytes + c_bytes, &tmp));
    if (copy_a) {
      uint16_t* a16 = static_cast<uint16_t*>(tmp);
      const bool x4 = cols % 4 == 0 && g.lda % 4 == 0 && (batches == 1 || g.stride_a % 4 == 0) &&
                      reinterpret_cast<uintptr_t>(g.A) % 16 == 0;
      const int64_t units = x4 ? cols / 4 : cols;
      const dim3 grid(static_cast<unsigned>(std::min<int64_t>((units + 255) / 256, 65535)),
                      static_cast<unsigned>(std::min<int64_t>(batches * rows, 65535)));
      if (x4)
        dense_bf16_x4_kernel<<<grid, 256, 0, stream_>>>(g.A, g.lda, g.stride_a, rows, cols, batches * rows, a16);
      else
        dense_bf16_kernel<<<grid, 256, 0, stream_>>>(g.A, g.lda, g.stride_a, rows, cols, batches * rows, a16);
      RA_RETURN_IF_ERROR(launched("gemm (bf16 copy of A)"));
      a = a16;
    }
    if (c_bytes) c32 = reinterpret_cast<float*>(static_cast<char*>(tmp) + a_bytes);
  }
  auto fallback = [&]() -> Status {
    if (!bf16) return gemm_fallback(g);
    if (!g.C_bf16)
      return gemm_ex_fallback(*this, blas_, shape, static_cast<const uint16_t*>(a), shape.lda, shape.stride_a);
    // The float32 C in scratch, then bias and rounding in one pass.
    Gemm dense = shape;
    dense.C = c32;
    dense.ldc = g.N;
    dense.bias = nullptr;
    RA_RETURN_IF_ERROR(gemm_ex_fallback(*this, blas_, dense, static_cast<const uint16_t*>(a), shape.lda,
                                        shape.stride_a));
    bias_round_kernel<<<blocks_for(g.M * g.N), 256, 0, stream_>>>(c32, g.bias, g.M, g.N, g.ldc, g.C_bf16);
    return launched("gemm (bias and bf16 C of the fallback path)");
  };
  if (!plan->lt_ok) return fallback();
  if (g.bias) {
    // The plan is shared by every bias of this alignment; point it at this call's.
    const cublasStatus_t s = cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias));
    if (s != CUBLAS_STATUS_SUCCESS) return lt_error(s, "setting the bias pointer", g);
  }
  // beta = 0: cuBLASLt does not read C, so C may hold anything (the checks fill it with NaN).
  const cublasStatus_t s = cublasLtMatmul(lt_, plan->desc, &g.alpha, b, plan->a, a, plan->b, &g.beta,
                                          c, plan->c, c, plan->c, &plan->algo, workspace_,
                                          workspace_bytes_, stream_);
  if (s == CUBLAS_STATUS_NOT_SUPPORTED) {
    plan->lt_ok = false;  // remember: this shape takes the fallback from now on
    // A bf16 C needs its float32 scratch, which only a call that knows the plan reserves.
    return g.C_bf16 ? gemm_unlocked(g) : fallback();
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
