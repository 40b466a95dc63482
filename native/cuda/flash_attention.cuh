// Fused ("flash") attention kernels for the head widths of the ViTs (Dh = 32 and 64), float32
// on CUDA cores. attention.cu launches them; the N×N scores and probabilities never reach
// device memory, so a training step keeps O(N·Dh) per (sample, head) instead of O(N²).
//
// Every kernel runs 256 threads as a 16×16 grid (tx = tid % 16, ty = tid / 16). A thread owns
// the rows ty + 16a and the columns tx + 16b of a score tile, and the head dimensions
// tx + 16c (c < Dh/16) of an accumulator: 16 lanes that share ty hold one row between them
// (half a warp, so row reductions are four shuffles), and each warp's shared-memory reads are
// either broadcasts or 16 consecutive words. Tiles are padded by one word per row ([.][Dh+1])
// so that the 16 lanes reading 16 different rows at one d hit 16 different banks, and score
// tiles by 16 words so that the two half-warps writing them land in disjoint banks.
//
// Forward (one block per (b, h, 64 query rows)): K and V stream through shared memory 32 keys
// at a time; each row keeps a running maximum m and sum l of exp(s − m) and rescales its output
// by exp(m_old − m_new) when the maximum grows (online softmax). It writes out and, for
// training, lse = m + log l per row and a copy of out (backward's D = rowsum(dO ∘ O) needs O,
// which the model does not keep when the projection after attention is frozen).
//
// Backward recomputes P = exp(scale·q kᵀ − lse) from the saved lse, in two kernels that each own
// the rows they write, so nothing is added atomically and results do not depend on scheduling:
//   keys    (one block per (b, h, 32 key rows)):   dV = Pᵀ dO, dK = scale · dSᵀ Q over all queries
//   queries (one block per (b, h, 32 query rows)): dQ = scale · dS K over all keys
// with dP = dO Vᵀ and dS = P ∘ (dP − D) formed in each from the tiles it holds. Both read
// D = rowsum(dO ∘ O) (= rowsum(dP ∘ P)), computed first by row_dot_kernel.
//
// Masking for N not a multiple of a tile: rows past N load as zeros, are never stored, and get
// lse = +inf in backward (so their P is exactly 0); key columns past N get score −inf in
// forward and P = 0 in the query kernel, the only places where a sum runs over keys.
#pragma once
#include <cmath>
#include <cstdint>

#include "../core/bf16.h"

