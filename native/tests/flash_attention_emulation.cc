// Host emulation of the fused attention kernels: every CUDA thread is a ucontext fiber,
// __syncthreads and warp shuffles are barriers, __shared__ arrays are per-instantiation statics.
// Runs the exact kernel source of native/cuda/flash_attention.cuh (float32 compute) and
// native/cuda/flash_attention_bf16.cuh (bf16 compute, tensor cores) and compares against
// CpuBackend (the reference) in the same compute dtype and against a float64 naive reference of
// the same definition. Outputs start as NaN, so an element no thread writes fails; `--reverse`
// runs each block's threads in the opposite order, so a missing barrier shows up as a different
// result. The grids below mirror attention.cu's launches: keep the two in step.
//
// The bf16 kernels' two hardware instructions are emulated from the PTX ISA's definitions:
// mma.sync m16n8k16 as a warp-collective exchange — every lane publishes its fragment registers,
// each lane rebuilds A (16×16) and B (16×8) through the ISA's per-lane layout and computes its
// own four accumulator elements (products exact, summed in double, rounded once: at least as
// accurate as the hardware's float32 accumulation) — and cvt.rn.bf16x2.f32 as two roundings to
// nearest even. All 32 lanes of a warp must reach the same mma, or the emulation aborts.
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <type_traits>
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
struct MmaLane { uint32_t a[4], b[2]; int tag; };
std::vector<MmaLane> mma_slots;  // an mma's fragment registers, one per thread of the block
constexpr int kMmaTag = 0x6d6d61;
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
    mma_slots.assign(threads, MmaLane());
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

// ---- the bf16 kernels' tensor-core instructions ------------------------------------------------
#include "../core/bf16.h"

#define RA_EMULATED_TENSOR_CORES
namespace repadapter {
namespace flash_bf16 {

// Element `half` (0: bits 0–15, 1: bits 16–31) of a bf16 pair register.
inline float bf16_half(uint32_t reg, int half) {
  return bf16_to_float(static_cast<uint16_t>(half ? reg >> 16 : reg & 0xffffu));
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, acc += A·B, by the PTX ISA's fragment
// layout for .m16n8k16 with .bf16 (groupID g = lane >> 2, threadID_in_group t = lane % 4):
//   A element a_i (i = 0..7, register i/2, half i%2): row g for i in {0,1,4,5}, g + 8 otherwise;
//     column 2t + (i & 1), plus 8 for i >= 4
//   B element b_i (i = 0..3, register i/2, half i%2): row 2t + (i & 1), plus 8 for i >= 2;
//     column g
//   C/D element c_i (i = 0..3): row g for i < 2, g + 8 otherwise; column 2t + (i & 1)
void mma_m16n8k16(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const int self = emu::cur, warp = self / 32, lane = self % 32;
  emu::MmaLane& mine = emu::mma_slots[self];
  for (int r = 0; r < 4; ++r) mine.a[r] = a[r];
  for (int r = 0; r < 2; ++r) mine.b[r] = b[r];
  mine.tag = emu::kMmaTag;
  emu::arrive(emu::warp_bars[warp]);
  float A[16][16], Bm[16][8];
  for (int l = 0; l < 32; ++l) {
    const emu::MmaLane& s = emu::mma_slots[warp * 32 + l];
    if (s.tag != emu::kMmaTag) { std::fprintf(stderr, "mma: lanes of a warp diverged\n"); std::abort(); }
    const int g = l >> 2, t = l % 4;
    for (int i = 0; i < 8; ++i) {
      const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
      const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = bf16_half(s.a[i / 2], i % 2);
    }
    for (int i = 0; i < 4; ++i) {
      const int row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
      Bm[row][g] = bf16_half(s.b[i / 2], i % 2);
    }
  }
  const int g = lane >> 2, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = i < 2 ? g : g + 8, col = t * 2 + (i & 1);
    double sum = acc[i];
    for (int k = 0; k < 16; ++k) sum += static_cast<double>(A[row][k]) * Bm[k][col];
    acc[i] = static_cast<float>(sum);
  }
  emu::arrive(emu::warp_bars[warp]);  // every lane has read the slots before any lane reuses its own
  mine.tag = 0;
}

// cvt.rn.bf16x2.f32: lo and hi rounded to nearest even, lo in the low half.
uint32_t pack_bf16(float lo, float hi) {
  return static_cast<uint32_t>(bf16_from_float(lo)) | static_cast<uint32_t>(bf16_from_float(hi)) << 16;
}

}  // namespace flash_bf16
}  // namespace repadapter

