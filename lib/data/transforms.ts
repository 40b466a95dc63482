/**
 * Normalization, augmentation and Mixup options, checked at the API edge and turned into the
 * native batch spec. The pixel work itself happens in native/data/batch.cc.
 */
import { ArgumentError, expected } from '../errors.js';
import type { NativeBatchSpec } from '../native.js';

export type Triple = readonly [number, number, number];

/** timm's IMAGENET_DEFAULT_MEAN / STD: what the official RepAdapter code normalizes with. */
export const IMAGENET_MEAN: Triple = [0.485, 0.456, 0.406];
export const IMAGENET_STD: Triple = [0.229, 0.224, 0.225];
/** timm's IMAGENET_INCEPTION_MEAN / STD (0.5 / 0.5): Google's ViT checkpoints were trained so. */
export const INCEPTION_MEAN: Triple = [0.5, 0.5, 0.5];
export const INCEPTION_STD: Triple = [0.5, 0.5, 0.5];

/** 'imagenet' (default), 'inception' (0.5 / 0.5), or explicit per-channel mean and std. */
export type Normalize = 'imagenet' | 'inception' | { mean: Triple; std: Triple };

/**
 * Training augmentation, timm semantics, drawn per sample from (seed, epoch, dataset index).
 * `true` means `{ flip: 0.5, randomResizedCrop: true }`.
 */
export interface AugmentOptions {
  /** Horizontal flip probability; `true` is 0.5. Default: no flip. */
  flip?: boolean | number;
  /**
   * RandomResizedCrop of the cached image back to imageSize (bilinear): `true` is timm's
   * scale [0.08, 1], ratio [3/4, 4/3]; 10 attempts, then a centre crop.
   */
  randomResizedCrop?: boolean | { scale?: readonly [number, number]; ratio?: readonly [number, number] };
}

/**
 * timm Mixup / CutMix ('batch' mode): one lam ~ Beta(α, α) per batch, sample i mixes with
 * sample B-1-i, soft targets = the same mix of label-smoothed one-hot rows.
 * `true` means timm's defaults: `{ mixupAlpha: 1, cutmixAlpha: 0, labelSmoothing: 0.1 }`.
 */
export interface MixupOptions {
  /** Mixup α; 0 disables mixup. Default 1. */
  mixupAlpha?: number;
  /** CutMix α; 0 disables cutmix. Default 0. */
  cutmixAlpha?: number;
  /** CutMix box side ratios [min, max] instead of a box from lam (forces cutmix α = 1, as timm). */
  cutmixMinMax?: readonly [number, number];
  /** Probability of mixing a batch at all. Default 1. */
  prob?: number;
  /** Probability of cutmix instead of mixup when both are enabled. Default 0.5. */
  switchProb?: number;
  /** Label smoothing of the soft targets. Default 0.1. */
  labelSmoothing?: number;
  /** Recompute lam from the clipped cutmix box. Default true. */
  correctLam?: boolean;
}

export interface ResolvedTransforms {
  mean: [number, number, number];
  std: [number, number, number];
  flip: number;
  crop: NativeBatchSpec['crop'];
  mixup: NativeBatchSpec['mixup'];
}

function triple(v: unknown, name: string): [number, number, number] {
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === 'number' && Number.isFinite(x)))
    throw new ArgumentError(expected('an array of 3 finite numbers', name, v));
  return [v[0] as number, v[1] as number, v[2] as number];
}

function probability(v: unknown, name: string): number {
  if (typeof v !== 'number' || !(v >= 0 && v <= 1)) throw new ArgumentError(expected('a probability in [0, 1]', name, v));
  return v;
}

function nonNegative(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0)
    throw new ArgumentError(expected('a finite number ≥ 0', name, v));
  return v;
}

/** [min, max] with 0 ≤ min ≤ max ≤ highest (0 < min when `positive`). */
function range(v: unknown, name: string, highest: number, positive: boolean): [number, number] {
  const ok =
    Array.isArray(v) &&
    v.length === 2 &&
    typeof v[0] === 'number' &&
    typeof v[1] === 'number' &&
    (positive ? v[0] > 0 : v[0] >= 0) &&
    v[1] >= v[0] &&
    v[1] <= highest;
  if (!ok) throw new ArgumentError(expected(`[min, max] with ${positive ? '0 <' : '0 ≤'} min ≤ max ≤ ${highest}`, name, v));
  return [(v as number[])[0]!, (v as number[])[1]!];
}

