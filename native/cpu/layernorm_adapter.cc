// LayerNorm and the RepAdapter that reads it, one row at a time: x is read once and u written
// once (a, mean and rstd too where asked for), where the composed ops make three passes
// over [M, D] (layernorm, the down-projection, the up-projection), each its own parallel region.
// A row of D floats stays in L1 between the pieces.
//
// Each piece keeps the arithmetic of the op it stands for — layernorm_row (shared with layernorm.cc), the
// skinny dot of gemm.cc, dropout_forward and up_rows of adapter.cc — so the outputs equal the
// composed ops' up to float rounding (summation order inside a vector reduction).
#include <cmath>
#include <vector>

#include "../core/bf16.h"
#include "../core/rng.h"
#include "cpu_backend.h"
#include "layernorm_row.h"
#include "vmath.h"

namespace repadapter {
namespace {

struct Args {
  const float *x, *ln_w, *ln_b, *A, *a_bias, *up_wt, *up_b;
  float *a, *z, *u, *mean, *rstd;
  int64_t ldx, D, R, G;
  float eps, scale, p, keep_scale;
  uint64_t seed, stream;
};

// Row m; `a_row` receives LN(x[m]): the caller's a (backward reads it) or per-thread scratch;
// `u_row` receives u[m]: the caller's u, or per-thread scratch that a bf16 u is rounded from.
RA_VECTOR_CLONES void fused_row(const Args& f, int64_t m, float* a_row, float* u_row) {
  const int64_t D = f.D, R = f.R, Dg = D / f.G, Rg = R / f.G;
  const float* x = f.x + m * f.ldx;
  float mu, r;
  layernorm_row(x, f.ln_w, f.ln_b, a_row, D, f.eps, &mu, &r);
  if (f.mean) f.mean[m] = mu;
  if (f.rstd) f.rstd[m] = r;

  // z = dropout(A a + a_bias): R dot products over the row, as gemm.cc's skinny kernel.
  float* z = f.z + m * R;
  for (int64_t j = 0; j < R; ++j) {
    const float* Aj = f.A + j * D;
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; ++d) dot += a_row[d] * Aj[d];
    float v = dot + f.a_bias[j];
    if (f.p > 0.0f)
      v = uniform01(f.seed, f.stream, static_cast<uint64_t>(m * R + j)) >= f.p ? v * f.keep_scale : 0.0f;
    z[j] = v;
  }

  // u = a + s·(B̂ z + b), group by group, each element summed b first, then j = 0, 1, … (the
  // order the CUDA kernels use). The row of u is the accumulator, one pass per j: with the j
  // loop inside the d loop (up_rows' form) GCC vectorises only the short j loop, which made
  // this part cost more than the rest of the row.
  float* u = u_row;
  const float scale = f.scale;
  for (int64_t k = 0; k < f.G; ++k) {
    const int64_t d0 = k * Dg;
    float* ug = u + d0;
    const float* bg = f.up_b + d0;
    const float* ag = a_row + d0;
#pragma omp simd
    for (int64_t d = 0; d < Dg; ++d) ug[d] = bg[d];
    for (int64_t j = 0; j < Rg; ++j) {
      const float zj = z[k * Rg + j];
      const float* wj = f.up_wt + j * D + d0;
#pragma omp simd
      for (int64_t d = 0; d < Dg; ++d) ug[d] += wj[d] * zj;
    }
#pragma omp simd
    for (int64_t d = 0; d < Dg; ++d) ug[d] = ag[d] + scale * ug[d];
  }
}

}  // namespace

Status CpuBackend::layernorm_adapter_forward(const float* x, int64_t ldx, const float* ln_w,
                                             const float* ln_b, float eps, const float* A,
                                             const float* a_bias, const float* up_w,
                                             const float* up_b, float scale, float p,
                                             uint64_t seed, const uint64_t* step_key,
                                             uint64_t site, float* a, float* z, float* u,
                                             uint16_t* u_bf16, float* mean, float* rstd,
                                             int64_t M, int64_t D, int64_t R, int64_t G) {
  RA_RETURN_IF_ERROR(one_output(u, u_bf16, true, "layernorm_adapter_forward: exactly one of u and u_bf16"));
  if (G <= 0 || D % G != 0 || R % G != 0)
    return InvalidArgument("layernorm_adapter_forward: groups must divide D and R");
  if (ldx < D) return InvalidArgument("layernorm_adapter_forward: ldx is smaller than D");
  if (M <= 0 || D <= 0) return Status::Ok();
  const int64_t Rg = R / G;
  // conv_B [D, R/G] transposed to [R/G, D], so the up-projection reads contiguous lanes.
  std::vector<float> wt(D * Rg);
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = 0; j < Rg; ++j) wt[j * D + d] = up_w[d * Rg + j];
  const Args f{x, ln_w, ln_b, A, a_bias, wt.data(), up_b, a, z, u, mean, rstd, ldx, D, R, G,
               eps, scale, p, p > 0.0f ? 1.0f / (1.0f - p) : 1.0f, seed,
               p > 0.0f ? *step_key ^ site : 0};
#pragma omp parallel
  {
    std::vector<float> a_scratch(a ? 0 : D), u_scratch(u ? 0 : D);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      fused_row(f, m, a ? a + m * D : a_scratch.data(), u ? u + m * D : u_scratch.data());
      if (u_bf16)
        for (int64_t d = 0; d < D; ++d) u_bf16[m * D + d] = bf16_from_float(u_scratch[d]);
    }
  }
  return Status::Ok();
}

}  // namespace repadapter
