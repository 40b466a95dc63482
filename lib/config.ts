/**
 * ViT configurations: timm's presets and the rules every custom config must satisfy, checked
 * at the API edge with every problem reported at once.
 */
import { ConfigError, formatValue } from './errors.js';
import type { NativeConfig, Placement, TrainableSet } from './native.js';

export interface AdapterOptions {
  /** 'attn': one adapter before qkv of every block; 'block': also one before fc1. */
  placement?: Placement;
  /** Width of the down-projection (the paper: 8). */
  hidden?: number;
  /** Groups of the sparse up-projection (the paper: 2). */
  groups?: number;
  /** The scale s (per task in the paper; 1 by default). */
  scale?: number;
  /** Dropout on the hidden activations in training (the paper: 0.1). */
  dropout?: number;
}

export interface ViTOptions {
  imageSize?: number;
  patchSize?: number;
  width?: number;
  depth?: number;
  heads?: number;
  /** MLP hidden width as a multiple of width (timm: 4). Ignored when mlpHidden is given. */
  mlpRatio?: number;
  mlpHidden?: number;
  numClasses?: number;
  /** Stochastic depth rate of the last block, linear from 0 (timm's drop_path_rate). */
  dropPath?: number;
  layerNormEps?: number;
  /** Adapter settings; null or absent for a plain ViT (then 'adapters' trains the head only). */
  adapter?: AdapterOptions | null;
  /** What trains: adapters + head (RepAdapter), head (linear probe) or all (full fine-tuning). */
  trainable?: TrainableSet;
}

export type ResolvedConfig = NativeConfig;

type Architecture = Pick<Required<ViTOptions>, 'imageSize' | 'patchSize' | 'width' | 'depth' | 'heads' | 'mlpRatio'>;

const sizes = {
  tiny: { width: 192, depth: 12, heads: 3 },
  small: { width: 384, depth: 12, heads: 6 },
  base: { width: 768, depth: 12, heads: 12 },
  large: { width: 1024, depth: 24, heads: 16 },
  huge: { width: 1280, depth: 32, heads: 16 },
} as const;

function preset(size: keyof typeof sizes, patchSize: number, imageSize = 224): Architecture {
  return { ...sizes[size], patchSize, imageSize, mlpRatio: 4 };
}

/** timm's vit_* architectures (ImageNet heads have 1000 classes unless numClasses says otherwise). */
export const presets: Readonly<Record<string, Architecture>> = Object.freeze({
  vit_tiny_patch16_224: preset('tiny', 16),
  vit_tiny_patch16_384: preset('tiny', 16, 384),
  vit_small_patch16_224: preset('small', 16),
  vit_small_patch16_384: preset('small', 16, 384),
  vit_small_patch32_224: preset('small', 32),
  vit_small_patch32_384: preset('small', 32, 384),
  vit_base_patch16_224: preset('base', 16),
  vit_base_patch16_384: preset('base', 16, 384),
  vit_base_patch32_224: preset('base', 32),
  vit_base_patch32_384: preset('base', 32, 384),
  vit_large_patch16_224: preset('large', 16),
  vit_large_patch16_384: preset('large', 16, 384),
  vit_large_patch32_224: preset('large', 32),
  vit_large_patch32_384: preset('large', 32, 384),
  vit_huge_patch14_224: preset('huge', 14),
  vit_huge_patch16_224: preset('huge', 16),
  vit_huge_patch32_224: preset('huge', 32),
});

export const adapterDefaults: Required<AdapterOptions> = Object.freeze({
  placement: 'attn',
  hidden: 8,
  groups: 2,
  scale: 1,
  dropout: 0.1,
});

/**
 * Resolves a preset name and/or options into a full config, or throws one ConfigError that lists
 * every problem.
 */