export function resolveNormalize(normalize: Normalize | undefined, name = 'normalize'): { mean: [number, number, number]; std: [number, number, number] } {
  if (normalize === undefined || normalize === 'imagenet') return { mean: [...IMAGENET_MEAN], std: [...IMAGENET_STD] };
  if (normalize === 'inception') return { mean: [...INCEPTION_MEAN], std: [...INCEPTION_STD] };
  if (typeof normalize !== 'object' || normalize === null)
    throw new ArgumentError(expected("'imagenet' | 'inception' | { mean, std }", name, normalize));
  const mean = triple(normalize.mean, `${name}.mean`);
  const std = triple(normalize.std, `${name}.std`);
  if (std.some((s) => s === 0)) throw new ArgumentError(expected('non-zero values', `${name}.std`, std));
  return { mean, std };
}

export function resolveAugment(augment: AugmentOptions | boolean | undefined): { flip: number; crop: NativeBatchSpec['crop'] } {
  if (augment === undefined || augment === false) return { flip: 0, crop: null };
  const a: AugmentOptions = augment === true ? { flip: true, randomResizedCrop: true } : augment;
  if (typeof a !== 'object' || a === null) throw new ArgumentError(expected('a boolean or { flip, randomResizedCrop }', 'augment', augment));
  const flip = a.flip === undefined || a.flip === false ? 0 : a.flip === true ? 0.5 : probability(a.flip, 'augment.flip');
  let crop: NativeBatchSpec['crop'] = null;
  const rrc = a.randomResizedCrop;
  if (rrc !== undefined && rrc !== false) {
    const o = rrc === true ? {} : rrc;
    if (typeof o !== 'object' || o === null)
      throw new ArgumentError(expected('a boolean or { scale, ratio }', 'augment.randomResizedCrop', rrc));
    const scale = o.scale === undefined ? [0.08, 1] : range(o.scale, 'augment.randomResizedCrop.scale', 1, false);
    const ratio = o.ratio === undefined ? [3 / 4, 4 / 3] : range(o.ratio, 'augment.randomResizedCrop.ratio', Infinity, true);
    crop = { scaleMin: scale[0], scaleMax: scale[1], ratioMin: ratio[0], ratioMax: ratio[1] };
  }
  return { flip, crop };
}

export function resolveMixup(mixup: MixupOptions | boolean | undefined): NativeBatchSpec['mixup'] {
  if (mixup === undefined || mixup === false) return null;
  const m: MixupOptions = mixup === true ? {} : mixup;
  if (typeof m !== 'object' || m === null) throw new ArgumentError(expected('a boolean or MixupOptions', 'mixup', mixup));
  const out: NonNullable<NativeBatchSpec['mixup']> = {
    mixupAlpha: m.mixupAlpha === undefined ? 1 : nonNegative(m.mixupAlpha, 'mixup.mixupAlpha'),
    cutmixAlpha: m.cutmixAlpha === undefined ? 0 : nonNegative(m.cutmixAlpha, 'mixup.cutmixAlpha'),
    prob: m.prob === undefined ? 1 : probability(m.prob, 'mixup.prob'),
    switchProb: m.switchProb === undefined ? 0.5 : probability(m.switchProb, 'mixup.switchProb'),
    smoothing: m.labelSmoothing === undefined ? 0.1 : probability(m.labelSmoothing, 'mixup.labelSmoothing'),
    correctLam: m.correctLam === undefined ? true : Boolean(m.correctLam),
  };
  if (m.cutmixMinMax !== undefined) {
    const [lo, hi] = range(m.cutmixMinMax, 'mixup.cutmixMinMax', 1, false);
    out.cutmixMin = lo;
    out.cutmixMax = hi;
  }
  if (out.mixupAlpha === 0 && out.cutmixAlpha === 0 && out.cutmixMin === undefined)
    throw new ArgumentError(expected('mixupAlpha > 0 or cutmixAlpha > 0', 'mixup', mixup));
  return out;
}

export function resolveTransforms(opts: {
  normalize?: Normalize;
  augment?: AugmentOptions | boolean;
  mixup?: MixupOptions | boolean;
}): ResolvedTransforms {
  const { mean, std } = resolveNormalize(opts.normalize);
  const { flip, crop } = resolveAugment(opts.augment);
  return { mean, std, flip, crop, mixup: resolveMixup(opts.mixup) };
}
