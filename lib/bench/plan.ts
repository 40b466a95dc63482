/**
 * Turns BenchOptions into settings and the list of workloads (method × model × batch), checking
 * every option and reporting all problems at once.
 */
import { presets, resolveConfig, type ViTOptions } from '../config.js';
import { ConfigError, formatValue } from '../errors.js';
import {
  METHODS,
  SCHEMA,
  type ArchConfig,
  type BenchDType,
  type BenchOptions,
  type BenchPlan,
  type BenchSettings,
  type Method,
  type Placement,
  type Workload,
} from './types.js';

export const DEFAULTS = {
  model: 'vit_base_patch16_224',
  batch: [8, 32],
  inferBatch: [1, 32],
  warmup: 1,
  repeats: 5,
  out: 'results',
  numClasses: 1000,
  adapter: { hidden: 8, groups: 2, scale: 1, dropout: 0.1 },
  lr: 1e-3,
  weightDecay: 1e-4,
  seed: 0,
  timeout: 1800,
} as const;

const SIZE_NAMES = ['tiny', 'small', 'base', 'large', 'huge'];

interface MethodSpec {
  kind: 'train' | 'infer';
  /** The placement the method needs; 'any' for the folded row (it folds the first placement). */
  placement: Placement | null | 'any';
  trainable: Workload['trainable'];
}

export const METHOD_SPECS: Readonly<Record<Method, MethodSpec>> = {
  'repadapter-attn': { kind: 'train', placement: 'attn', trainable: 'adapters' },
  'repadapter-block': { kind: 'train', placement: 'block', trainable: 'adapters' },
  full: { kind: 'train', placement: null, trainable: 'all' },
  'linear-probe': { kind: 'train', placement: null, trainable: 'head' },
  'infer-plain': { kind: 'infer', placement: null, trainable: null },
  'infer-unfolded-attn': { kind: 'infer', placement: 'attn', trainable: null },
  'infer-unfolded-block': { kind: 'infer', placement: 'block', trainable: null },
  'infer-folded': { kind: 'infer', placement: 'any', trainable: null },
  // The folded model exported to ONNX and run by onnxruntime-node: the CPU inference bar.
  'infer-onnxruntime': { kind: 'infer', placement: 'any', trainable: null },
};

/** `bf16` / `fp32` spellings → the canonical dtype name; null when unknown. */
export function parseDType(v: string): BenchDType | null {
  const s = v.toLowerCase();
  if (['float32', 'fp32', 'f32'].includes(s)) return 'float32';
  if (['bfloat16', 'bf16'].includes(s)) return 'bfloat16';
  return null;
}

const ARCH_KEYS = ['imageSize', 'patchSize', 'width', 'depth', 'heads', 'mlpRatio', 'mlpHidden', 'numClasses'];

function archOf(config: string | ViTOptions, numClasses: number): ArchConfig {
  const r = resolveConfig(config, typeof config === 'string' || (config as ViTOptions).numClasses === undefined ? { numClasses } : {});
  return {
    imageSize: r.imageSize,
    patchSize: r.patchSize,
    width: r.width,
    depth: r.depth,
    heads: r.heads,
    mlpHidden: r.mlpHidden,
    numClasses: r.numClasses,
  };
}

/** The preset of another size with the patch and image size of `model` (vit_base_patch16_224 + small → vit_small_patch16_224). */
export function sizePreset(size: string, model: string): string | null {
  if (presets[size]) return size;
  if (!SIZE_NAMES.includes(size)) return null;
  const m = /^vit_[a-z]+_(patch\d+_\d+)$/.exec(model);
  const name = `vit_${size}_${m ? m[1] : 'patch16_224'}`;
  return presets[name] ? name : null;
}

const posInts = (v: unknown): v is number[] =>
  Array.isArray(v) && v.length > 0 && v.every((x) => Number.isSafeInteger(x) && x >= 1);

