// Host emulation of the fused attention kernels: every CUDA thread is a ucontext fiber,
// __syncthreads and warp shuffles are barriers, __shared__ arrays are per-instantiation statics.
// Runs the exact kernel source of native/cuda/flash_attention.cuh and compares against
// CpuBackend (the reference) and a float64 naive reference. Outputs start as NaN, so an element
// no thread writes fails; `--reverse` runs each block's threads in the opposite order, so a
// missing barrier shows up as a different result. The grids below mirror attention.cu's
// launches: keep the two in step.
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

struct EmuDim { unsigned x = 1, y = 1, z = 1; };
namespace emu {
EmuDim thread_idx, block_idx, block_dim, grid_dim;
struct Barrier { int count = 0; long gen = 0; int size = 0; };
struct Fiber { ucontext_t ctx; bool done = false; std::vector<char> stack; };
std::vector<Fiber> fibers;
ucontext_t sched;
int cur = -1;
Barrier block_bar;
std::vector<Barrier> warp_bars;
std::vector<double> slots;
std::function<void()> body;
long yields = 0;
bool reverse_order = false;

void yield() { ++yields; swapcontext(&fibers[cur].ctx, &sched); }
void arrive(Barrier& b) {
  const long g = b.gen;
  if (++b.count == b.size) { b.count = 0; ++b.gen; return; }
  long spins = 0;
  while (b.gen == g) {
    yield();
    if (++spins > 100000000) { std::fprintf(stderr, "deadlock\n"); std::abort(); }
  }
}
void entry() {
  body();
  fibers[cur].done = true;
  swapcontext(&fibers[cur].ctx, &sched);
}
void launch(unsigned grid, unsigned threads, std::function<void()> f) {
  body = std::move(f);
  grid_dim = {grid, 1, 1};
  block_dim = {threads, 1, 1};
  for (unsigned bx = 0; bx < grid; ++bx) {
    block_idx = {bx, 1, 1};
    block_idx.y = 0; block_idx.z = 0;
    fibers.assign(threads, Fiber());
    block_bar = Barrier();
    block_bar.size = static_cast<int>(threads);
    warp_bars.assign((threads + 31) / 32, Barrier());
    for (auto& w : warp_bars) w.size = 32;
    slots.assign(threads, 0.0);
    for (unsigned t = 0; t < threads; ++t) {
      Fiber& fb = fibers[t];
      fb.stack.resize(256 << 10);
      getcontext(&fb.ctx);
      fb.ctx.uc_stack.ss_sp = fb.stack.data();
      fb.ctx.uc_stack.ss_size = fb.stack.size();
      fb.ctx.uc_link = nullptr;
      makecontext(&fb.ctx, entry, 0);
    }
    for (;;) {
      bool any = false;
      for (unsigned k = 0; k < threads; ++k) {
        const unsigned t = reverse_order ? threads - 1 - k : k;
        if (fibers[t].done) continue;
        any = true;
        cur = static_cast<int>(t);
        thread_idx = {t, 0, 0};
        swapcontext(&sched, &fibers[t].ctx);
      }
      if (!any) break;
    }
  }
}
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
inline void __syncthreads() { emu::arrive(emu::block_bar); }
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int o) {
  if (mask != 0xffffffffu) std::abort();
  const int t = emu::cur, warp = t / 32, lane = t % 32;
  emu::slots[t] = static_cast<double>(v);
  emu::arrive(emu::warp_bars[warp]);
  const T r = static_cast<T>(emu::slots[warp * 32 + (lane ^ o)]);
  emu::arrive(emu::warp_bars[warp]);
  return r;
}

#include "../cuda/flash_attention.cuh"
#include "../cpu/cpu_backend.h"

using namespace repadapter;