namespace repadapter {
namespace flash {

constexpr int kThreads = 256;
constexpr int kForwardRows = 64;  // query rows per forward block: K and V are read N/64 times
constexpr int kTile = 32;         // keys per step; rows per backward block
constexpr int kScorePad = 16;

__device__ __forceinline__ float half_warp_max(float v) {
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float half_warp_sum(float v) {
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// dst[r][d] = rows r0 + r of a matrix with N rows, Dh columns and row stride ld; 0 past N.
// Consecutive threads read consecutive d: each warp reads whole 128-byte row segments.
template <int R, int Dh, int S>
__device__ __forceinline__ void load_rows(float (*dst)[S], const float* src, int64_t ld,
                                          int64_t r0, int64_t N) {
  for (int idx = threadIdx.x; idx < R * Dh; idx += kThreads) {
    const int r = idx / Dh, d = idx % Dh;
    dst[r][d] = r0 + r < N ? src[(r0 + r) * ld + d] : 0.0f;
  }
}

// The two products both backward kernels form from shared tiles of one row block (rows
// ty + 16a of x1, x2) and one column block (rows tx + 16c of y1, y2):
//   s[a][c] = Σ_d x1·y1 (the scores before scaling), dp[a][c] = Σ_d x2·y2 (dO·V),
// summed over d in order. fmaf is commutative, so with q, k in either role s has the forward's
// bits, and exp(s·scale − lse) is the forward's P.
template <int R, int Dh, int S>
__device__ __forceinline__ void score_and_dp_tiles(const float (*x1)[S], const float (*x2)[S],
                                                   const float (*y1)[S], const float (*y2)[S],
                                                   float (&s)[R][R], float (&dp)[R][R]) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int a = 0; a < R; ++a)
#pragma unroll
    for (int c = 0; c < R; ++c) s[a][c] = dp[a][c] = 0.0f;
#pragma unroll 8
  for (int d = 0; d < Dh; ++d) {
    float x1a[R], x2a[R], y1c[R], y2c[R];
#pragma unroll
    for (int a = 0; a < R; ++a) {
      x1a[a] = x1[ty + 16 * a][d];
      x2a[a] = x2[ty + 16 * a][d];
    }
#pragma unroll
    for (int c = 0; c < R; ++c) {
      y1c[c] = y1[tx + 16 * c][d];
      y2c[c] = y2[tx + 16 * c][d];
    }
#pragma unroll
    for (int a = 0; a < R; ++a)
#pragma unroll
      for (int c = 0; c < R; ++c) {
        s[a][c] = fmaf(x1a[a], y1c[c], s[a][c]);
        dp[a][c] = fmaf(x2a[a], y2c[c], dp[a][c]);
      }
  }
}

// qkv [B,N,3,H,Dh] → out [B,N,H,Dh]; lse [B,H,N] and o_copy [B,N,H,Dh] both null or both set.
// blockIdx.x = (b·H + h)·tiles + query tile: the tiles of one head run side by side and share
// its K and V in L2.
template <int Dh>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const float* qkv, float* out, float* lse, float* o_copy, int64_t N, int64_t H,
                   int64_t tiles, float scale) {
  constexpr int BQ = kForwardRows, BK = kTile, RQ = BQ / 16, RK = BK / 16, DC = Dh / 16;
  __shared__ float qs[BQ][Dh + 1];
  __shared__ float ks[BK][Dh + 1];
  __shared__ float vs[BK][Dh];  // read along rows only: no padding needed
  __shared__ float ps[BQ][BK + kScorePad];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t bh = blockIdx.x / tiles, i0 = (blockIdx.x % tiles) * BQ;
  const int64_t b = bh / H, h = bh % H, D = H * Dh, ld = 3 * D;
  const float* q = qkv + b * N * ld + h * Dh;
  const float* k = q + D;
  const float* v = q + 2 * D;
  load_rows<BQ, Dh>(qs, q, ld, i0, N);

  float m[RQ], l[RQ], o[RQ][DC];
#pragma unroll
  for (int a = 0; a < RQ; ++a) {
    m[a] = -INFINITY;
    l[a] = 0.0f;
#pragma unroll
    for (int c = 0; c < DC; ++c) o[a][c] = 0.0f;
  }
  for (int64_t j0 = 0; j0 < N; j0 += BK) {
    __syncthreads();  // the previous step has finished reading ks, vs and ps
    load_rows<BK, Dh>(ks, k, ld, j0, N);
    load_rows<BK, Dh>(vs, v, ld, j0, N);
    __syncthreads();

    float s[RQ][RK];
#pragma unroll
    for (int a = 0; a < RQ; ++a)
#pragma unroll
      for (int c = 0; c < RK; ++c) s[a][c] = 0.0f;
#pragma unroll 8
    for (int d = 0; d < Dh; ++d) {
      float qa[RQ], kb[RK];
#pragma unroll
      for (int a = 0; a < RQ; ++a) qa[a] = qs[ty + 16 * a][d];
#pragma unroll
      for (int c = 0; c < RK; ++c) kb[c] = ks[tx + 16 * c][d];
#pragma unroll
      for (int a = 0; a < RQ; ++a)
#pragma unroll
        for (int c = 0; c < RK; ++c) s[a][c] = fmaf(qa[a], kb[c], s[a][c]);
    }

#pragma unroll
    for (int a = 0; a < RQ; ++a) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int c = 0; c < RK; ++c) {
        s[a][c] = j0 + tx + 16 * c < N ? s[a][c] * scale : -INFINITY;
        tile_max = fmaxf(tile_max, s[a][c]);
      }
      // Finite from the first step on: every step has at least one key below N.
      const float m_new = fmaxf(m[a], half_warp_max(tile_max));
      const float rescale = expf(m[a] - m_new);  // 0 on the first step (m = −inf)
      float sum = 0.0f;
#pragma unroll
      for (int c = 0; c < RK; ++c) {
        const float p = expf(s[a][c] - m_new);
        ps[ty + 16 * a][tx + 16 * c] = p;
        sum += p;
      }
      l[a] = l[a] * rescale + half_warp_sum(sum);
      m[a] = m_new;
#pragma unroll
      for (int c = 0; c < DC; ++c) o[a][c] *= rescale;
    }
    __syncthreads();

#pragma unroll 8
    for (int j = 0; j < BK; ++j) {
      float pa[RQ], vc[DC];
#pragma unroll
      for (int a = 0; a < RQ; ++a) pa[a] = ps[ty + 16 * a][j];
#pragma unroll
      for (int c = 0; c < DC; ++c) vc[c] = vs[j][tx + 16 * c];
#pragma unroll
      for (int a = 0; a < RQ; ++a)
#pragma unroll
        for (int c = 0; c < DC; ++c) o[a][c] = fmaf(pa[a], vc[c], o[a][c]);
    }
  }

#pragma unroll
  for (int a = 0; a < RQ; ++a) {
    const int64_t i = i0 + ty + 16 * a;
    if (i >= N) continue;
    const int64_t row = (b * N + i) * D + h * Dh;
#pragma unroll
    for (int c = 0; c < DC; ++c) {
      const float y = o[a][c] / l[a];
      out[row + tx + 16 * c] = y;
      if (o_copy) o_copy[row + tx + 16 * c] = y;
    }
    if (lse && tx == 0) lse[bh * N + i] = m[a] + logf(l[a]);
  }
}

