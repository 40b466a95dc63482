// Fused ("flash") attention on tensor cores for bf16 compute (DType::kBF16), head widths 32 and
// 64: FlashAttention-2's scheme with bf16 products and float32 sums, computing the bf16
// attention that native/cpu/attention.cc defines. attention.cu launches these kernels; the
// float32 kernels (flash_attention.cuh) are their layout and masking model: same grids of
// (b, h, row tile), same saved state (each row's lse and a copy of out, here in bf16, as
// PyTorch's flash attention keeps out), same split of backward
// into a key kernel (dK, dV) and a query kernel (dQ) that each own the rows they write, so
// nothing is added atomically and results do not depend on scheduling.
//
// Products: mma.sync m16n8k16 (bf16 operands, float32 accumulation), one warp per 16 rows.
// qkv arrives in bf16 (the model stores it so in bf16 compute), d_out in float32; tiles are
// rounded to bf16 (nearest even; qkv's already are) as they are staged into shared memory, two values per 32-bit word, and products read them from there in
// the fragment layouts of the PTX ISA (see mma_m16n8k16 below). Score tiles never leave
// registers: an mma's accumulator tile (16 × 8 floats) has the layout of half an operand tile
// (16 × 16 bf16) once rounded, so the probabilities feed the next product directly.
//
// Blocks are 4 warps = 64 rows: the query rows of a forward or dQ block, the key rows of a dK/dV
// block. A warp whose 16 rows all lie past N skips the arithmetic but still stages tiles and
// meets every barrier. Shared tiles are padded to rows of (pairs + 4) words so that the 8 rows ×
// 4 words one fragment load reads fall into 32 different banks.
//
// What each kernel computes, per (sample, head), with x̂ = bf16(x) and scale = Dh^-0.5:
//   forward  (64 query rows; keys stream 64 at a time): s = scale · q̂ k̂ᵀ; online softmax in
//     float32 — a running row maximum m, ℓ = Σ exp(s − m) of the unrounded values, and
//     o = Σ bf16(exp(s − m)) · v̂ rescaled by exp(m_old − m_new) when m grows; out = o / ℓ,
//     lse = m + log ℓ. This is the CPU's definition except that each exp(s − m) is rounded to
//     bf16 against the running maximum instead of the row's final one: the two differ where
//     the maximum changes after a key tile, by one bf16 rounding of those terms (the rescale
//     multiplies after rounding instead of before).
//   dK, dV   (64 key rows; queries stream 32 at a time): p = exp(scale · k̂ q̂ᵀ − lse) recomputed,
//     dp = v̂ dÔᵀ, ds = p ⊙ (dp − D), dV = Σ bf16(p)ᵀ dÔ, dK = scale · Σ bf16(ds)ᵀ q̂.
//   dQ       (64 query rows; keys stream 32 at a time): the same p and ds,
//     dQ = scale · Σ bf16(ds) k̂.
// d_qkv is float32, or bf16 (each element rounded once as it is stored) for a frozen qkv Linear.
// dÔ = bf16(d_out); D = rowsum(dÔ ⊙ ô), ô the saved bf16 copy of out (row_dot_kernel<Dh, true>
// of flash_attention.cuh),
// the CPU's rowsum(dP ⊙ p) in exact arithmetic.
//
// Masking for N not a multiple of a tile, as the float32 kernels: rows past N stage as zeros and
// are never stored; queries past N get lse = +inf in backward (p exactly 0); keys past N get
// score −inf in forward and p = 0 in the dQ kernel. Tiles of 8 keys (or queries) that lie wholly
// past N skip their products, which leaves zeros that the masks above turn into p = 0 anyway.
//
// sm_80 or newer (bf16 mma); attention.cu takes the float32 kernels on older GPUs.
#pragma once
#include <cmath>
#include <cstdint>

#include "../core/bf16.h"

