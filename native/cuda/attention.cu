// Multi-head softmax attention on the GPU, two ways.
//
// Head widths 32 and 64 (every ViT this package trains) take the fused kernels: the N×N scores
// stay on chip, and `saved` holds, for backward,
//   [0, B·H·N)                  lse, the log-sum-exp of each row of scaled scores, [B,H,N]
//   [B·H·N, …)                  a copy of out, [B,N,H,Dh] (backward's D = rowsum(dO ∘ O)):
//                               float32, or bf16 from the tensor-core kernels (half the floats)
// — Dh + 1 floats per (token, head) instead of N: a third of the probabilities at ViT-B/16's
// N = 197, Dh = 64. Backward recomputes the probabilities from lse. Float32 compute runs
// flash_attention.cuh's kernels on CUDA cores, bf16 compute flash_attention_bf16.cuh's on
// tensor cores (sm_80 and newer; older GPUs run bf16 compute's attention on the float32
// kernels, with the float32 layout).
//
// Other head widths take the materialised path, as cpu/attention.cc: the same four products
// per (sample, head) as cuBLASLt strided-batched products over the H heads of one sample (heads
// are Dh floats apart inside qkv [B,N,3,H,Dh], so one stride walks them; samples are N·3D
// apart, a second stride no strided-batched call has, hence one call per sample), and the
// row-wise softmax and its backward as warp-per-row kernels that sum in double. There `saved`
// is the softmax probabilities [B,H,N,N], and inference puts the scores in scratch. This path
// is float32 in both compute dtypes: bf16 compute at these widths (no standard ViT has them)
// differs from the CPU's bf16 attention by bf16 rounding.
#include <cmath>
#include <string>
#include <type_traits>

#include "common.cuh"
#include "flash_attention.cuh"
#include "flash_attention_bf16.cuh"

namespace repadapter {
namespace {

constexpr int kRowsPerBlock = 8;                     // one warp per row
constexpr size_t kScoreScratchBytes = 256u << 20;    // score buffers per chunk of samples

// Row-wise softmax in place over `rows` rows of length N (scores already scaled by the gemm).
__global__ void softmax_rows_kernel(float* s, int64_t rows, int64_t N) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5); i < rows;
       i += warps) {
    float* row = s + i * N;
    float mx = -INFINITY;
    for (int64_t j = lane; j < N; j += 32) mx = fmaxf(mx, row[j]);
    mx = cuda_detail::warp_max(mx);
    double sum = 0;
    for (int64_t j = lane; j < N; j += 32) {
      const float e = expf(__fsub_rn(row[j], mx));
      row[j] = e;
      sum += e;
    }
    sum = cuda_detail::warp_sum(sum);
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t j = lane; j < N; j += 32) row[j] = __fmul_rn(row[j], inv);
  }
}

// ds = p ⊙ (dp − rowsum(dp ⊙ p)), in place over dp; the row sum in double.
__global__ void softmax_backward_kernel(const float* p, float* ds, int64_t rows, int64_t N) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5); i < rows;
       i += warps) {
    const float* pr = p + i * N;
    float* dr = ds + i * N;
    double dot = 0;
    for (int64_t j = lane; j < N; j += 32) dot += static_cast<double>(dr[j]) * pr[j];
    const float c = static_cast<float>(cuda_detail::warp_sum(dot));
    for (int64_t j = lane; j < N; j += 32) dr[j] = __fmul_rn(pr[j], __fsub_rn(dr[j], c));
  }
}

unsigned row_blocks(const CudaBackend& be, int64_t rows) {
  const int64_t needed = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(needed, be.sm_count() * 16)));
}

// A strided-batched product over the H heads of one sample.
Gemm heads_gemm(int64_t H) {
  Gemm g;
  g.batch = H;
  return g;
}

bool fused_head_width(int64_t Dh) { return Dh == 32 || Dh == 64; }

// One block per (b, h, tile of `rows`), as the fused kernels index them; gridDim.x is limited.
Status fused_grid(int64_t B, int64_t N, int64_t H, int64_t rows, int64_t* tiles, unsigned* blocks) {
  *tiles = (N + rows - 1) / rows;
  const int64_t n = B * H * *tiles;
  if (n > 0x7fffffff)
    return InvalidArgument("attention: " + std::to_string(n) +
                           " blocks of fused attention exceed the grid limit (2^31 - 1)");
  *blocks = static_cast<unsigned>(n);
  return Status::Ok();
}

