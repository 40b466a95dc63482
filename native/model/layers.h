// Layers built from backend ops: the Linear (a gemm with bias) and the whole RepAdapter. The
// model and the op checks both call these, so what is checked is what runs.
#pragma once
#include <cstdint>

#include "../core/backend.h"

namespace repadapter {

// y = x Wᵀ + b with W [out, in]. dw / db null when frozen. With w_bf16 (a bf16 copy of W) the
// products with W run in bf16 (Gemm::B_bf16); the weight gradient stays float32.
struct LinearRef {
  const float* w; const float* b;
  float* dw; float* db;
  int64_t out, in;
  const uint16_t* w_bf16 = nullptr;
};

// A bf16 Linear's activations in bf16 (Gemm::A_bf16 / C_bf16): x replaces the float32 input,
// y receives the output rounded to bf16 instead of the float32 one.
struct Bf16Activations {
  const uint16_t* x = nullptr;
  uint16_t* y = nullptr;
};

// y [M, out] = x [M, in] · Wᵀ + b (+ beta · y).
Status linear_forward(Backend& be, const float* x, int64_t M, const LinearRef& l, float* y,
                      float beta = 0.0f, const Bf16Activations& bf16 = {});
// dx [M, in] = dy · W (+ beta · dx), when dx is given; dW += dyᵀ x; db += Σ_m dy. With bf16
// activations, bf16.x replaces dy and bf16.y replaces dx (then W and b must be frozen: their
// gradients read dy in float32).
Status linear_backward(Backend& be, const float* dy, const float* x, int64_t M,
                       const LinearRef& l, float* dx, float beta = 0.0f,
                       const Bf16Activations& bf16 = {});

// RepAdapter: y = x + s · (B̂ · dropout(A x + a) + b).
struct AdapterRef {
  LinearRef down;                 // conv_A as a Linear: [R, D] and [R]
  const float* up_w; const float* up_b;  // conv_B: [D, R/G] and [D]
  float* d_up_w; float* d_up_b;
  int64_t D, R, G;
  float scale, dropout;
};

// Where an adapter's dropout draws its mask: uniform01(seed, *step_key ^ site, i), step_key in
// backend memory (backend.h, dropout_forward).
struct DropoutDraw {
  uint64_t seed = 0;
  const uint64_t* step_key = nullptr;
  uint64_t site = 0;
};

// z [M, R] keeps dropout(A x + a) for backward; y [M, D] must not alias x.
Status adapter_forward(Backend& be, const AdapterRef& p, const float* x, float* z, float* y,
                       int64_t M, bool train, const DropoutDraw& draw);
// a = LayerNorm(x; w, b, eps) and the adapter on it, u = a + s·(B̂ · dropout(A a + conv_A's
// bias) + b), in one backend op: adapter_forward after layernorm_forward, one pass over the rows.
// x: [M, D] rows ldx apart; z [M, R] as adapter_forward keeps it; a [M, D], mean and rstd [M]
// are written only where given (what backward reads), else null. u_bf16 may replace u (then
// null): u rounded to bf16, for a frozen bf16 Linear that reads it.
Status layernorm_adapter_forward(Backend& be, const float* x, int64_t ldx, const float* w,
                                 const float* b, float eps, const AdapterRef& p, float* a,
                                 float* z, float* u, uint16_t* u_bf16, float* mean, float* rstd,
                                 int64_t M, bool train, const DropoutDraw& draw);
// d holds dy on entry and dx on return (the skip passes dy through, the low-rank path adds);
// dz [M, R] is scratch.
Status adapter_backward(Backend& be, const AdapterRef& p, const float* x, const float* z,
                        float* d, float* dz, int64_t M, bool train, const DropoutDraw& draw);

}  // namespace repadapter