__device__ __forceinline__ float saved_out(float x) { return x; }
__device__ __forceinline__ float saved_out(uint16_t x) { return bf16_to_float(x); }

// delta[(b·H + h)·N + i] = Σ_d dO[b,i,h,d] · O[b,i,h,d], one warp per row of [B,N,H] (in
// memory order), summed in double. RoundDO: dO rounded to bf16 first (the dÔ of bf16 compute,
// flash_attention_bf16.cuh), whose saved O is bf16 too (O = uint16_t).
template <int Dh, bool RoundDO = false, typename O = float>
__global__ void row_dot_kernel(const float* d_out, const O* o, float* delta, int64_t N,
                               int64_t H, int64_t rows) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; r < rows;
       r += warps) {
    double t = 0;
    for (int d = lane; d < Dh; d += 32) {
      const float g = RoundDO ? bf16_to_float(bf16_from_float(d_out[r * Dh + d]))
                              : d_out[r * Dh + d];
      t += static_cast<double>(g) * saved_out(o[r * Dh + d]);
    }
    for (int off = 16; off > 0; off >>= 1) t += __shfl_xor_sync(0xffffffffu, t, off);
    if (lane == 0) {
      const int64_t h = r % H, i = (r / H) % N, b = r / (H * N);
      delta[(b * H + h) * N + i] = static_cast<float>(t);
    }
  }
}

// dK and dV of 32 keys of one (b, h): blockIdx.x = (b·H + h)·tiles + key tile. The block keeps
// its keys' K and V in shared memory and dK, dV in registers, and walks all queries 32 at a
// time; scores are laid out [key][query] so that the thread that owns a key row reads P and dS
// along that row.
template <int Dh>
__global__ void __launch_bounds__(kThreads)
    backward_kv_kernel(const float* qkv, const float* d_out, const float* lse, const float* delta,
                       float* d_qkv, int64_t N, int64_t H, int64_t tiles, float scale) {
  constexpr int T = kTile, R = T / 16, DC = Dh / 16;
  __shared__ float ks[T][Dh + 1];
  __shared__ float vs[T][Dh + 1];
  __shared__ float qs[T][Dh + 1];
  __shared__ float gs[T][Dh + 1];  // dO
  __shared__ float pt[T][T + kScorePad];   // P, [key][query]
  __shared__ float dst[T][T + kScorePad];  // dS, [key][query]
  __shared__ float lse_s[T], delta_s[T];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t bh = blockIdx.x / tiles, j0 = (blockIdx.x % tiles) * T;
  const int64_t b = bh / H, h = bh % H, D = H * Dh, ld = 3 * D;
  const float* q = qkv + b * N * ld + h * Dh;
  const float* g = d_out + b * N * D + h * Dh;
  load_rows<T, Dh>(ks, q + D, ld, j0, N);
  load_rows<T, Dh>(vs, q + 2 * D, ld, j0, N);

  float dk[R][DC], dv[R][DC];
#pragma unroll
  for (int a = 0; a < R; ++a)
#pragma unroll
    for (int c = 0; c < DC; ++c) dk[a][c] = dv[a][c] = 0.0f;
  for (int64_t i0 = 0; i0 < N; i0 += T) {
    __syncthreads();  // the previous step has finished reading qs, gs, pt, dst and the rows
    load_rows<T, Dh>(qs, q, ld, i0, N);
    load_rows<T, Dh>(gs, g, D, i0, N);
    if (threadIdx.x < T) {
      const int64_t i = i0 + threadIdx.x;
      lse_s[threadIdx.x] = i < N ? lse[bh * N + i] : INFINITY;  // P = 0 for rows past N
      delta_s[threadIdx.x] = i < N ? delta[bh * N + i] : 0.0f;
    }
    __syncthreads();

    // s and dp: key ty + 16a against query tx + 16c.
    float s[R][R], dp[R][R];
    score_and_dp_tiles<R, Dh>(ks, vs, qs, gs, s, dp);
#pragma unroll
    for (int a = 0; a < R; ++a)
#pragma unroll
      for (int c = 0; c < R; ++c) {
        const int i = tx + 16 * c;
        const float p = expf(s[a][c] * scale - lse_s[i]);
        pt[ty + 16 * a][i] = p;
        dst[ty + 16 * a][i] = p * (dp[a][c] - delta_s[i]);
      }
    __syncthreads();

#pragma unroll 8
    for (int i = 0; i < T; ++i) {
      float pa[R], sa[R], gc[DC], qc[DC];
#pragma unroll
      for (int a = 0; a < R; ++a) {
        pa[a] = pt[ty + 16 * a][i];
        sa[a] = dst[ty + 16 * a][i];
      }
#pragma unroll
      for (int c = 0; c < DC; ++c) {
        gc[c] = gs[i][tx + 16 * c];
        qc[c] = qs[i][tx + 16 * c];
      }
#pragma unroll
      for (int a = 0; a < R; ++a)
#pragma unroll
        for (int c = 0; c < DC; ++c) {
          dv[a][c] = fmaf(pa[a], gc[c], dv[a][c]);
          dk[a][c] = fmaf(sa[a], qc[c], dk[a][c]);
        }
    }
  }

#pragma unroll
  for (int a = 0; a < R; ++a) {
    const int64_t j = j0 + ty + 16 * a;
    if (j >= N) continue;
    float* row = d_qkv + b * N * ld + j * ld + h * Dh;
#pragma unroll
    for (int c = 0; c < DC; ++c) {
      row[D + tx + 16 * c] = dk[a][c] * scale;
      row[2 * D + tx + 16 * c] = dv[a][c];
    }
  }
}

