/**
 * Resampling of a ViT's absolute position embedding to a new patch grid, exactly as timm does it
 * (`timm.layers.pos_embed.resample_abs_pos_embed`): the prefix (class token) rows are kept aside,
 * the grid rows are viewed as a [D, H, W] image and resized with `torch.nn.functional.interpolate`
 * (align_corners=False), and the prefix rows are put back in front.
 *
 * The interpolation follows PyTorch's CPU kernels (aten/src/ATen/native/cpu/UpSampleKernel.cpp):
 *
 * - bilinear / bicubic without antialias: the source coordinate of output pixel i is
 *   (i + 0.5)·in/out − 0.5; bilinear clamps it at 0 and blends the two neighbours; bicubic takes
 *   the four neighbours (indices clamped to the border) with Keys' kernel, a = −0.75.
 * - with antialias (PIL's scheme): output pixel i is centred at (i + 0.5)·scale in the input,
 *   scale = in/out; a triangle (bilinear) or Keys kernel with a = −0.5 (bicubic) is stretched by
 *   max(scale, 1), the taps inside the input are weighted and normalised to sum 1.
 *
 * Both are separable: we resize the width, then the height, in float64 (PyTorch works in float32,
 * so results agree to float32 rounding).
 *
 * Which settings timm uses depends on the checkpoint: `_load_weights` (Google .npz) resamples with
 * bilinear, no antialias; `checkpoint_filter_fn` (timm .pth / .safetensors) with bicubic and
 * antialias. `loadPretrained` follows the same rule by default.
 */
import { ArgumentError, ShapeError, expected } from '../errors.js';

export type Interpolation = 'bicubic' | 'bilinear';

export interface ResampleOptions {
  /** 'bicubic' (timm's checkpoint_filter_fn) or 'bilinear' (timm's .npz loader). */
  interpolation?: Interpolation;
  /** PyTorch's antialias flag (timm: true for checkpoints, false for .npz). */
  antialias?: boolean;
  /** Rows in front of the grid that are copied unchanged (class token: 1). */
  prefixTokens?: number;
}

/** Taps of one output index along one axis: input indices and weights. */
interface Taps {
  index: Int32Array;
  weight: Float64Array;
  /** Taps per output index (fixed; unused taps have weight 0). */
  width: number;
}

function cubic1(x: number, a: number): number {
  return ((a + 2) * x - (a + 3)) * x * x + 1;
}

function cubic2(x: number, a: number): number {
  return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
}

/** torch's upsample_bicubic2d (align_corners=False) along one axis. */
function bicubicTaps(inSize: number, outSize: number): Taps {
  const A = -0.75;
  const scale = inSize / outSize;
  const index = new Int32Array(outSize * 4);
  const weight = new Float64Array(outSize * 4);
  for (let i = 0; i < outSize; i++) {
    const real = scale * (i + 0.5) - 0.5; // not clamped for cubic
    const x0 = Math.floor(real);
    const t = real - x0;
    const w = [cubic2(t + 1, A), cubic1(t, A), cubic1(1 - t, A), cubic2(2 - t, A)];
    for (let k = 0; k < 4; k++) {
      index[i * 4 + k] = Math.min(Math.max(x0 - 1 + k, 0), inSize - 1);
      weight[i * 4 + k] = w[k];
    }
  }
  return { index, weight, width: 4 };
}

/** torch's upsample_bilinear2d (align_corners=False) along one axis. */
function bilinearTaps(inSize: number, outSize: number): Taps {
  const scale = inSize / outSize;
  const index = new Int32Array(outSize * 2);
  const weight = new Float64Array(outSize * 2);
  for (let i = 0; i < outSize; i++) {
    const real = Math.max(scale * (i + 0.5) - 0.5, 0);
    const x0 = Math.min(Math.floor(real), inSize - 1);
    const lambda = Math.min(Math.max(real - x0, 0), 1);
    index[i * 2] = x0;
    index[i * 2 + 1] = x0 + (x0 < inSize - 1 ? 1 : 0);
    weight[i * 2] = 1 - lambda;
    weight[i * 2 + 1] = lambda;
  }
  return { index, weight, width: 2 };
}

/** torch's antialiased interpolation (_upsample_{bilinear,bicubic}2d_aa) along one axis. */
function antialiasTaps(inSize: number, outSize: number, interpolation: Interpolation): Taps {
  const scale = inSize / outSize;
  const interpSize = interpolation === 'bicubic' ? 4 : 2;
  const support = scale >= 1 ? interpSize * 0.5 * scale : interpSize * 0.5;
  const invScale = scale >= 1 ? 1 / scale : 1;
  const filter =
    interpolation === 'bicubic'
      ? (x: number) => {
          x = Math.abs(x);
          return x < 1 ? cubic1(x, -0.5) : x < 2 ? cubic2(x, -0.5) : 0;
        }
      : (x: number) => {
          x = Math.abs(x);
          return x < 1 ? 1 - x : 0;
        };
  const width = Math.ceil(support) * 2 + 1;
  const index = new Int32Array(outSize * width);
  const weight = new Float64Array(outSize * width);
  for (let i = 0; i < outSize; i++) {
    const center = scale * (i + 0.5);
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xsize = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let total = 0;
    for (let j = 0; j < xsize; j++) total += filter((j + xmin - center + 0.5) * invScale);
    for (let j = 0; j < Math.min(xsize, width); j++) {
      index[i * width + j] = xmin + j;
      weight[i * width + j] = total !== 0 ? filter((j + xmin - center + 0.5) * invScale) / total : 0;
    }
  }
  return { index, weight, width };
}