namespace repadapter {
namespace flash_bf16 {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kBlockRows = 16 * kWarps;  // query rows (forward, dQ) or key rows (dK, dV) per block
constexpr int kForwardKeys = 64;         // keys per forward step
constexpr int kBackwardStep = 32;        // queries (dK, dV) or keys (dQ) per backward step
constexpr int kPad = 4;                  // words of padding per shared row

// The two instructions these kernels use beyond plain CUDA, each in one small function. The host
// emulation (native/tests/flash_attention_emulation.cc) defines RA_EMULATED_TENSOR_CORES and
// supplies its own versions: a warp-collective exchange that implements the same per-lane layout.
#ifndef RA_EMULATED_TENSOR_CORES
// acc += A · B for one 16×16 (A) by 16×8 (B) tile: mma.sync.aligned.m16n8k16.row.col.f32.bf16.
// bf16.f32, the warp's 32 lanes together. Per lane, with g = lane / 4 and t = lane % 4 (the PTX
// ISA's groupID and threadID_in_group), each register holding two bf16, the lower column (A)
// or row (B) in the low half:
//   a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]
//   a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//   b[0] = B[2t, 2t+1][g]    b[1] = B[2t+8, 2t+9][g]
//   acc[0], acc[1] = C[g][2t, 2t+1]    acc[2], acc[3] = C[g+8][2t, 2t+1]
__device__ __forceinline__ void mma_m16n8k16(float (&acc)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched there (see the top of this file)
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// lo and hi rounded to bf16 (nearest even) in one register, lo in the low half.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
  return 0;
#else
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));  // a → high half
  return r;
#endif
}
#endif  // RA_EMULATED_TENSOR_CORES

// Shared tiles hold bf16 pairs: a tile of W pairs per row is uint32_t[rows][W + kPad].
template <int W>
using Tile = uint32_t[W + kPad];

// A staged element as float: float32 as it is, bf16 widened exactly (rounding it again is a
// no-op, so a bf16 source stages the same bits it holds).
__device__ __forceinline__ float staged_value(float x) { return x; }
__device__ __forceinline__ float staged_value(uint16_t x) { return bf16_to_float(x); }

// An output element stored as float32, or rounded to bf16 (out for a frozen proj Linear, d_qkv
// for a frozen qkv Linear).
__device__ __forceinline__ void store_value(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_value(uint16_t* p, float v) { *p = bf16_from_float(v); }

// Rows [r0, r0 + R) of a matrix x (float32 or bf16) with N rows of Dh values (rows ld apart),
// rounded to bf16 into shared memory, zeros past N, in either or both of two layouts (null: not
// wanted):
//   along rows    rows[r][w] = (x[r][2w], x[r][2w+1])      [R][Dh/2 + kPad]: operands whose
//                 product sums over d (scores, dP)
//   across rows   cols[d][w] = (x[2w][d], x[2w+1][d])      [Dh][R/2 + kPad]: operands whose
//                 product sums over the rows (P·V, dSᵀ·Q, ...)
// Each thread converts 2×2 blocks; a warp takes 8 row pairs × 4 column pairs, which reads 32-byte
// row segments and writes the `cols` layout without bank conflicts (`rows` two-way).
template <int R, int Dh, typename T>
__device__ __forceinline__ void stage(Tile<Dh / 2>* rows, Tile<R / 2>* cols, const T* x,
                                      int64_t ld, int64_t r0, int64_t N) {
  static_assert(R % 16 == 0 && Dh % 8 == 0, "tile shapes");
  constexpr int kRowPairs = R / 2;
  for (int idx = threadIdx.x; idx < kRowPairs * (Dh / 2); idx += kThreads) {
    const int w = (idx / 4) % kRowPairs;                   // row pair
    const int c = idx % 4 + 4 * (idx / (4 * kRowPairs));  // column pair
    float v[2][2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t r = r0 + 2 * w + e;
      v[e][0] = r < N ? staged_value(x[r * ld + 2 * c]) : 0.0f;
      v[e][1] = r < N ? staged_value(x[r * ld + 2 * c + 1]) : 0.0f;
    }
    if (rows) {
      rows[2 * w][c] = pack_bf16(v[0][0], v[0][1]);
      rows[2 * w + 1][c] = pack_bf16(v[1][0], v[1][1]);
    }
    if (cols) {
      cols[2 * c][w] = pack_bf16(v[0][0], v[1][0]);
      cols[2 * c + 1][w] = pack_bf16(v[0][1], v[1][1]);
    }
  }
}

// The A operand (16 rows × 16 k) of rows r0.. and k = 16·kk.. from a tile whose rows are A's rows.
template <int S>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const uint32_t (*tile)[S], int r0,
                                       int kk) {
  const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  a[0] = tile[r0 + g][8 * kk + t];
  a[1] = tile[r0 + g + 8][8 * kk + t];
  a[2] = tile[r0 + g][8 * kk + 4 + t];
  a[3] = tile[r0 + g + 8][8 * kk + 4 + t];
}

