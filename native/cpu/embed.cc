// Patch embedding and token assembly. The conv with kernel = stride = patch is a gemm over
// non-overlapping patches, so "im2col" here is a pure permutation and its backward is the
// inverse permutation (no overlaps to sum).
#include "cpu_backend.h"

namespace repadapter {

// images [B,3,S,S] → patches [B·P, Q], P = (S/p)², Q = 3·p·p in (channel, row, column) order.
Status CpuBackend::patchify(const float* images, float* patches, int64_t B, int64_t S,
                            int64_t p) {
  const int64_t side = S / p, P = side * side, Q = 3 * p * p;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < P; ++i) {
      const int64_t py = i / side, px = i % side;
      float* out = patches + (b * P + i) * Q;
      for (int64_t c = 0; c < 3; ++c)
        for (int64_t y = 0; y < p; ++y) {
          const float* in = images + ((b * 3 + c) * S + py * p + y) * S + px * p;
          for (int64_t x = 0; x < p; ++x) *out++ = in[x];
        }
    }
  return Status::Ok();
}

Status CpuBackend::patchify_backward(const float* d_patches, float* d_images, int64_t B,
                                     int64_t S, int64_t p) {
  const int64_t side = S / p, P = side * side, Q = 3 * p * p;
  // A trailing border (S not a multiple of p) is never read by patchify: its gradient is zero.
  if (side * p != S) RA_RETURN_IF_ERROR(fill(d_images, B * 3 * S * S, 0.0f));
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < P; ++i) {
      const int64_t py = i / side, px = i % side;
      const float* in = d_patches + (b * P + i) * Q;
      for (int64_t c = 0; c < 3; ++c)
        for (int64_t y = 0; y < p; ++y) {
          float* out = d_images + ((b * 3 + c) * S + py * p + y) * S + px * p;
          for (int64_t x = 0; x < p; ++x) out[x] = *in++;
        }
    }
  return Status::Ok();
}

// x [B,N,D], N = 1 + P: the cls token first, then the embedded patches; position added to all.
Status CpuBackend::tokens_forward(const float* embedded, const float* cls, const float* pos,
                                  float* x, int64_t B, int64_t P, int64_t D) {
  const int64_t N = P + 1;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < N; ++t) {
      const float* src = t == 0 ? cls : embedded + (b * P + t - 1) * D;
      const float* pe = pos + t * D;
      float* dst = x + (b * N + t) * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = src[d] + pe[d];
    }
  return Status::Ok();
}

Status CpuBackend::tokens_backward(const float* dx, float* d_embedded, float* d_cls,
                                   float* d_pos, int64_t B, int64_t P, int64_t D) {
  const int64_t N = P + 1;
  if (d_embedded) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 1; t < N; ++t) {
        const float* src = dx + (b * N + t) * D;
        float* dst = d_embedded + (b * P + t - 1) * D;
        for (int64_t d = 0; d < D; ++d) dst[d] = src[d];
      }
  }
  if (d_pos) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t d = 0; d < D; ++d) {
        double acc = 0;
        for (int64_t b = 0; b < B; ++b) acc += dx[(b * N + t) * D + d];
        d_pos[t * D + d] += static_cast<float>(acc);
      }
  }
  if (d_cls) {
    for (int64_t d = 0; d < D; ++d) {
      double acc = 0;
      for (int64_t b = 0; b < B; ++b) acc += dx[b * N * D + d];
      d_cls[d] += static_cast<float>(acc);
    }
  }
  return Status::Ok();
}

}  // namespace repadapter