// bf16 mma needs compute capability 8.0 or newer.
bool bf16_tensor_cores() {
  int device = 0, major = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
         major >= 8;
}

// The kernels' qkv: bf16 for the tensor-core kernels (as the model stores it in bf16 compute),
// float32 for the others.
struct QkvView {
  const uint16_t* bf16 = nullptr;  // set: the tensor-core kernels
  const float* f32 = nullptr;
};

// out is float32, or bf16 (O = uint16_t) from the tensor-core kernel.
template <int Dh, typename O>
Status fused_forward(CudaBackend& be, QkvView qkv, O* out, float* saved, int64_t B, int64_t N,
                     int64_t H, float scale) {
  float* lse = saved;
  float* o_copy = saved ? saved + B * H * N : nullptr;
  int64_t tiles = 0;
  unsigned blocks = 0;
  if (qkv.bf16) {  // the copy of out in bf16 (attention_saved_floats)
    RA_RETURN_IF_ERROR(fused_grid(B, N, H, flash_bf16::kBlockRows, &tiles, &blocks));
    flash_bf16::forward_kernel<Dh, O><<<blocks, flash_bf16::kThreads, 0, be.stream()>>>(
        qkv.bf16, out, lse, reinterpret_cast<uint16_t*>(o_copy), N, H, tiles, scale);
    return be.launched("attention_forward (fused, bf16 tensor cores)");
  }
  if constexpr (std::is_same<O, float>::value) {
    RA_RETURN_IF_ERROR(fused_grid(B, N, H, flash::kForwardRows, &tiles, &blocks));
    flash::forward_kernel<Dh><<<blocks, flash::kThreads, 0, be.stream()>>>(qkv.f32, out, lse,
                                                                            o_copy, N, H, tiles, scale);
    return be.launched("attention_forward (fused)");
  } else {
    return Internal("attention_forward: a bf16 out from the float32 kernels");
  }
}

// d_qkv is float32, or bf16 (G = uint16_t) from the tensor-core kernels.
template <int Dh, typename G>
Status fused_backward(CudaBackend& be, const float* d_out, QkvView qkv, const float* saved,
                      G* d_qkv, int64_t B, int64_t N, int64_t H, float scale) {
  const bool tensor_cores = qkv.bf16 != nullptr;
  const float* lse = saved;
  const float* o = saved + B * H * N;
  void* tmp = nullptr;
  RA_RETURN_IF_ERROR(be.scratch(static_cast<size_t>(B * H * N) * sizeof(float), &tmp));
  float* delta = static_cast<float*>(tmp);
  const int64_t rows = B * N * H;
  const unsigned row_blocks = be.blocks_for(rows * 32);
  if (tensor_cores)  // D = rowsum(dÔ ∘ Ô), dÔ = bf16(dO) as the bf16 kernels multiply it, Ô saved in bf16
    flash::row_dot_kernel<Dh, true, uint16_t><<<row_blocks, 256, 0, be.stream()>>>(
        d_out, reinterpret_cast<const uint16_t*>(o), delta, N, H, rows);
  else
    flash::row_dot_kernel<Dh><<<row_blocks, 256, 0, be.stream()>>>(d_out, o, delta, N, H, rows);
  RA_RETURN_IF_ERROR(be.launched("attention_backward (fused, rowsum(dO * O))"));
  int64_t tiles = 0;
  unsigned blocks = 0;
  if (tensor_cores) {
    RA_RETURN_IF_ERROR(fused_grid(B, N, H, flash_bf16::kBlockRows, &tiles, &blocks));
    flash_bf16::backward_kv_kernel<Dh, G><<<blocks, flash_bf16::kThreads, 0, be.stream()>>>(
        qkv.bf16, d_out, lse, delta, d_qkv, N, H, tiles, scale);
    RA_RETURN_IF_ERROR(be.launched("attention_backward (fused, bf16 tensor cores, dK and dV)"));
    flash_bf16::backward_q_kernel<Dh, G><<<blocks, flash_bf16::kThreads, 0, be.stream()>>>(
        qkv.bf16, d_out, lse, delta, d_qkv, N, H, tiles, scale);
    return be.launched("attention_backward (fused, bf16 tensor cores, dQ)");
  }
  if constexpr (std::is_same<G, float>::value) {
    RA_RETURN_IF_ERROR(fused_grid(B, N, H, flash::kTile, &tiles, &blocks));
    flash::backward_kv_kernel<Dh><<<blocks, flash::kThreads, 0, be.stream()>>>(
        qkv.f32, d_out, lse, delta, d_qkv, N, H, tiles, scale);
    RA_RETURN_IF_ERROR(be.launched("attention_backward (fused, dK and dV)"));
    flash::backward_q_kernel<Dh><<<blocks, flash::kThreads, 0, be.stream()>>>(
        qkv.f32, d_out, lse, delta, d_qkv, N, H, tiles, scale);
    return be.launched("attention_backward (fused, dQ)");
  } else {
    return Internal("attention_backward: a bf16 d_qkv from the float32 kernels");
  }
}