// The B operand (16 k × 8 columns) of columns n0.. and k = 16·kk.. from a tile whose rows are B's
// columns (pairs along k): B = tileᵀ.
template <int S>
__device__ __forceinline__ void load_b(uint32_t (&b)[2], const uint32_t (*tile)[S], int n0,
                                       int kk) {
  const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  b[0] = tile[n0 + g][8 * kk + t];
  b[1] = tile[n0 + g][8 * kk + 4 + t];
}

// The A operand of k = 16·kk.. from accumulator tiles c[2kk] and c[2kk + 1] (columns 16·kk..,
// 16·kk + 8..), rounded to bf16: an accumulator lane holds the A elements of the same rows and
// columns.
template <int NT>
__device__ __forceinline__ void accumulators_as_a(uint32_t (&a)[4], const float (&c)[NT][4],
                                                  int kk) {
  a[0] = pack_bf16(c[2 * kk][0], c[2 * kk][1]);
  a[1] = pack_bf16(c[2 * kk][2], c[2 * kk][3]);
  a[2] = pack_bf16(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = pack_bf16(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// The score and dP tiles both backward kernels form, over the first `live` tiles of 8 columns
// (zeros past them): s = A1 · t1ᵀ and dp = A2 · t2ᵀ, the A operands held in registers (k-steps
// of 16 over d), t1 and t2 shared tiles whose rows are the columns.
template <int NT, int KD, int S>
__device__ __forceinline__ void score_and_dp_tiles(float (&s)[NT][4], float (&dp)[NT][4],
                                                   const uint32_t (&a1)[KD][4],
                                                   const uint32_t (&a2)[KD][4],
                                                   const uint32_t (*t1)[S],
                                                   const uint32_t (*t2)[S], int live) {
#pragma unroll
  for (int c = 0; c < NT; ++c) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[c][e] = dp[c][e] = 0.0f;
    if (c < live)
#pragma unroll
      for (int kk = 0; kk < KD; ++kk) {
        uint32_t bf[2];
        load_b(bf, t1, 8 * c, kk);
        mma_m16n8k16(s[c], a1[kk], bf);
        load_b(bf, t2, 8 * c, kk);
        mma_m16n8k16(dp[c], a2[kk], bf);
      }
  }
}

// Max and sum over the 4 lanes (t = 0..3) that share an accumulator row.
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Tiles of 8 columns from c0 on (at most NT) holding a column below N.
template <int NT>
__device__ __forceinline__ int live_tiles(int64_t c0, int64_t N) {
  const int64_t n = (N - c0 + 7) / 8;
  return n < NT ? static_cast<int>(n) : NT;
}

// qkv [B,N,3,H,Dh] → out [B,N,H,Dh] (float32, or O = uint16_t: bf16); lse [B,H,N] and o_copy
// [B,N,H,Dh] (bf16, as PyTorch's flash attention keeps out) both null or both set.
// blockIdx.x = (b·H + h)·tiles + query tile, as flash::forward_kernel.
template <int Dh, typename O>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const uint16_t* qkv, O* out, float* lse, uint16_t* o_copy, int64_t N, int64_t H,
                   int64_t tiles, float scale) {
  constexpr int BQ = kBlockRows, BK = kForwardKeys;
  // k-steps of 16 over d; tiles of 8 over d and over the keys
  constexpr int KD = Dh / 16, ND = Dh / 8, NK = BK / 8;
  __shared__ Tile<Dh / 2> qs[BQ];
  __shared__ Tile<Dh / 2> ks[BK];
  __shared__ Tile<BK / 2> vt[Dh];  // V across rows: P·V sums over keys
  const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  const int64_t bh = blockIdx.x / tiles, i0 = (blockIdx.x % tiles) * BQ;
  const int64_t b = bh / H, h = bh % H, D = H * Dh, ld = 3 * D;
  const uint16_t* q = qkv + b * N * ld + h * Dh;
  const uint16_t* k = q + D;
  const uint16_t* v = q + 2 * D;
  const int r0 = 16 * warp;              // the warp's rows in the tile
  const bool active = i0 + r0 < N;       // warp-uniform
  stage<BQ, Dh>(qs, nullptr, q, ld, i0, N);
  __syncthreads();
  uint32_t qf[KD][4];
#pragma unroll
  for (int kk = 0; kk < KD; ++kk) load_a(qf[kk], qs, r0, kk);

  // Row r = 0 is the lane's row g, r = 1 its row g + 8; l sums this lane's columns only.
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, o[ND][4];
#pragma unroll
  for (int n = 0; n < ND; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;
  for (int64_t j0 = 0; j0 < N; j0 += BK) {
    __syncthreads();  // the previous step has finished reading ks and vt
    stage<BK, Dh>(ks, nullptr, k, ld, j0, N);
    stage<BK, Dh>(nullptr, vt, v, ld, j0, N);
    __syncthreads();
    if (!active) continue;

    const int live = live_tiles<NK>(j0, N);
    float s[NK][4];
#pragma unroll
    for (int c = 0; c < NK; ++c) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[c][e] = 0.0f;
      if (c < live)
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
          uint32_t bf[2];
          load_b(bf, ks, 8 * c, kk);
          mma_m16n8k16(s[c], qf[kk], bf);
        }
    }
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int c = 0; c < NK; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[c][e] = j0 + 8 * c + 2 * t + (e & 1) < N ? s[c][e] * scale : -INFINITY;
        tile_max[e / 2] = fmaxf(tile_max[e / 2], s[c][e]);
      }
    float rescale[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // Finite from the first step on: every step has a key below N.
      const float m_new = fmaxf(m[r], quad_max(tile_max[r]));
      rescale[r] = expf(m[r] - m_new);  // 0 on the first step (m = −inf)
      m[r] = m_new;
      l[r] *= rescale[r];
    }
#pragma unroll
    for (int c = 0; c < NK; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[c][e] = expf(s[c][e] - m[e / 2]);  // s becomes e = exp(s − m), unrounded
        l[e / 2] += s[c][e];
      }
#pragma unroll
    for (int n = 0; n < ND; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[n][e] *= rescale[e / 2];
#pragma unroll
    for (int kk = 0; kk < NK / 2; ++kk) {
      if (2 * kk >= live) break;
      uint32_t pa[4];
      accumulators_as_a(pa, s, kk);  // bf16(e)
#pragma unroll
      for (int n = 0; n < ND; ++n) {
        uint32_t bf[2];
        load_b(bf, vt, 8 * n, kk);
        mma_m16n8k16(o[n], pa, bf);
      }
    }
  }
  if (!active) return;

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float row_sum = quad_sum(l[r]);
    const int64_t i = i0 + r0 + g + 8 * r;
    if (i >= N) continue;
    const int64_t row = (b * N + i) * D + h * Dh;
#pragma unroll
    for (int n = 0; n < ND; ++n)
#pragma unroll
      for (int e = 2 * r; e < 2 * r + 2; ++e) {
        const float y = o[n][e] / row_sum;
        store_value(out + row + 8 * n + 2 * t + (e & 1), y);
        if (o_copy) o_copy[row + 8 * n + 2 * t + (e & 1)] = bf16_from_float(y);
      }
    if (lse && t == 0) lse[bh * N + i] = m[r] + logf(row_sum);
  }
}

