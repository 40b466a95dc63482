#include "layers.h"

namespace repadapter {

Status linear_forward(Backend& be, const float* x, int64_t M, const LinearRef& l, float* y,
                      float beta, const Bf16Activations& bf16) {
  Gemm g;
  g.trans_b = true;
  g.M = M; g.N = l.out; g.K = l.in;
  g.A = x; g.lda = l.in; g.A_bf16 = bf16.x;
  g.B = l.w; g.ldb = l.in; g.B_bf16 = l.w_bf16;
  g.C = y; g.ldc = l.out; g.C_bf16 = bf16.y;
  g.bias = l.b;
  g.beta = beta;
  return be.gemm(g);
}

Status linear_backward(Backend& be, const float* dy, const float* x, int64_t M,
                       const LinearRef& l, float* dx, float beta, const Bf16Activations& bf16) {
  if (bf16.x && (l.dw || l.db))
    return InvalidArgument("linear_backward: a bf16 dy cannot feed a weight or bias gradient");
  if (dx || bf16.y) {
    Gemm g;  // dx = dy W
    g.M = M; g.N = l.in; g.K = l.out;
    g.A = dy; g.lda = l.out; g.A_bf16 = bf16.x;
    g.B = l.w; g.ldb = l.in; g.B_bf16 = l.w_bf16;
    g.C = dx; g.ldc = l.in; g.C_bf16 = bf16.y;
    g.beta = beta;
    RA_RETURN_IF_ERROR(be.gemm(g));
  }
  if (l.dw) {
    Gemm g;  // dW += dyᵀ x
    g.trans_a = true;
    g.M = l.out; g.N = l.in; g.K = M;
    g.A = dy; g.lda = l.out;
    g.B = x; g.ldb = l.in;
    g.C = l.dw; g.ldc = l.in;
    g.beta = 1.0f;
    RA_RETURN_IF_ERROR(be.gemm(g));
  }
  if (l.db) RA_RETURN_IF_ERROR(be.bias_backward(dy, l.db, M, l.out));
  return Status::Ok();
}

Status adapter_forward(Backend& be, const AdapterRef& p, const float* x, float* z, float* y,
                       int64_t M, bool train, const DropoutDraw& draw) {
  RA_RETURN_IF_ERROR(linear_forward(be, x, M, p.down, z));
  if (train && p.dropout > 0)
    RA_RETURN_IF_ERROR(be.dropout_forward(z, M * p.R, p.dropout, draw.seed, draw.step_key, draw.site));
  return be.adapter_up_forward(x, z, p.up_w, p.up_b, y, M, p.D, p.R, p.G, p.scale);
}

Status layernorm_adapter_forward(Backend& be, const float* x, int64_t ldx, const float* w,
                                 const float* b, float eps, const AdapterRef& p, float* a,
                                 float* z, float* u, uint16_t* u_bf16, float* mean, float* rstd,
                                 int64_t M, bool train, const DropoutDraw& draw) {
  const float dropout = train ? p.dropout : 0.0f;
  return be.layernorm_adapter_forward(x, ldx, w, b, eps, p.down.w, p.down.b, p.up_w, p.up_b,
                                      p.scale, dropout, draw.seed, draw.step_key, draw.site, a, z,
                                      u, u_bf16, mean, rstd, M, p.D, p.R, p.G);
}

Status adapter_backward(Backend& be, const AdapterRef& p, const float* x, const float* z,
                        float* d, float* dz, int64_t M, bool train, const DropoutDraw& draw) {
  RA_RETURN_IF_ERROR(be.adapter_up_backward(d, z, p.up_w, dz, p.d_up_w, p.d_up_b, M, p.D, p.R,
                                            p.G, p.scale));
  if (train && p.dropout > 0)
    RA_RETURN_IF_ERROR(be.dropout_backward(dz, M * p.R, p.dropout, draw.seed, draw.step_key, draw.site));
  return linear_backward(be, dz, x, M, p.down, d, 1.0f);
}

}  // namespace repadapter