__global__ void widen_kernel(const uint16_t* x, float* y, int64_t n) {
  RA_GRID_LOOP(i, n) y[i] = bf16_to_float(x[i]);
}

// qkv (n values in the compute dtype) as the kernels for (Dh, compute) read it: bf16 as given
// for the tensor-core kernels, float32 for the rest — in bf16 compute a widened copy in the
// backend's own buffer (exact: the values are bf16 already), since those paths put their scores
// in scratch. `spare` (bf16 compute only): n more floats of that buffer for the float32 kernels'
// d_qkv, which a bf16 d_qkv is rounded from; null where the tensor-core kernels write bf16.
Status attention_qkv(CudaBackend& be, const void* qkv, int64_t n, int64_t Dh, DType compute,
                     QkvView* out, float** spare = nullptr) {
  *out = QkvView();
  if (spare) *spare = nullptr;
  if (compute != DType::kBF16) {
    out->f32 = static_cast<const float*>(qkv);
    return Status::Ok();
  }
  if (fused_head_width(Dh) && bf16_tensor_cores()) {
    out->bf16 = static_cast<const uint16_t*>(qkv);
    return Status::Ok();
  }
  float* wide = nullptr;
  RA_RETURN_IF_ERROR(be.widened(static_cast<size_t>(spare ? 2 * n : n) * sizeof(float), &wide));
  widen_kernel<<<be.blocks_for(n), 256, 0, be.stream()>>>(static_cast<const uint16_t*>(qkv), wide, n);
  RA_RETURN_IF_ERROR(be.launched("attention (qkv widened from bf16)"));
  out->f32 = wide;
  if (spare) *spare = wide + n;
  return Status::Ok();
}

}  // namespace

// The tensor-core kernels keep their copy of out in bf16, half the floats.
int64_t CudaBackend::attention_saved_floats(int64_t B, int64_t N, int64_t H, int64_t Dh,
                                            DType compute) const {
  if (!fused_head_width(Dh)) return B * H * N * N;
  const bool bf16_copy = compute == DType::kBF16 && bf16_tensor_cores();
  return B * H * N + (bf16_copy ? (B * N * H * Dh + 1) / 2 : B * N * H * Dh);
}