// dK and dV of 64 keys of one (b, h): blockIdx.x = (b·H + h)·tiles + key tile. Each warp keeps
// its 16 keys' K̂ and V̂ as operands and dK, dV as accumulators, and walks all queries 32 at a
// time; scores are [key][query], so bf16(P) and bf16(dS) are the A operands of Pᵀ·dÔ and dSᵀ·Q̂.
template <int Dh, typename G>
__global__ void __launch_bounds__(kThreads)
    backward_kv_kernel(const uint16_t* qkv, const float* d_out, const float* lse, const float* delta,
                       G* d_qkv, int64_t N, int64_t H, int64_t tiles, float scale) {
  constexpr int BK = kBlockRows, BQ = kBackwardStep;
  constexpr int KD = Dh / 16, ND = Dh / 8, NQ = BQ / 8;
  __shared__ Tile<Dh / 2> ks[BK];
  __shared__ Tile<Dh / 2> vs[BK];
  __shared__ Tile<Dh / 2> qs[BQ];  // Q̂ along rows: scores
  __shared__ Tile<BQ / 2> qt[Dh];  // Q̂ across rows: dSᵀ·Q̂
  __shared__ Tile<Dh / 2> gs[BQ];  // dÔ along rows: dP
  __shared__ Tile<BQ / 2> gt[Dh];  // dÔ across rows: Pᵀ·dÔ
  __shared__ float lse_s[BQ], delta_s[BQ];
  const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  const int64_t bh = blockIdx.x / tiles, j0 = (blockIdx.x % tiles) * BK;
  const int64_t b = bh / H, h = bh % H, D = H * Dh, ld = 3 * D;
  const uint16_t* q = qkv + b * N * ld + h * Dh;
  const float* dout = d_out + b * N * D + h * Dh;
  const int r0 = 16 * warp;
  const bool active = j0 + r0 < N;
  stage<BK, Dh>(ks, nullptr, q + D, ld, j0, N);
  stage<BK, Dh>(vs, nullptr, q + 2 * D, ld, j0, N);
  __syncthreads();
  uint32_t kf[KD][4], vf[KD][4];
#pragma unroll
  for (int kk = 0; kk < KD; ++kk) {
    load_a(kf[kk], ks, r0, kk);
    load_a(vf[kk], vs, r0, kk);
  }

  float dk[ND][4], dv[ND][4];
#pragma unroll
  for (int n = 0; n < ND; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.0f;
  for (int64_t i0 = 0; i0 < N; i0 += BQ) {
    __syncthreads();  // the previous step has finished reading qs, qt, gs, gt and the rows
    stage<BQ, Dh>(qs, qt, q, ld, i0, N);
    stage<BQ, Dh>(gs, gt, dout, D, i0, N);
    if (threadIdx.x < BQ) {
      const int64_t i = i0 + threadIdx.x;
      lse_s[threadIdx.x] = i < N ? lse[bh * N + i] : INFINITY;  // P = 0 for queries past N
      delta_s[threadIdx.x] = i < N ? delta[bh * N + i] : 0.0f;
    }
    __syncthreads();
    if (!active) continue;

    // s = k̂ q̂ᵀ and dp = v̂ dÔᵀ: key rows g, g + 8 of the warp against queries 8c + 2t + (e & 1).
    const int live = live_tiles<NQ>(i0, N);
    float s[NQ][4], dp[NQ][4];
    score_and_dp_tiles(s, dp, kf, vf, qs, gs, live);
#pragma unroll
    for (int c = 0; c < NQ; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = 8 * c + 2 * t + (e & 1);
        const float p = expf(s[c][e] * scale - lse_s[i]);
        s[c][e] = p;                               // s becomes P
        dp[c][e] = p * (dp[c][e] - delta_s[i]);    // dp becomes dS
      }
#pragma unroll
    for (int kk = 0; kk < NQ / 2; ++kk) {
      if (2 * kk >= live) break;
      uint32_t pa[4], sa[4];
      accumulators_as_a(pa, s, kk);   // bf16(P)
      accumulators_as_a(sa, dp, kk);  // bf16(dS)
#pragma unroll
      for (int n = 0; n < ND; ++n) {
        uint32_t bf[2];
        load_b(bf, gt, 8 * n, kk);
        mma_m16n8k16(dv[n], pa, bf);
        load_b(bf, qt, 8 * n, kk);
        mma_m16n8k16(dk[n], sa, bf);
      }
    }
  }
  if (!active) return;

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t j = j0 + r0 + g + 8 * r;
    if (j >= N) continue;
    G* row = d_qkv + b * N * ld + j * ld + h * Dh;
#pragma unroll
    for (int n = 0; n < ND; ++n)
#pragma unroll
      for (int e = 2 * r; e < 2 * r + 2; ++e) {
        const int d = 8 * n + 2 * t + (e & 1);
        store_value(row + D + d, dk[n][e] * scale);
        store_value(row + 2 * D + d, dv[n][e]);
      }
  }
}

