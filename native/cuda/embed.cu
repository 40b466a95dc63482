// Patch embedding and token assembly on the GPU (see cpu/embed.cc). patchify is a pure
// permutation, so each thread moves one value; the sums over the batch (d_pos, d_cls) are
// deterministic column sums in double, as on the CPU.
#include "common.cuh"

namespace repadapter {
namespace {

// One thread per patch value: patches [B·P, Q] ← images [B,3,S,S], Q in (channel, row, column)
// order. Writes are contiguous; reads are p-long runs of an image row.
__global__ void patchify_kernel(const float* images, float* patches, int64_t B, int64_t S,
                                int64_t p, int64_t side) {
  const int64_t P = side * side, Q = 3 * p * p;
  RA_GRID_LOOP(idx, B * P * Q) {
    const int64_t q = idx % Q, bi = idx / Q;
    const int64_t i = bi % P, b = bi / P;
    const int64_t c = q / (p * p), y = (q / p) % p, x = q % p;
    const int64_t py = i / side, px = i % side;
    patches[idx] = images[((b * 3 + c) * S + py * p + y) * S + px * p + x];
  }
}

// The inverse permutation: every image value inside the patch grid gets exactly one write.
__global__ void patchify_backward_kernel(const float* d_patches, float* d_images, int64_t B,
                                         int64_t S, int64_t p, int64_t side) {
  const int64_t P = side * side, Q = 3 * p * p;
  RA_GRID_LOOP(idx, B * P * Q) {
    const int64_t q = idx % Q, bi = idx / Q;
    const int64_t i = bi % P, b = bi / P;
    const int64_t c = q / (p * p), y = (q / p) % p, x = q % p;
    const int64_t py = i / side, px = i % side;
    d_images[((b * 3 + c) * S + py * p + y) * S + px * p + x] = d_patches[idx];
  }
}

// x [B,N,D]: x[b,0] = cls + pos[0]; x[b,t] = embedded[b·P + t − 1] + pos[t].
__global__ void tokens_forward_kernel(const float* embedded, const float* cls, const float* pos,
                                      float* x, int64_t B, int64_t P, int64_t D) {
  const int64_t N = P + 1;
  RA_GRID_LOOP(idx, B * N * D) {
    const int64_t d = idx % D, t = (idx / D) % N, b = idx / (N * D);
    const float src = t == 0 ? cls[d] : embedded[(b * P + t - 1) * D + d];
    x[idx] = src + pos[t * D + d];
  }
}

// d_embedded [B·P, D] = dx[:, 1:]: a copy that skips each sample's cls row.
__global__ void tokens_backward_copy_kernel(const float* dx, float* d_embedded, int64_t B,
                                            int64_t P, int64_t D) {
  const int64_t N = P + 1;
  RA_GRID_LOOP(idx, B * P * D) {
    const int64_t d = idx % D, t = (idx / D) % P, b = idx / (P * D);
    d_embedded[idx] = dx[(b * N + t + 1) * D + d];
  }
}

struct SampleColumn {  // dx viewed as [B, stride]: value of column col in sample b
  const float* dx;
  int64_t stride;
  __device__ double operator()(int64_t b, int64_t col) const { return dx[b * stride + col]; }
};

}  // namespace

Status CudaBackend::patchify(const float* images, float* patches, int64_t B, int64_t S,
                             int64_t p) {
  RA_CUDA_ENTRY();
  const int64_t side = S / p, n = B * side * side * 3 * p * p;
  if (n <= 0) return Status::Ok();
  patchify_kernel<<<blocks_for(n), 256, 0, stream_>>>(images, patches, B, S, p, side);
  return launched("patchify");
}

Status CudaBackend::patchify_backward(const float* d_patches, float* d_images, int64_t B,
                                      int64_t S, int64_t p) {
  RA_CUDA_ENTRY();
  const int64_t side = S / p, n = B * side * side * 3 * p * p;
  // A trailing border (S not a multiple of p) is never read by patchify: its gradient is zero.
  if (side * p != S) RA_RETURN_IF_ERROR(fill(d_images, B * 3 * S * S, 0.0f));
  if (n <= 0) return Status::Ok();
  patchify_backward_kernel<<<blocks_for(n), 256, 0, stream_>>>(d_patches, d_images, B, S, p, side);
  return launched("patchify_backward");
}

Status CudaBackend::tokens_forward(const float* embedded, const float* cls, const float* pos,
                                   float* x, int64_t B, int64_t P, int64_t D) {
  RA_CUDA_ENTRY();
  const int64_t n = B * (P + 1) * D;
  if (n <= 0) return Status::Ok();
  tokens_forward_kernel<<<blocks_for(n), 256, 0, stream_>>>(embedded, cls, pos, x, B, P, D);
  return launched("tokens_forward");
}

Status CudaBackend::tokens_backward(const float* dx, float* d_embedded, float* d_cls,
                                    float* d_pos, int64_t B, int64_t P, int64_t D) {
  RA_CUDA_ENTRY();
  const int64_t N = P + 1;
  if (d_embedded && B * P * D > 0) {
    tokens_backward_copy_kernel<<<blocks_for(B * P * D), 256, 0, stream_>>>(dx, d_embedded, B, P, D);
    RA_RETURN_IF_ERROR(launched("tokens_backward"));
  }
  // d_pos [N·D] += Σ_b dx[b]; d_cls [D] += Σ_b dx[b, 0]: both sums over samples of stride N·D.
  RA_RETURN_IF_ERROR(cuda_detail::column_sums(*this, "tokens_backward (d_pos)", SampleColumn{dx, N * D},
                                              B, N * D, 1.0, d_pos));
  return cuda_detail::column_sums(*this, "tokens_backward (d_cls)", SampleColumn{dx, N * D}, B, D,
                                  1.0, d_cls);
}

}  // namespace repadapter