Status CudaBackend::attention_forward(const void* qkv, float* out, uint16_t* out_bf16,
                                      float* saved, int64_t B, int64_t N, int64_t H, int64_t Dh,
                                      DType compute) {
  RA_RETURN_IF_ERROR(one_output(out, out_bf16, compute == DType::kBF16, "attention_forward: exactly one of out and (in bf16 compute) out_bf16"));
  RA_CUDA_ENTRY();
  if (B <= 0 || N <= 0 || H <= 0 || Dh <= 0) return Status::Ok();
  const int64_t D = H * Dh, ld = 3 * D, NN = N * N;
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));  // the CPU's float expression
  QkvView view;
  float* spare = nullptr;
  RA_RETURN_IF_ERROR(attention_qkv(*this, qkv, B * N * ld, Dh, compute, &view, out_bf16 ? &spare : nullptr));
  if (out_bf16 && view.bf16) {  // the tensor-core kernel rounds as it stores
    if (Dh == 32) return fused_forward<32>(*this, view, out_bf16, saved, B, N, H, scale);
    return fused_forward<64>(*this, view, out_bf16, saved, B, N, H, scale);
  }
  if (out_bf16) {
    // The float32 paths into the spare buffer, then rounded: the same numbers, one more pass.
    RA_RETURN_IF_ERROR(attention_forward(view.f32, spare, nullptr, saved, B, N, H, Dh, DType::kF32));
    return convert_to_bf16(spare, out_bf16, B * N * D);
  }
  if (Dh == 32) return fused_forward<32>(*this, view, out, saved, B, N, H, scale);
  if (Dh == 64) return fused_forward<64>(*this, view, out, saved, B, N, H, scale);
  float* probs = saved;
  // Without probs the scores live in scratch, a chunk of samples at a time.
  const int64_t per_sample = H * NN * static_cast<int64_t>(sizeof(float));
  const int64_t chunk =
      probs ? B : std::max<int64_t>(1, std::min<int64_t>(B, kScoreScratchBytes / per_sample));
  float* scores = probs;
  if (!probs) {
    void* tmp = nullptr;
    RA_RETURN_IF_ERROR(scratch(static_cast<size_t>(chunk * per_sample), &tmp));
    scores = static_cast<float*>(tmp);
  }
  for (int64_t b0 = 0; b0 < B; b0 += chunk) {
    const int64_t nb = std::min(chunk, B - b0);
    float* s0 = probs ? probs + b0 * H * NN : scores;
    for (int64_t b = b0; b < b0 + nb; ++b) {
      const float* q = view.f32 + b * N * ld;
      Gemm g = heads_gemm(H);  // s = scale · q kᵀ      [H][N, N]
      g.trans_b = true;
      g.M = N; g.N = N; g.K = Dh; g.alpha = scale;
      g.A = q;     g.lda = ld; g.stride_a = Dh;
      g.B = q + D; g.ldb = ld; g.stride_b = Dh;
      g.C = s0 + (b - b0) * H * NN; g.ldc = N; g.stride_c = NN;
      RA_RETURN_IF_ERROR(gemm_unlocked(g));
    }
    softmax_rows_kernel<<<row_blocks(*this, nb * H * N), 32 * kRowsPerBlock, 0, stream_>>>(
        s0, nb * H * N, N);
    RA_RETURN_IF_ERROR(launched("attention_forward (softmax)"));
    for (int64_t b = b0; b < b0 + nb; ++b) {
      Gemm g = heads_gemm(H);  // out_h = p v            [H][N, Dh]
      g.M = N; g.N = Dh; g.K = N;
      g.A = s0 + (b - b0) * H * NN; g.lda = N; g.stride_a = NN;
      g.B = view.f32 + b * N * ld + 2 * D; g.ldb = ld; g.stride_b = Dh;
      g.C = out + b * N * D; g.ldc = D; g.stride_c = Dh;
      RA_RETURN_IF_ERROR(gemm_unlocked(g));
    }
  }
  return Status::Ok();
}