// dQ of 64 queries of one (b, h): blockIdx.x = (b·H + h)·tiles + query tile. Each warp keeps its
// 16 queries' Q̂ and dÔ as operands and dQ as accumulators, and walks all keys 32 at a time.
template <int Dh, typename G>
__global__ void __launch_bounds__(kThreads)
    backward_q_kernel(const uint16_t* qkv, const float* d_out, const float* lse, const float* delta,
                      G* d_qkv, int64_t N, int64_t H, int64_t tiles, float scale) {
  constexpr int BQ = kBlockRows, BK = kBackwardStep;
  constexpr int KD = Dh / 16, ND = Dh / 8, NK = BK / 8;
  __shared__ Tile<Dh / 2> qs[BQ];
  __shared__ Tile<Dh / 2> gs[BQ];  // dÔ
  __shared__ Tile<Dh / 2> ks[BK];  // K̂ along rows: scores
  __shared__ Tile<BK / 2> kt[Dh];  // K̂ across rows: dS·K̂
  __shared__ Tile<Dh / 2> vs[BK];
  const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  const int64_t bh = blockIdx.x / tiles, i0 = (blockIdx.x % tiles) * BQ;
  const int64_t b = bh / H, h = bh % H, D = H * Dh, ld = 3 * D;
  const uint16_t* q = qkv + b * N * ld + h * Dh;
  const uint16_t* k = q + D;
  const uint16_t* v = q + 2 * D;
  const int r0 = 16 * warp;
  const bool active = i0 + r0 < N;
  stage<BQ, Dh>(qs, nullptr, q, ld, i0, N);
  stage<BQ, Dh>(gs, nullptr, d_out + b * N * D + h * Dh, D, i0, N);
  __syncthreads();
  uint32_t qf[KD][4], gf[KD][4];
#pragma unroll
  for (int kk = 0; kk < KD; ++kk) {
    load_a(qf[kk], qs, r0, kk);
    load_a(gf[kk], gs, r0, kk);
  }
  float lse_r[2], delta_r[2], dq[ND][4];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = i0 + r0 + g + 8 * r;
    lse_r[r] = i < N ? lse[bh * N + i] : INFINITY;
    delta_r[r] = i < N ? delta[bh * N + i] : 0.0f;
  }