// Emulated fused_forward / fused_backward, as attention.cu launches them.
template <int Dh>
void emu_forward(const float* qkv, float* out, float* saved, int64_t B, int64_t N, int64_t H,
                 float scale) {
  const int64_t tiles = (N + flash::kForwardRows - 1) / flash::kForwardRows;
  float* lse = saved;
  float* oc = saved ? saved + B * H * N : nullptr;
  emu::launch(static_cast<unsigned>(B * H * tiles), flash::kThreads,
              [&] { flash::forward_kernel<Dh>(qkv, out, lse, oc, N, H, tiles, scale); });
}
template <int Dh>
void emu_backward(const float* d_out, const float* qkv, const float* saved, float* d_qkv,
                  int64_t B, int64_t N, int64_t H, float scale) {
  const int64_t tiles = (N + flash::kTile - 1) / flash::kTile;
  std::vector<float> delta(B * H * N, NAN);
  const float* lse = saved;
  const float* o = saved + B * H * N;
  const int64_t rows = B * N * H;
  const unsigned rb = static_cast<unsigned>(std::min<int64_t>((rows * 32 + 255) / 256, 7));
  emu::launch(rb, 256, [&] { flash::row_dot_kernel<Dh>(d_out, o, delta.data(), N, H, rows); });
  emu::launch(static_cast<unsigned>(B * H * tiles), flash::kThreads, [&] {
    flash::backward_kv_kernel<Dh>(qkv, d_out, lse, delta.data(), d_qkv, N, H, tiles, scale);
  });
  emu::launch(static_cast<unsigned>(B * H * tiles), flash::kThreads, [&] {
    flash::backward_q_kernel<Dh>(qkv, d_out, lse, delta.data(), d_qkv, N, H, tiles, scale);
  });
}

// float64 naive reference.
void ref(const std::vector<float>& qkv, const std::vector<float>& dout, int64_t B, int64_t N,
         int64_t H, int64_t Dh, std::vector<double>* out, std::vector<double>* dqkv) {
  const int64_t D = H * Dh, ld = 3 * D;
  const double scale = 1.0 / std::sqrt(static_cast<double>(static_cast<float>(Dh)));
  out->assign(B * N * D, 0);
  dqkv->assign(B * N * ld, 0);
  std::vector<double> P(N * N), dS(N * N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      auto q = [&](int64_t i, int64_t d) { return (double)qkv[b * N * ld + i * ld + h * Dh + d]; };
      auto k = [&](int64_t i, int64_t d) { return (double)qkv[b * N * ld + i * ld + D + h * Dh + d]; };
      auto v = [&](int64_t i, int64_t d) { return (double)qkv[b * N * ld + i * ld + 2 * D + h * Dh + d]; };
      auto g = [&](int64_t i, int64_t d) { return (double)dout[b * N * D + i * D + h * Dh + d]; };
      for (int64_t i = 0; i < N; ++i) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < N; ++j) {
          double s = 0;
          for (int64_t d = 0; d < Dh; ++d) s += q(i, d) * k(j, d);
          P[i * N + j] = s * scale;
          mx = std::max(mx, P[i * N + j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < N; ++j) sum += (P[i * N + j] = std::exp(P[i * N + j] - mx));
        for (int64_t j = 0; j < N; ++j) P[i * N + j] /= sum;
        for (int64_t d = 0; d < Dh; ++d) {
          double o = 0;
          for (int64_t j = 0; j < N; ++j) o += P[i * N + j] * v(j, d);
          (*out)[b * N * D + i * D + h * Dh + d] = o;
        }
      }
      for (int64_t i = 0; i < N; ++i) {
        double dot = 0;
        for (int64_t j = 0; j < N; ++j) {
          double dp = 0;
          for (int64_t d = 0; d < Dh; ++d) dp += g(i, d) * v(j, d);
          dS[i * N + j] = dp;
          dot += dp * P[i * N + j];
        }
        for (int64_t j = 0; j < N; ++j) dS[i * N + j] = P[i * N + j] * (dS[i * N + j] - dot);
      }
      for (int64_t j = 0; j < N; ++j)
        for (int64_t d = 0; d < Dh; ++d) {
          double dq = 0, dk = 0, dv = 0;
          for (int64_t i = 0; i < N; ++i) {
            dq += dS[j * N + i] * k(i, d);
            dk += dS[i * N + j] * q(i, d);
            dv += P[i * N + j] * g(i, d);
          }
          double* row = dqkv->data() + b * N * ld + j * ld + h * Dh;
          row[d] = scale * dq;
          row[D + d] = scale * dk;
          row[2 * D + d] = dv;
        }
    }
}