#include "../cuda/flash_attention.cuh"
#include "../cuda/flash_attention_bf16.cuh"
#include "../cpu/cpu_backend.h"

using namespace repadapter;

// Emulated fused_forward / fused_backward, as attention.cu launches them for `compute`; qkv is
// in the compute dtype, as the backend receives it (bf16 for the tensor-core kernels).
template <int Dh, typename O = float>
void emu_forward(const void* qkv, O* out, float* saved, int64_t B, int64_t N, int64_t H,
                 float scale, DType compute) {
  float* lse = saved;
  float* oc = saved ? saved + B * H * N : nullptr;
  if (compute == DType::kBF16) {
    const uint16_t* q16 = static_cast<const uint16_t*>(qkv);
    const int64_t tiles = (N + flash_bf16::kBlockRows - 1) / flash_bf16::kBlockRows;
    emu::launch(static_cast<unsigned>(B * H * tiles), flash_bf16::kThreads,
                [&] { flash_bf16::forward_kernel<Dh, O>(q16, out, lse, reinterpret_cast<uint16_t*>(oc), N, H, tiles, scale); });
    return;
  }
  if constexpr (std::is_same<O, float>::value) {
    const float* q32 = static_cast<const float*>(qkv);
    const int64_t tiles = (N + flash::kForwardRows - 1) / flash::kForwardRows;
    emu::launch(static_cast<unsigned>(B * H * tiles), flash::kThreads,
                [&] { flash::forward_kernel<Dh>(q32, out, lse, oc, N, H, tiles, scale); });
  }
}
// given_delta (optional): D [B,H,N] to use instead of row_dot_kernel's. G: d_qkv's type (bf16
// only from the tensor-core kernels).
template <int Dh, typename G = float>
void emu_backward(const float* d_out, const void* qkv, const float* saved, G* d_qkv,
                  int64_t B, int64_t N, int64_t H, float scale, DType compute,
                  const std::vector<float>* given_delta = nullptr) {
  std::vector<float> delta(B * H * N, NAN);
  const float* lse = saved;
  const float* o = saved + B * H * N;
  const int64_t rows = B * N * H;
  const unsigned rb = static_cast<unsigned>(std::min<int64_t>((rows * 32 + 255) / 256, 7));
  if (compute == DType::kBF16) {
    if (given_delta)
      delta = *given_delta;
    else
      emu::launch(rb, 256, [&] {
        flash::row_dot_kernel<Dh, true, uint16_t>(d_out, reinterpret_cast<const uint16_t*>(o), delta.data(), N, H, rows);
      });
    const uint16_t* q16 = static_cast<const uint16_t*>(qkv);
    const int64_t tiles = (N + flash_bf16::kBlockRows - 1) / flash_bf16::kBlockRows;
    emu::launch(static_cast<unsigned>(B * H * tiles), flash_bf16::kThreads, [&] {
      flash_bf16::backward_kv_kernel<Dh>(q16, d_out, lse, delta.data(), d_qkv, N, H, tiles, scale);
    });
    emu::launch(static_cast<unsigned>(B * H * tiles), flash_bf16::kThreads, [&] {
      flash_bf16::backward_q_kernel<Dh>(q16, d_out, lse, delta.data(), d_qkv, N, H, tiles, scale);
    });
    return;
  }
  if constexpr (std::is_same<G, float>::value) {
  const float* q32 = static_cast<const float*>(qkv);
  emu::launch(rb, 256, [&] { flash::row_dot_kernel<Dh>(d_out, o, delta.data(), N, H, rows); });
  const int64_t tiles = (N + flash::kTile - 1) / flash::kTile;
  emu::launch(static_cast<unsigned>(B * H * tiles), flash::kThreads, [&] {
    flash::backward_kv_kernel<Dh>(q32, d_out, lse, delta.data(), d_qkv, N, H, tiles, scale);
  });
  emu::launch(static_cast<unsigned>(B * H * tiles), flash::kThreads, [&] {
    flash::backward_q_kernel<Dh>(q32, d_out, lse, delta.data(), d_qkv, N, H, tiles, scale);
  });
  }
}

// float64 naive reference of cpu/attention.cc's definition for `compute`: in bf16, the inputs,
// exp(s − m) in the value product, p in dV's and dS in dQ's and dK's are rounded to bf16.
// running_max_tile > 0 (bf16): out as the forward kernel defines it instead, each exp(s − m)
// rounded against the maximum over the key tiles (of that many keys) so far, then rescaled.
//
// Float32 code holds e, p and dS up to a few ulp of these values (its sums run in other orders,
// its exp differs); where one lies so close to a bf16 rounding midpoint that float32 may round
// it the other way, that term may differ by one bf16 ulp. The slack vectors bound how far such
// terms can move each output (zero elsewhere, and in float32 compute).
struct Reference {
  std::vector<double> out, out_slack, dqkv, dqkv_slack;
  std::vector<float> delta;  // D = rowsum(dP ⊙ p) [B,H,N]
  int64_t ambiguous = 0;     // terms that may round either way
};