#pragma unroll
  for (int n = 0; n < ND; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[n][e] = 0.0f;

  for (int64_t j0 = 0; j0 < N; j0 += BK) {
    __syncthreads();  // the previous step has finished reading ks, kt and vs
    stage<BK, Dh>(ks, kt, k, ld, j0, N);
    stage<BK, Dh>(vs, nullptr, v, ld, j0, N);
    __syncthreads();
    if (!active) continue;

    // s = q̂ k̂ᵀ and dp = dÔ v̂ᵀ: query rows g, g + 8 of the warp against keys
    // j0 + 8c + 2t + (e & 1).
    const int live = live_tiles<NK>(j0, N);
    float s[NK][4], dp[NK][4];
    score_and_dp_tiles(s, dp, qf, gf, ks, vs, live);
#pragma unroll
    for (int c = 0; c < NK; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        // Keys past N stage as zeros, so their score is finite: P must be cut to 0 here.
        const int r = e / 2;
        const float p =
            j0 + 8 * c + 2 * t + (e & 1) < N ? expf(s[c][e] * scale - lse_r[r]) : 0.0f;
        dp[c][e] = p * (dp[c][e] - delta_r[r]);  // dp becomes dS
      }
#pragma unroll
    for (int kk = 0; kk < NK / 2; ++kk) {
      if (2 * kk >= live) break;
      uint32_t sa[4];
      accumulators_as_a(sa, dp, kk);  // bf16(dS)
#pragma unroll
      for (int n = 0; n < ND; ++n) {
        uint32_t bf[2];
        load_b(bf, kt, 8 * n, kk);
        mma_m16n8k16(dq[n], sa, bf);
      }
    }
  }
  if (!active) return;

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = i0 + r0 + g + 8 * r;
    if (i >= N) continue;
    G* row = d_qkv + b * N * ld + i * ld + h * Dh;
#pragma unroll
    for (int n = 0; n < ND; ++n)
#pragma unroll
      for (int e = 2 * r; e < 2 * r + 2; ++e) store_value(row + 8 * n + 2 * t + (e & 1), dq[n][e] * scale);
  }
}

}  // namespace flash_bf16
}  // namespace repadapter