function taps(inSize: number, outSize: number, interpolation: Interpolation, antialias: boolean): Taps {
  if (antialias) return antialiasTaps(inSize, outSize, interpolation);
  return interpolation === 'bicubic' ? bicubicTaps(inSize, outSize) : bilinearTaps(inSize, outSize);
}

/**
 * Resizes a channels-last image [inH, inW, C] to [outH, outW, C] as
 * `F.interpolate(x.permute(2, 0, 1)[None], size=(outH, outW), mode, antialias, align_corners=False)`
 * would, returning float64 values.
 */
export function interpolate2d(
  src: ArrayLike<number>,
  channels: number,
  from: readonly [number, number],
  to: readonly [number, number],
  options: { interpolation?: Interpolation; antialias?: boolean } = {},
): Float64Array {
  const interpolation = options.interpolation ?? 'bicubic';
  const antialias = options.antialias ?? false;
  if (interpolation !== 'bicubic' && interpolation !== 'bilinear')
    throw new ArgumentError(expected("'bicubic' or 'bilinear'", 'interpolation', interpolation));
  const [inH, inW] = from;
  const [outH, outW] = to;
  for (const [n, v] of [['from', inH], ['from', inW], ['to', outH], ['to', outW]] as const)
    if (!Number.isSafeInteger(v) || v < 1) throw new ArgumentError(expected('positive integer sizes', n, n === 'from' ? from : to));
  if (src.length !== inH * inW * channels)
    throw new ShapeError(`expected ${inH * inW * channels} values for a [${inH}, ${inW}, ${channels}] grid, got ${src.length}`);
  const C = channels;
  // Width pass: [inH, inW, C] -> [inH, outW, C].
  const tw = taps(inW, outW, interpolation, antialias);
  const mid = new Float64Array(inH * outW * C);
  for (let y = 0; y < inH; y++)
    for (let x = 0; x < outW; x++) {
      const o = (y * outW + x) * C;
      for (let k = 0; k < tw.width; k++) {
        const w = tw.weight[x * tw.width + k];
        if (w === 0) continue;
        const s = (y * inW + tw.index[x * tw.width + k]) * C;
        for (let c = 0; c < C; c++) mid[o + c] += w * src[s + c];
      }
    }
  // Height pass: [inH, outW, C] -> [outH, outW, C].
  const th = taps(inH, outH, interpolation, antialias);
  const out = new Float64Array(outH * outW * C);
  for (let y = 0; y < outH; y++)
    for (let k = 0; k < th.width; k++) {
      const w = th.weight[y * th.width + k];
      if (w === 0) continue;
      const sy = th.index[y * th.width + k];
      for (let x = 0; x < outW; x++) {
        const o = (y * outW + x) * C;
        const s = (sy * outW + x) * C;
        for (let c = 0; c < C; c++) out[o + c] += w * mid[s + c];
      }
    }
  return out;
}

/** The side of a square grid of n tokens, or -1. */
export function squareSide(n: number): number {
  if (!Number.isSafeInteger(n) || n < 0) return -1;
  const s = Math.round(Math.sqrt(n));
  return s * s === n ? s : -1;
}

/**
 * timm's resample_abs_pos_embed for a [1, prefix + inH·inW, D] table: returns a new
 * [1, prefix + outH·outW, D] table (float32). The grid is row-major (row = height), as in timm.
 */
export function resamplePosEmbed(
  posEmbed: Float32Array,
  dim: number,
  from: readonly [number, number],
  to: readonly [number, number],
  options: ResampleOptions = {},
): Float32Array {
  const prefix = options.prefixTokens ?? 1;
  if (!Number.isSafeInteger(prefix) || prefix < 0) throw new ArgumentError(expected('a non-negative integer', 'prefixTokens', prefix));
  if (!Number.isSafeInteger(dim) || dim < 1) throw new ArgumentError(expected('a positive integer', 'dim', dim));
  const inTokens = from[0] * from[1];
  if (posEmbed.length !== (prefix + inTokens) * dim)
    throw new ShapeError(
      `expected a position embedding of shape [1, ${prefix + inTokens}, ${dim}] (${prefix} prefix + ${from[0]}×${from[1]} grid), got ${posEmbed.length} values`,
    );
  const grid = interpolate2d(posEmbed.subarray(prefix * dim), dim, from, to, options);
  const out = new Float32Array((prefix + to[0] * to[1]) * dim);
  out.set(posEmbed.subarray(0, prefix * dim), 0);
  out.set(grid, prefix * dim);
  return out;
}