Reference reference(const std::vector<float>& qkv, const std::vector<float>& dout, int64_t B,
                    int64_t N, int64_t H, int64_t Dh, DType compute, int64_t running_max_tile = 0) {
  // How far float32 e and p may sit from these, relative, and dS relative to p·(|dP| + |D|):
  // score sums of Dh = 64 products of values up to 4 (~1e-6), a 2-ulp exp, with room.
  constexpr double kEta = 1e-5;
  const bool bf16 = compute == DType::kBF16;
  Reference r;
  auto rd = [&](double x) {  // the definition's rounding of a float32 value, in bf16 compute
    return bf16 ? static_cast<double>(bf16_to_float(bf16_from_float(static_cast<float>(x)))) : x;
  };
  auto rd_slack = [&](double x, double delta, double* slack) {  // rd, and one ulp of slack if ambiguous
    *slack = rd(x + delta) - rd(x - delta);
    r.ambiguous += *slack > 0;
    return rd(x);
  };
  const int64_t D = H * Dh, ld = 3 * D;
  const double scale = 1.0 / std::sqrt(static_cast<double>(static_cast<float>(Dh)));
  r.out.assign(B * N * D, 0);
  r.out_slack.assign(B * N * D, 0);
  r.dqkv.assign(B * N * ld, 0);
  r.dqkv_slack.assign(B * N * ld, 0);
  r.delta.assign(B * H * N, 0);
  std::vector<double> S(N), P(N * N), E(N * N), E_slack(N * N), dS(N * N), dS_slack(N * N),
      Pr(N * N), Pr_slack(N * N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      auto q = [&](int64_t i, int64_t d) { return rd(qkv[b * N * ld + i * ld + h * Dh + d]); };
      auto k = [&](int64_t i, int64_t d) { return rd(qkv[b * N * ld + i * ld + D + h * Dh + d]); };
      auto v = [&](int64_t i, int64_t d) { return rd(qkv[b * N * ld + i * ld + 2 * D + h * Dh + d]); };
      auto g = [&](int64_t i, int64_t d) { return rd(dout[b * N * D + i * D + h * Dh + d]); };
      for (int64_t i = 0; i < N; ++i) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < N; ++j) {
          double s = 0;
          for (int64_t d = 0; d < Dh; ++d) s += q(i, d) * k(j, d);
          S[j] = s * scale;
          mx = std::max(mx, S[j]);
        }
        double sum = 0, running = -INFINITY;  // running: the maximum over the key tiles so far
        for (int64_t j = 0; j < N; ++j) {
          sum += (P[i * N + j] = std::exp(S[j] - mx));
          if (running_max_tile > 0 && j % running_max_tile == 0)
            for (int64_t jj = j; jj < std::min(N, j + running_max_tile); ++jj) running = std::max(running, S[jj]);
          const double m = running_max_tile > 0 ? running : mx;  // e is rounded against m
          const double e = std::exp(S[j] - m), to_final = std::exp(m - mx);
          E[i * N + j] = rd_slack(e, kEta * e, &E_slack[i * N + j]) * to_final;
          E_slack[i * N + j] *= to_final;
        }
        for (int64_t j = 0; j < N; ++j) P[i * N + j] /= sum;
        for (int64_t d = 0; d < Dh; ++d) {
          double o = 0, slack = 0;
          for (int64_t j = 0; j < N; ++j) {
            o += (bf16 ? E[i * N + j] : P[i * N + j]) * v(j, d);
            slack += E_slack[i * N + j] * std::fabs(v(j, d));
          }
          r.out[b * N * D + i * D + h * Dh + d] = bf16 ? o / sum : o;
          r.out_slack[b * N * D + i * D + h * Dh + d] = slack / sum;
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
        for (int64_t j = 0; j < N; ++j) {
          const double p = P[i * N + j], dp = dS[i * N + j];
          dS[i * N + j] = rd_slack(p * (dp - dot), kEta * p * (std::fabs(dp) + std::fabs(dot)), &dS_slack[i * N + j]);
          Pr[i * N + j] = rd_slack(p, kEta * p, &Pr_slack[i * N + j]);
        }
        r.delta[(b * H + h) * N + i] = static_cast<float>(dot);
      }
      for (int64_t j = 0; j < N; ++j)
        for (int64_t d = 0; d < Dh; ++d) {
          double dq = 0, dk = 0, dv = 0, sq = 0, sk = 0, sv = 0;
          for (int64_t i = 0; i < N; ++i) {
            dq += dS[j * N + i] * k(i, d);
            sq += dS_slack[j * N + i] * std::fabs(k(i, d));
            dk += dS[i * N + j] * q(i, d);
            sk += dS_slack[i * N + j] * std::fabs(q(i, d));
            dv += Pr[i * N + j] * g(i, d);
            sv += Pr_slack[i * N + j] * std::fabs(g(i, d));
          }
          const int64_t row = b * N * ld + j * ld + h * Dh;
          r.dqkv[row + d] = scale * dq;
          r.dqkv_slack[row + d] = scale * sq;
          r.dqkv[row + D + d] = scale * dk;
          r.dqkv_slack[row + D + d] = scale * sk;
          r.dqkv[row + 2 * D + d] = dv;
          r.dqkv_slack[row + 2 * D + d] = sv;
        }
    }
  return r;
}