export function resolveConfig(base: string | ViTOptions, overrides: ViTOptions = {}): ResolvedConfig {
  let start: ViTOptions;
  if (typeof base === 'string') {
    const arch = presets[base];
    if (!arch)
      throw new ConfigError(
        `unknown preset ${formatValue(base)}; known presets: ${Object.keys(presets).join(', ')}`,
      );
    start = { ...arch, numClasses: 1000 };
  } else if (base && typeof base === 'object') {
    start = base;
  } else {
    throw new ConfigError(`expected a preset name or a config object for config, got ${formatValue(base)}`);
  }
  const o: ViTOptions = { ...start, ...overrides };
  const problems: string[] = [];
  // Upper bounds keep every size product (tokens × width, parameter counts) exact.
  const int = (name: string, v: unknown, min = 1, max = 1 << 18): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
      problems.push(`expected an integer in [${min}, ${max}] for ${name}, got ${formatValue(v)}`);
      return NaN;
    }
    return v;
  };
  // Relations between sizes are checked only between sizes that are themselves valid.
  const valid = (...values: number[]) => values.every((v) => !Number.isNaN(v));
  const num = (name: string, v: unknown, lo: number, hi: number, hiOpen = true): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || (hiOpen ? v >= hi : v > hi)) {
      problems.push(`expected a number in [${lo}, ${hi}${hiOpen ? ')' : ']'} for ${name}, got ${formatValue(v)}`);
      return NaN;
    }
    return v;
  };
  const known = new Set(['imageSize', 'patchSize', 'width', 'depth', 'heads', 'mlpRatio', 'mlpHidden', 'numClasses',
    'dropPath', 'layerNormEps', 'adapter', 'trainable']);
  for (const key of Object.keys(o)) if (!known.has(key)) problems.push(`unknown config option ${formatValue(key)}`);

  const imageSize = int('imageSize', o.imageSize ?? 224, 1, 1 << 16);
  const patchSize = int('patchSize', o.patchSize ?? 16, 1, 1 << 16);
  const width = int('width', o.width ?? 768);
  const depth = int('depth', o.depth ?? 12, 1, 4096);
  const heads = int('heads', o.heads ?? 12);
  const numClasses = int('numClasses', o.numClasses ?? 1000, 1, 1 << 24);
  let mlpHidden: number;
  if (o.mlpHidden !== undefined) mlpHidden = int('mlpHidden', o.mlpHidden);
  else {
    const ratio = num('mlpRatio', o.mlpRatio ?? 4, 0, 64);
    mlpHidden = Math.round(width * ratio);
    if (Number.isFinite(mlpHidden) && mlpHidden < 1) problems.push(`mlpRatio ${o.mlpRatio} gives an empty MLP`);
    if (Number.isFinite(mlpHidden) && mlpHidden > 1 << 18) problems.push(`mlpRatio ${o.mlpRatio} gives an MLP wider than ${1 << 18}`);
  }
  const dropPath = num('dropPath', o.dropPath ?? 0, 0, 1);
  const layerNormEps = num('layerNormEps', o.layerNormEps ?? 1e-6, Number.MIN_VALUE, 1, false);
  if (valid(imageSize, patchSize) && imageSize % patchSize !== 0)
    problems.push(`patchSize ${patchSize} must divide imageSize ${imageSize}`);
  if (valid(width, heads) && width % heads !== 0) problems.push(`heads ${heads} must divide width ${width}`);
  const trainable = o.trainable ?? 'adapters';
  if (!['adapters', 'head', 'all'].includes(trainable))
    problems.push(`expected 'adapters' | 'head' | 'all' for trainable, got ${formatValue(trainable)}`);

  let adapter: ResolvedConfig['adapter'] = null;
  if (o.adapter !== null && o.adapter !== undefined) {
    if (typeof o.adapter !== 'object') problems.push(`expected an object or null for adapter, got ${formatValue(o.adapter)}`);
    else {
      const a = { ...adapterDefaults, ...o.adapter };
      for (const key of Object.keys(o.adapter))
        if (!(key in adapterDefaults)) problems.push(`unknown adapter option ${formatValue(key)}`);
      if (a.placement !== 'attn' && a.placement !== 'block')
        problems.push(`expected 'attn' | 'block' for adapter.placement, got ${formatValue(a.placement)}`);
      const hidden = int('adapter.hidden', a.hidden);
      const groups = int('adapter.groups', a.groups);
      if (valid(hidden, groups) && hidden % groups !== 0)
        problems.push(`adapter.groups ${groups} must divide adapter.hidden ${hidden}`);
      if (valid(width, groups) && width % groups !== 0) problems.push(`adapter.groups ${groups} must divide width ${width}`);
      if (typeof a.scale !== 'number' || !Number.isFinite(a.scale))
        problems.push(`expected a finite number for adapter.scale, got ${formatValue(a.scale)}`);
      const dropout = num('adapter.dropout', a.dropout, 0, 1);
      adapter = { placement: a.placement, hidden, groups, scale: a.scale, dropout };
    }
  }
  if (problems.length) throw new ConfigError(`invalid ViT config:\n  ${problems.join('\n  ')}`);
  return { imageSize, patchSize, width, depth, heads, mlpHidden, numClasses, dropPath, layerNormEps, trainable, adapter };
}