template <class A, class Bv>
double rel(const A& ref, const Bv& got) {
  double scale = 0, err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite((double)got[i])) return INFINITY;
    scale = std::max(scale, std::fabs((double)ref[i]));
    err = std::max(err, std::fabs((double)got[i] - (double)ref[i]));
  }
  return err / scale;
}

int main(int argc, char** argv) {
  struct Shape { int64_t B, N, H, Dh; };
  std::vector<Shape> shapes = {{2, 50, 4, 32}, {2, 7, 3, 64}, {1, 65, 2, 64}, {1, 197, 2, 64},
                               {3, 33, 2, 32}, {1, 1, 1, 64}, {16, 12, 8, 32}};
  if (argc > 1 && std::strcmp(argv[1], "--reverse") == 0) emu::reverse_order = true;
  CpuBackend cpu;
  int failed = 0;
  uint64_t seed = 1;
  for (const Shape& s : shapes) {
    const int64_t B = s.B, N = s.N, H = s.H, Dh = s.Dh, D = H * Dh;
    std::mt19937 rng(seed++);
    std::uniform_real_distribution<float> u2(-2, 2), u1(-1, 1);
    std::vector<float> qkv(B * N * 3 * D), dout(B * N * D);
    for (auto& x : qkv) x = u2(rng);
    for (auto& x : dout) x = u1(rng);
    const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
    // Emulated GPU; outputs poisoned with NaN first.
    std::vector<float> out(B * N * D, NAN), saved(B * H * N + B * N * D, NAN), dq(B * N * 3 * D, NAN),
        out_inf(B * N * D, NAN);
    if (Dh == 32) {
      emu_forward<32>(qkv.data(), out.data(), saved.data(), B, N, H, scale);
      emu_forward<32>(qkv.data(), out_inf.data(), nullptr, B, N, H, scale);
      emu_backward<32>(dout.data(), qkv.data(), saved.data(), dq.data(), B, N, H, scale);
    } else {
      emu_forward<64>(qkv.data(), out.data(), saved.data(), B, N, H, scale);
      emu_forward<64>(qkv.data(), out_inf.data(), nullptr, B, N, H, scale);
      emu_backward<64>(dout.data(), qkv.data(), saved.data(), dq.data(), B, N, H, scale);
    }
    // CPU backend.
    std::vector<float> c_out(B * N * D), c_probs(B * H * N * N), c_dq(B * N * 3 * D);
    Status st = cpu.attention_forward(qkv.data(), c_out.data(), c_probs.data(), B, N, H, Dh, DType::kF32);
    if (st.ok()) st = cpu.attention_backward(dout.data(), qkv.data(), c_probs.data(), c_dq.data(), B, N, H, Dh, DType::kF32);
    if (!st.ok()) { std::printf("cpu failed: %s\n", st.message().c_str()); return 1; }
    std::vector<double> r_out, r_dq;
    ref(qkv, dout, B, N, H, Dh, &r_out, &r_dq);
    const double e_out = rel(c_out, out), e_inf = rel(c_out, out_inf), e_dq = rel(c_dq, dq);
    const double e_copy = rel(out, std::vector<float>(saved.begin() + B * H * N, saved.end()));
    const double tol = (N > 100) ? 2e-5 : 1e-5;
    const bool ok = e_out <= tol && e_inf <= tol && e_dq <= tol && e_copy == 0;
    failed += !ok;
    std::printf("B=%lld N=%lld H=%lld Dh=%lld  vs cpu: out %.2e (inference %.2e) d_qkv %.2e | copy %g | "
                "vs f64: gpu out %.2e dqkv %.2e, cpu out %.2e dqkv %.2e  %s\n",
                (long long)B, (long long)N, (long long)H, (long long)Dh, e_out, e_inf, e_dq, e_copy,
                rel(r_out, out), rel(r_dq, dq), rel(r_out, c_out), rel(r_dq, c_dq), ok ? "ok" : "FAIL");
  }
  std::printf("yields %ld, %s\n", emu::yields, failed ? "FAIL" : "PASS");
  return failed != 0;
}