// max_i (|got_i − ref_i| − slack_i, at least 0) / max_i |ref_i|: an error beyond what rounding
// ambiguity explains, relative to the tensor's scale.
template <class Bv>
double excess(const std::vector<double>& ref, const std::vector<double>& slack, const Bv& got) {
  double scale = 0, err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite((double)got[i])) return INFINITY;
    scale = std::max(scale, std::fabs(ref[i]));
    err = std::max(err, std::fabs((double)got[i] - ref[i]) - slack[i]);
  }
  return std::max(err, 0.0) / scale;
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

// Tolerances, relative to each tensor's largest value.
// float32, against CpuBackend: the same arithmetic in another order (measured 6.4e-7).
// bf16, each kernel against the float64 definition it implements exactly, beyond the slack of
// terms that may round either way (see Reference): float32 summation order (kExact).
// bf16, end to end against CpuBackend (kEndToEnd): the CPU rounds each exp(s − m) against the
// row's final maximum, the forward kernel against the running one (terms of rows whose maximum
// grows after the first key tile differ by a bf16 rounding), and backward's D is
// rowsum(dÔ ∘ out) with out's own roundings instead of rowsum(dP ∘ p). Both are bf16 rounding
// effects, ~1e-3; a wrong fragment layout or a lost tile is O(1). Measured values: NOTES.md.
constexpr double kExact = 1e-5, kEndToEnd = 1e-2;