/** Settings and workloads of a run, or one ConfigError listing every problem. */
export function makePlan(options: BenchOptions = {}): BenchPlan {
  const problems: string[] = [];
  const o = options;
  const device = o.device ?? 'cpu';
  if (device !== 'cpu' && device !== 'cuda') problems.push(`expected 'cpu' | 'cuda' for device, got ${formatValue(device)}`);
  const dtype = o.dtype ?? 'float32';
  if (dtype !== 'float32' && dtype !== 'bfloat16') problems.push(`expected 'float32' | 'bfloat16' for dtype, got ${formatValue(dtype)}`);
  const int = (name: string, v: unknown, min: number): number => {
    if (!Number.isSafeInteger(v) || (v as number) < min) {
      problems.push(`expected an integer ≥ ${min} for ${name}, got ${formatValue(v)}`);
      return min;
    }
    return v as number;
  };
  const num = (name: string, v: unknown, min: number): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min) {
      problems.push(`expected a finite number ≥ ${min} for ${name}, got ${formatValue(v)}`);
      return min;
    }
    return v;
  };
  const warmup = int('warmup', o.warmup ?? DEFAULTS.warmup, 0);
  const repeats = int('repeats', o.repeats ?? DEFAULTS.repeats, 1);
  const numClasses = int('numClasses', o.numClasses ?? DEFAULTS.numClasses, 1);
  const seed = int('seed', o.seed ?? DEFAULTS.seed, 0);
  const timeout = num('timeout', o.timeout ?? DEFAULTS.timeout, 0);
  const lr = num('lr', o.lr ?? DEFAULTS.lr, 0);
  const weightDecay = num('weightDecay', o.weightDecay ?? DEFAULTS.weightDecay, 0);
  const adapter = { ...DEFAULTS.adapter, ...o.adapter };
  for (const key of Object.keys(o.adapter ?? {}))
    if (!(key in DEFAULTS.adapter)) problems.push(`unknown adapter option ${formatValue(key)}`);

  const batch = o.batch ?? [...DEFAULTS.batch];
  const inferBatch = o.inferBatch ?? [...DEFAULTS.inferBatch];
  if (!posInts(batch)) problems.push(`expected a non-empty list of integers ≥ 1 for batch, got ${formatValue(batch)}`);
  if (!posInts(inferBatch)) problems.push(`expected a non-empty list of integers ≥ 1 for inferBatch, got ${formatValue(inferBatch)}`);

  const placements = o.placements ?? ['attn', 'block'];
  if (!Array.isArray(placements) || !placements.length || placements.some((p) => p !== 'attn' && p !== 'block'))
    problems.push(`expected a non-empty list of 'attn' | 'block' for placements, got ${formatValue(placements)}`);
  const methods = o.methods ?? [...METHODS];
  if (!Array.isArray(methods) || !methods.length) problems.push(`expected a non-empty list of methods, got ${formatValue(methods)}`);
  else
    for (const m of methods)
      if (!(METHODS as readonly string[]).includes(m))
        problems.push(`unknown method ${formatValue(m)}; known methods: ${METHODS.join(', ')}`);

  // models
  const models: { name: string; config: ArchConfig }[] = [];
  if (o.config !== undefined) {
    if (o.sizes?.length) problems.push('--sizes sweeps presets: give either config or sizes, not both');
    if (o.config === null || typeof o.config !== 'object' || Array.isArray(o.config))
      problems.push(`expected an object for config, got ${formatValue(o.config)}`);
    else {
      for (const key of Object.keys(o.config))
        if (!ARCH_KEYS.includes(key)) problems.push(`config option ${formatValue(key)} is not an architecture option (${ARCH_KEYS.join(', ')})`);
      try {
        models.push({ name: o.configName ?? 'custom', config: archOf(o.config as ViTOptions, numClasses) });
      } catch (e) {
        problems.push((e as Error).message);
      }
    }
  } else {
    const model = o.model ?? DEFAULTS.model;
    const names: string[] = [];
    if (!presets[model]) problems.push(`unknown preset ${formatValue(model)}; known presets: ${Object.keys(presets).join(', ')}`);
    else if (o.sizes?.length) {
      for (const size of o.sizes) {
        const name = sizePreset(size, model);
        if (!name) problems.push(`no preset for size ${formatValue(size)} (with the patch and image size of ${model}); sizes: ${SIZE_NAMES.join(', ')} or a preset name`);
        else if (!names.includes(name)) names.push(name);
      }
    } else names.push(model);
    for (const name of names) models.push({ name, config: archOf(name, numClasses) });
  }
  if (problems.length) throw new ConfigError(`invalid benchmark options:\n  ${problems.join('\n  ')}`);

  const settings: BenchSettings = {
    device,
    dtype,
    warmup,
    repeats,
    profile: !!o.profile,
    numClasses,
    adapter,
    optimizer: 'adamw',
    lr,
    weightDecay,
    seed,
    timeout,
  };

  const workloads: Workload[] = [];
  const order = METHODS.filter((m) => methods.includes(m));
  for (const { name, config } of models)
    for (const method of order) {
      const spec = METHOD_SPECS[method];
      if ((spec.placement === 'attn' || spec.placement === 'block') && !placements.includes(spec.placement)) continue;
      const placement = spec.placement === 'any' ? placements[0] : spec.placement;
      for (const b of spec.kind === 'train' ? batch : inferBatch)
        workloads.push({
          id: workloadId(method, name, b),
          method,
          kind: spec.kind,
          model: name,
          config,
          placement,
          trainable: spec.trainable,
          batch: b,
        });
    }
  if (!workloads.length)
    throw new ConfigError(`invalid benchmark options:\n  no workload left: methods ${methods.join(', ')} with placements ${placements.join(', ')}`);
  return { schema: SCHEMA, settings, workloads };
}

export function workloadId(method: string, model: string, batch: number): string {
  return `${method}/${model}/b${batch}`;
}