// With p = softmax(s):  dv = pᵀ do,  dp = do vᵀ,  ds = p ⊙ (dp − rowsum(dp ⊙ p)),
// dq = scale · ds k,  dk = scale · dsᵀ q. Every element of d_qkv is written (beta = 0).
Status CudaBackend::attention_backward(const float* d_out, const void* qkv, const float* saved,
                                       float* d_qkv, uint16_t* d_qkv_bf16, int64_t B, int64_t N,
                                       int64_t H, int64_t Dh, DType compute) {
  RA_RETURN_IF_ERROR(one_output(d_qkv, d_qkv_bf16, compute == DType::kBF16, "attention_backward: exactly one of d_qkv and (in bf16 compute) d_qkv_bf16"));
  RA_CUDA_ENTRY();
  if (B <= 0 || N <= 0 || H <= 0 || Dh <= 0) return Status::Ok();
  const int64_t D = H * Dh, ld = 3 * D, NN = N * N;
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  QkvView view;
  float* spare = nullptr;
  RA_RETURN_IF_ERROR(attention_qkv(*this, qkv, B * N * ld, Dh, compute, &view, d_qkv_bf16 ? &spare : nullptr));
  if (d_qkv_bf16 && view.bf16) {  // the tensor-core kernels round as they store
    if (Dh == 32) return fused_backward<32>(*this, d_out, view, saved, d_qkv_bf16, B, N, H, scale);
    return fused_backward<64>(*this, d_out, view, saved, d_qkv_bf16, B, N, H, scale);
  }
  if (d_qkv_bf16) {
    // The float32 paths into the spare buffer, then rounded: the same numbers, one more pass.
    RA_RETURN_IF_ERROR(attention_backward(d_out, view.f32, saved, spare, nullptr, B, N, H, Dh, DType::kF32));
    return convert_to_bf16(spare, d_qkv_bf16, B * N * ld);
  }
  if (Dh == 32) return fused_backward<32>(*this, d_out, view, saved, d_qkv, B, N, H, scale);
  if (Dh == 64) return fused_backward<64>(*this, d_out, view, saved, d_qkv, B, N, H, scale);
  const float* probs = saved;
  const int64_t per_sample = H * NN * static_cast<int64_t>(sizeof(float));
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(B, kScoreScratchBytes / per_sample));
  void* tmp = nullptr;
  RA_RETURN_IF_ERROR(scratch(static_cast<size_t>(chunk * per_sample), &tmp));
  float* ds0 = static_cast<float*>(tmp);
  for (int64_t b0 = 0; b0 < B; b0 += chunk) {
    const int64_t nb = std::min(chunk, B - b0);
    for (int64_t b = b0; b < b0 + nb; ++b) {
      const float* q = view.f32 + b * N * ld;
      float* dq = d_qkv + b * N * ld;
      const float* p = probs + b * H * NN;
      const float* dout = d_out + b * N * D;
      float* ds = ds0 + (b - b0) * H * NN;
      Gemm g1 = heads_gemm(H);  // dv = pᵀ do        [H][N, Dh]
      g1.trans_a = true;
      g1.M = N; g1.N = Dh; g1.K = N;
      g1.A = p; g1.lda = N; g1.stride_a = NN;
      g1.B = dout; g1.ldb = D; g1.stride_b = Dh;
      g1.C = dq + 2 * D; g1.ldc = ld; g1.stride_c = Dh;
      RA_RETURN_IF_ERROR(gemm_unlocked(g1));
      Gemm g2 = heads_gemm(H);  // dp = do vᵀ        [H][N, N]
      g2.trans_b = true;
      g2.M = N; g2.N = N; g2.K = Dh;
      g2.A = dout; g2.lda = D; g2.stride_a = Dh;
      g2.B = q + 2 * D; g2.ldb = ld; g2.stride_b = Dh;
      g2.C = ds; g2.ldc = N; g2.stride_c = NN;
      RA_RETURN_IF_ERROR(gemm_unlocked(g2));
    }
    softmax_backward_kernel<<<row_blocks(*this, nb * H * N), 32 * kRowsPerBlock, 0, stream_>>>(
        probs + b0 * H * NN, ds0, nb * H * N, N);
    RA_RETURN_IF_ERROR(launched("attention_backward (softmax)"));
    for (int64_t b = b0; b < b0 + nb; ++b) {
      const float* q = view.f32 + b * N * ld;
      float* dq = d_qkv + b * N * ld;
      const float* ds = ds0 + (b - b0) * H * NN;
      Gemm g3 = heads_gemm(H);  // dq = scale · ds k  [H][N, Dh]
      g3.M = N; g3.N = Dh; g3.K = N; g3.alpha = scale;
      g3.A = ds; g3.lda = N; g3.stride_a = NN;
      g3.B = q + D; g3.ldb = ld; g3.stride_b = Dh;
      g3.C = dq; g3.ldc = ld; g3.stride_c = Dh;
      RA_RETURN_IF_ERROR(gemm_unlocked(g3));
      Gemm g4 = heads_gemm(H);  // dk = scale · dsᵀ q [H][N, Dh]
      g4.trans_a = true;
      g4.M = N; g4.N = Dh; g4.K = N; g4.alpha = scale;
      g4.A = ds; g4.lda = N; g4.stride_a = NN;
      g4.B = q; g4.ldb = ld; g4.stride_b = Dh;
      g4.C = dq + D; g4.ldc = ld; g4.stride_c = Dh;
      RA_RETURN_IF_ERROR(gemm_unlocked(g4));
    }
  }
  return Status::Ok();
}

}  // namespace repadapter