// dQ of 32 queries of one (b, h): blockIdx.x = (b·H + h)·tiles + query tile. The block keeps
// its queries' Q and dO in shared memory and dQ in registers, and walks all keys 32 at a time.
template <int Dh>
__global__ void __launch_bounds__(kThreads)
    backward_q_kernel(const float* qkv, const float* d_out, const float* lse, const float* delta,
                      float* d_qkv, int64_t N, int64_t H, int64_t tiles, float scale) {
  constexpr int T = kTile, R = T / 16, DC = Dh / 16;
  __shared__ float qs[T][Dh + 1];
  __shared__ float gs[T][Dh + 1];  // dO
  __shared__ float ks[T][Dh + 1];
  __shared__ float vs[T][Dh + 1];
  __shared__ float dss[T][T + kScorePad];  // dS, [query][key]
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t bh = blockIdx.x / tiles, i0 = (blockIdx.x % tiles) * T;
  const int64_t b = bh / H, h = bh % H, D = H * Dh, ld = 3 * D;
  const float* q = qkv + b * N * ld + h * Dh;
  const float* k = q + D;
  const float* v = q + 2 * D;
  load_rows<T, Dh>(qs, q, ld, i0, N);
  load_rows<T, Dh>(gs, d_out + b * N * D + h * Dh, D, i0, N);
  float lse_r[R], delta_r[R], dq[R][DC];
#pragma unroll
  for (int a = 0; a < R; ++a) {
    const int64_t i = i0 + ty + 16 * a;
    lse_r[a] = i < N ? lse[bh * N + i] : INFINITY;
    delta_r[a] = i < N ? delta[bh * N + i] : 0.0f;
#pragma unroll
    for (int c = 0; c < DC; ++c) dq[a][c] = 0.0f;
  }

  for (int64_t j0 = 0; j0 < N; j0 += T) {
    __syncthreads();  // the previous step has finished reading ks and dss
    load_rows<T, Dh>(ks, k, ld, j0, N);
    load_rows<T, Dh>(vs, v, ld, j0, N);
    __syncthreads();

    // s and dp: query ty + 16a against key tx + 16c.
    float s[R][R], dp[R][R];
    score_and_dp_tiles<R, Dh>(qs, gs, ks, vs, s, dp);
#pragma unroll
    for (int a = 0; a < R; ++a)
#pragma unroll
      for (int c = 0; c < R; ++c) {
        // Keys past N load as zeros, so their score is finite: P must be cut to 0 here.
        const float p = j0 + tx + 16 * c < N ? expf(s[a][c] * scale - lse_r[a]) : 0.0f;
        dss[ty + 16 * a][tx + 16 * c] = p * (dp[a][c] - delta_r[a]);
      }
    __syncthreads();

#pragma unroll 8
    for (int j = 0; j < T; ++j) {
      float sa[R], kc[DC];
#pragma unroll
      for (int a = 0; a < R; ++a) sa[a] = dss[ty + 16 * a][j];
#pragma unroll
      for (int c = 0; c < DC; ++c) kc[c] = ks[j][tx + 16 * c];
#pragma unroll
      for (int a = 0; a < R; ++a)
#pragma unroll
        for (int c = 0; c < DC; ++c) dq[a][c] = fmaf(sa[a], kc[c], dq[a][c]);
    }
  }

#pragma unroll
  for (int a = 0; a < R; ++a) {
    const int64_t i = i0 + ty + 16 * a;
    if (i >= N) continue;
    float* row = d_qkv + b * N * ld + i * ld + h * Dh;
#pragma unroll
    for (int c = 0; c < DC; ++c) row[tx + 16 * c] = dq[a][c] * scale;
  }
}

}  // namespace flash
}  // namespace repadapter