int main(int argc, char** argv) {
  struct Shape { int64_t B, N, H, Dh; };
  // N below, at and past the tiles of both kernel sets (32 and 64 rows); Dh 32 and 64; many blocks.
  std::vector<Shape> shapes = {{2, 50, 4, 32}, {2, 7, 3, 64}, {1, 65, 2, 64}, {1, 197, 2, 64},
                               {3, 33, 2, 32}, {1, 1, 1, 64}, {16, 12, 8, 32}, {1, 130, 2, 32}};
  if (argc > 1 && std::strcmp(argv[1], "--reverse") == 0) emu::reverse_order = true;
  CpuBackend cpu;
  int failed = 0;
  for (DType compute : {DType::kF32, DType::kBF16}) {
    const bool bf16 = compute == DType::kBF16;
    if (bf16)
      std::printf("bf16 compute (flash_attention_bf16.cuh): kernels against their own float64 definition "
                  "beyond rounding slack (tolerance %.0e), end to end against the CPU (%.0e)\n", kExact, kEndToEnd);
    else
      std::printf("float32 compute (flash_attention.cuh): against the CPU, tolerance 1e-5 (2e-5 for N > 100)\n");
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
          out_inf(B * N * D, NAN), dq_given(B * N * 3 * D, NAN);
      const Reference r = reference(qkv, dout, B, N, H, Dh, compute);
      // What the backends receive: qkv in the compute dtype (bf16: the same values rounded, which
      // the definition rounds anyway).
      std::vector<uint16_t> qkv16(bf16 ? qkv.size() : 0);
      for (size_t i = 0; i < qkv16.size(); ++i) qkv16[i] = bf16_from_float(qkv[i]);
      const void* given = bf16 ? static_cast<const void*>(qkv16.data()) : qkv.data();
      auto run = [&](auto forward, auto backward) {
        forward(given, out.data(), saved.data(), B, N, H, scale, compute);
        forward(given, out_inf.data(), nullptr, B, N, H, scale, compute);
        backward(dout.data(), given, saved.data(), dq.data(), B, N, H, scale, compute, nullptr);
        // The backward kernels alone: given the definition's D instead of row_dot_kernel's.
        if (bf16) backward(dout.data(), given, saved.data(), dq_given.data(), B, N, H, scale, compute, &r.delta);
      };
      if (Dh == 32)
        run(emu_forward<32>, emu_backward<32>);
      else
        run(emu_forward<64>, emu_backward<64>);
      // CPU backend.
      std::vector<float> c_out(B * N * D), c_probs(B * H * N * N), c_dq(B * N * 3 * D);
      Status st = cpu.attention_forward(given, c_out.data(), nullptr, c_probs.data(), B, N, H, Dh, compute);
      if (st.ok()) st = cpu.attention_backward(dout.data(), given, c_probs.data(), c_dq.data(), nullptr, B, N, H, Dh, compute);
      if (!st.ok()) { std::printf("cpu failed: %s\n", st.message().c_str()); return 1; }
      const double e_out = rel(c_out, out), e_inf = rel(c_out, out_inf), e_dq = rel(c_dq, dq);
      // The saved copy of out: float32, or bf16 from the tensor-core kernel (then out rounded).
      std::vector<float> copy(B * N * D), expected_copy(out);
      for (int64_t i = 0; i < B * N * D; ++i) {
        copy[i] = bf16 ? bf16_to_float(reinterpret_cast<const uint16_t*>(saved.data() + B * H * N)[i])
                       : saved[B * H * N + i];
        if (bf16) expected_copy[i] = bf16_to_float(bf16_from_float(out[i]));
      }
      const double e_copy = rel(expected_copy, copy);
      std::printf("  B=%lld N=%lld H=%lld Dh=%lld  vs cpu: out %.2e (inference %.2e) d_qkv %.2e | copy %g",
                  (long long)B, (long long)N, (long long)H, (long long)Dh, e_out, e_inf, e_dq, e_copy);
      bool ok = e_copy == 0;
      if (!bf16) {
        const double tol = N > 100 ? 2e-5 : 1e-5;
        ok = ok && e_out <= tol && e_inf <= tol && e_dq <= tol;
        std::printf(" | vs f64: gpu out %.2e dqkv %.2e, cpu out %.2e dqkv %.2e", rel(r.out, out),
                    rel(r.dqkv, dq), rel(r.out, c_out), rel(r.dqkv, c_dq));
      } else {
        const Reference rk = reference(qkv, dout, B, N, H, Dh, compute, flash_bf16::kForwardKeys);
        const double x_fwd = excess(rk.out, rk.out_slack, out), x_bwd = excess(r.dqkv, r.dqkv_slack, dq_given);
        // d_qkv stored in bf16 (for a frozen qkv Linear): each element the float32 one rounded.
        std::vector<uint16_t> dq16(dq.size(), 0x7fc0);
        if (Dh == 32)
          emu_backward<32, uint16_t>(dout.data(), given, saved.data(), dq16.data(), B, N, H, scale, compute);
        else
          emu_backward<64, uint16_t>(dout.data(), given, saved.data(), dq16.data(), B, N, H, scale, compute);
        int64_t unequal = 0;
        for (size_t i = 0; i < dq.size(); ++i) unequal += dq16[i] != bf16_from_float(dq[i]);
        // out stored in bf16 (for a frozen proj Linear): likewise.
        std::vector<uint16_t> out16(out.size(), 0x7fc0);
        if (Dh == 32)
          emu_forward<32, uint16_t>(given, out16.data(), nullptr, B, N, H, scale, compute);
        else
          emu_forward<64, uint16_t>(given, out16.data(), nullptr, B, N, H, scale, compute);
        for (size_t i = 0; i < out.size(); ++i) unequal += out16[i] != bf16_from_float(out[i]);
        std::printf(" | bf16 out, d_qkv ≠ rounded float32: %lld", (long long)unequal);
        ok = ok && e_out <= kEndToEnd && e_inf <= kEndToEnd && e_dq <= kEndToEnd && x_fwd <= kExact &&
             x_bwd <= kExact && unequal == 0;
        std::printf(" | vs f64 beyond slack (%lld, %lld terms): forward %.2e, backward given D %.2e; cpu out %.2e "
                    "dqkv %.2e", (long long)rk.ambiguous, (long long)r.ambiguous, x_fwd, x_bwd,
                    excess(r.out, r.out_slack, c_out), excess(r.dqkv, r.dqkv_slack, c_dq));
      }
      failed += !ok;
      std::printf("  %s\n", ok ? "ok" : "FAIL");
    }
  }
  std::printf("yields %ld, %s\n", emu::yields, failed ? "FAIL" : "PASS");
  return failed != 0;
}
