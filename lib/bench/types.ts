/**
 * The benchmark's data: what a run is asked to do (options), the workloads it expands into, and
 * the JSON report both sides write (ours.json from lib/bench, theirs.json from
 * bench/pytorch_bench.py) in one schema, so compareBench can pair their rows by id.
 */
import type { NativeConfig } from '../native.js';

export const SCHEMA = 'repadapter-bench/1';

/** Training methods first, then inference. */
export const METHODS = [
  'repadapter-attn',
  'repadapter-block',
  'full',
  'linear-probe',
  'infer-plain',
  'infer-unfolded-attn',
  'infer-unfolded-block',
  'infer-folded',
  'infer-onnxruntime',
] as const;
export type Method = (typeof METHODS)[number];

export type Placement = 'attn' | 'block';
export type BenchDevice = 'cpu' | 'cuda';
export type BenchDType = 'float32' | 'bfloat16';

export interface BenchOptions {
  /** A preset name (default vit_base_patch16_224). */
  model?: string;
  /** A custom architecture instead of a preset (imageSize, patchSize, width, depth, heads, mlpRatio|mlpHidden). */
  config?: Record<string, unknown>;
  /** Name of the custom config in the report (default "custom"). */
  configName?: string;
  /** Adapter placements whose methods run (default both). */
  placements?: Placement[];
  /** Methods to run (default all). */
  methods?: Method[];
  /** Training batch sizes (default [8, 32]). */
  batch?: number[];
  /** Inference batch sizes (default [1, 32]). */
  inferBatch?: number[];
  device?: BenchDevice;
  dtype?: BenchDType;
  warmup?: number;
  repeats?: number;
  /** Results root; each run writes <out>/<timestamp>/ (default "results"). */
  out?: string;
  /** Write into exactly this folder instead of <out>/<timestamp>/. */
  runDir?: string;
  /** Model-size sweep: tiny, small, base, large, huge (or preset names). */
  sizes?: string[];
  /** Classes of the head (default 1000, ImageNet's). */
  numClasses?: number;
  /** Include the per-op profile (adds some overhead to every op). */
  profile?: boolean;
  /** Adapter hyper-parameters (default: the paper's hidden 8, groups 2, scale 1, dropout 0.1). */
  adapter?: { hidden?: number; groups?: number; scale?: number; dropout?: number };
  /** AdamW learning rate and weight decay of the training step (default 1e-3, 1e-4). */
  lr?: number;
  weightDecay?: number;
  seed?: number;
  /** Seconds a workload may run before its process is killed (default 1800; 0: no limit). */
  timeout?: number;
  /** Progress lines (default: to stderr); null for silence. */
  log?: ((line: string) => void) | null;
}

/** The architecture of a workload, fully resolved (both sides build exactly this). */
export type ArchConfig = Pick<NativeConfig, 'imageSize' | 'patchSize' | 'width' | 'depth' | 'heads' | 'mlpHidden' | 'numClasses'>;

export interface AdapterSettings {
  hidden: number;
  groups: number;
  scale: number;
  dropout: number;
}

/** One method × model × batch: one child process. */
export interface Workload {
  /** `${method}/${model}/b${batch}`: the key rows are paired by. */
  id: string;
  method: Method;
  kind: 'train' | 'infer';
  /** Preset name, or the custom config's name. */
  model: string;
  config: ArchConfig;
  /** Adapter placement (the folded row: the placement that was folded); null without adapters. */
  placement: Placement | null;
  /** What trains (training rows). */
  trainable: 'adapters' | 'head' | 'all' | null;
  batch: number;
}

export interface BenchSettings {
  device: BenchDevice;
  dtype: BenchDType;
  warmup: number;
  repeats: number;
  profile: boolean;
  numClasses: number;
  adapter: AdapterSettings;
  /** 'adamw': a real AdamW update per step; 'none': forward + backward only. */
  optimizer: 'adamw' | 'none';
  lr: number;
  weightDecay: number;
  seed: number;
  timeout: number;
}

/** The plan both sides run (written as plan.json for the PyTorch script). */
export interface BenchPlan {
  schema: typeof SCHEMA;
  settings: BenchSettings;
  workloads: Workload[];
}

export interface Spread {
  median: number;
  min: number;
  max: number;
  q1: number;
  q3: number;
  iqr: number;
  mean: number;
}

export interface ProfileEntry {
  op: string;
  /** Per measured step. */
  seconds: number;
  calls: number;
  flops: number;
  /** flops / seconds / 1e9 (0 when the op does no counted flops). */
  gflops: number;
  /** Share of the summed op time. */
  share: number;
}

export interface BenchRow extends Workload {
  status: 'ok' | 'skipped' | 'error';
  /** Why skipped / what failed / what to know. */
  note?: string;
  params?: { total: number; trainable: number };
  /** Milliseconds per step over the repeats. */
  stepMs?: Spread;
  /** batch / median step time. */
  imagesPerSec?: number;
  /** Every measured step, in ms. */
  samplesMs?: number[];
  /** Peak resident memory of the workload's process (MB = 2^20 bytes). */
  peakRssMB?: number;
  /** Resident memory of the process before the model was made (runtime baseline). */
  baselineRssMB?: number;
  /** Peak memory allocated on the accelerator (device runs that can tell), MB. */
  peakDeviceMB?: number;
  /** Per-op time per step (with profile). */
  profile?: ProfileEntry[];
}

export interface BenchReport {
  schema: typeof SCHEMA;
  implementation: 'repadapter' | 'pytorch';
  createdAt: string;
  host: Record<string, string | number | boolean | null>;
  settings: BenchSettings;
  notes: string[];
  rows: BenchRow[];
}

export interface CompareRow {
  id: string;
  method: Method | string;
  model: string;
  batch: number;
  oursMs: number | null;
  theirsMs: number | null;
  /** ours / theirs median step time: below 1, we are faster. */
  timeRatio: number | null;
  /** theirs / ours: above 1, we are faster. */
  speedup: number | null;
  oursImagesPerSec: number | null;
  theirsImagesPerSec: number | null;
  oursRssMB: number | null;
  theirsRssMB: number | null;
  /** ours / theirs peak RSS. */
  rssRatio: number | null;
  note?: string;
}

export interface CompareResult {
  rows: CompareRow[];
  /** Geometric mean of timeRatio over the rows that have one, per kind and overall. */
  geomean: { train: number | null; infer: number | null; all: number | null };
  markdown: string;
}
