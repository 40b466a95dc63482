/**
 * The only module that loads the compiled addon. It gives the raw native interface a type, and
 * turns the native layer's error codes into this package's typed errors.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  ArgumentError,
  BusyError,
  DisposedError,
  NativeError,
  OutOfRangeError,
  RepAdapterError,
} from './errors.js';

export type TrainableSet = 'adapters' | 'head' | 'all';
export type Placement = 'attn' | 'block';

/** The config object the native model takes (all sizes already resolved). */
export interface NativeConfig {
  imageSize: number;
  patchSize: number;
  width: number;
  depth: number;
  heads: number;
  mlpHidden: number;
  numClasses: number;
  dropPath: number;
  layerNormEps: number;
  trainable: TrainableSet;
  adapter: { placement: Placement; hidden: number; groups: number; scale: number; dropout: number } | null;
}

export interface NativeParamInfo {
  name: string;
  shape: number[];
  role: 'backbone' | 'norm' | 'adapter' | 'head';
  trainable: boolean;
  offset: number;
}

export interface NativeTensorHandle {
  toArray(): Float32Array;
  shape(): number[];
  disposed(): boolean;
  device(): 'cpu' | 'cuda';
  dispose(): void;
}

/** Compute precision of the backbone's Linears (see ViT.dtype). */
export type ComputeDType = 'float32' | 'bf16';

export interface NativeAdamWHyper {
  beta1: number;
  beta2: number;
  eps: number;
  step: number;
  gradScale: number;
}
export interface NativeSgdHyper {
  momentum: number;
  dampening: number;
  nesterov: boolean;
  first: boolean;
  gradScale: number;
}
/** An optimizer's kind with its hyperparameters for one update. */
export type NativeHyper = { kind: 'adamw'; hyper: NativeAdamWHyper } | { kind: 'sgd'; hyper: NativeSgdHyper };
/** One optimizer update as the fused training step applies it (ViT::train_step). */
export type NativeUpdate = NativeHyper & { ranges: Float64Array; clipMaxNorm: number };

export interface NativeViTHandle {
  params(): NativeParamInfo[];
  getParam(name: string): Float32Array;
  setParam(name: string, data: Float32Array): void;
  getGrad(name: string): Float32Array;
  forward(images: NativeTensorHandle, train: boolean, inputGrad: boolean): NativeTensorHandle;
  forwardAsync(images: NativeTensorHandle, train: boolean, inputGrad: boolean): Promise<NativeTensorHandle>;
  backward(labels: Int32Array | null, soft: Float32Array | null, smoothing: number): number;
  backwardAsync(labels: Int32Array | null, soft: Float32Array | null, smoothing: number): Promise<number>;
  inputGrad(): NativeTensorHandle;
  zeroGrad(): void;
  fold(): void;
  setTrainable(mode: TrainableSet): void;
  config(): NativeConfig;
  trainableCount(): number;
  rng(): [bigint, bigint];
  setRng(seed: bigint, step: bigint): void;
  adamwStep(ranges: Float64Array, hyper: NativeAdamWHyper): void;
  sgdStep(ranges: Float64Array, hyper: NativeSgdHyper): void;
  trainStepAsync(
    images: NativeTensorHandle,
    labels: Int32Array | null,
    soft: Float32Array | null,
    smoothing: number,
    update: NativeUpdate,
  ): Promise<{ loss: number; logits: NativeTensorHandle; gradNorm?: number }>;
  gradSumSquares(): number;
  device(): 'cpu' | 'cuda';
  dtype(): ComputeDType;
  setDType(dtype: ComputeDType): void;
  bf16Native(): boolean;
  profile(reset?: boolean): { op: string; seconds: number; calls: number; flops: number }[];
  getOptimizerState(slot: 0 | 1): Float32Array | null;
  setOptimizerState(slot: 0 | 1, data: Float32Array): void;
  dispose(): void;
}

/** Batch assembly spec of the data pipeline (native/data/batch.h); see lib/data/batch.ts. */
export interface NativeBatchSpec {
  size: number;
  mean?: [number, number, number];
  std?: [number, number, number];
  flip?: number;
  crop?: { scaleMin: number; scaleMax: number; ratioMin: number; ratioMax: number } | null;
  mixup?: {
    mixupAlpha: number;
    cutmixAlpha: number;
    cutmixMin?: number;
    cutmixMax?: number;
    prob: number;
    switchProb: number;
    smoothing: number;
    correctLam: boolean;
  } | null;
  numClasses?: number;
  seed?: number;
  epoch?: number;
  batchIndex?: number;
}

export interface NativeBatchResult {
  images: NativeTensorHandle;
  softTargets: Float32Array | null;
  lam: number;
  cutmix: boolean;
  box: [number, number, number, number];
}

export interface NativeAddon {
  NativeViT: new (
    config: NativeConfig,
    seed: number,
    options?: { profile?: boolean; device?: 'cpu' | 'cuda' | 'auto'; cudaGraphs?: boolean; recomputeMlp?: boolean },
  ) => NativeViTHandle;
  NativeTensor: new (data: Float32Array, shape: number[]) => NativeTensorHandle;
  runOp(
    name: string,
    attrs: Record<string, number>,
    inputs: Record<string, Float32Array>,
    dOutputs?: Record<string, Float32Array>,
  ): Record<string, Float32Array>;
  backend: string;
  /** A permutation of 0..n-1 that depends only on (seed, epoch). */
  dataPermutation(n: number, seed: number, epoch: number): Int32Array;
  /** pixels: [n, h, w, c] uint8 (c = 1 or 3); labels are needed with spec.mixup. */
  dataBatch(pixels: Uint8Array, shape: number[], indices: Int32Array, labels: Int32Array | null, spec: NativeBatchSpec): NativeBatchResult;
  dataBatchAsync(
    pixels: Uint8Array,
    shape: number[],
    indices: Int32Array,
    labels: Int32Array | null,
    spec: NativeBatchSpec,
  ): Promise<NativeBatchResult>;
  /** Resizes src [n, h, w, c] into dst [n, oh, ow, c] (PIL-style antialiased filters). */
  dataResizeAsync(src: Uint8Array, shape: number[], dst: Uint8Array, size: [number, number], filter: 'bicubic' | 'bilinear'): Promise<void>;
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function load(): NativeAddon {
  const require = createRequire(import.meta.url);
  try {
    // bindings finds build/Release (cmake-js and node-gyp both put it there).
    const bindings = require('bindings') as (opts: { bindings: string; module_root: string }) => NativeAddon;
    return bindings({ bindings: 'repadapter.node', module_root: root });
  } catch (cause) {
    throw new NativeError(
      `the repadapter native addon is not built or cannot load (${(cause as Error).message.split('\n')[0]}). ` +
        'Run `npm install` (needs cmake, a C++ compiler and oneDNN: `apt-get install -y libdnnl-dev`).',
      'RA_UNAVAILABLE',
      { cause },
    );
  }
}

export const native: NativeAddon = load();

/** Rethrows an error from the native layer as this package's typed error. */
export function translate(error: unknown): never {
  if (error instanceof RepAdapterError) throw error;
  const e = error as Error & { code?: string };
  switch (e?.code) {
    case 'RA_INVALID_ARGUMENT':
      throw new ArgumentError(e.message, { cause: e });
    case 'RA_OUT_OF_RANGE':
      throw new OutOfRangeError(e.message, { cause: e });
    case 'RA_DISPOSED':
      throw new DisposedError(e.message, { cause: e });
    case 'RA_BUSY':
      throw new BusyError(e.message, { cause: e });
    case 'RA_OUT_OF_MEMORY':
    case 'RA_UNAVAILABLE':
    case 'RA_INTERNAL':
      throw new NativeError(e.message, e.code, { cause: e });
    default:
      throw error;
  }
}

/** Calls into the native layer, translating its errors. */
export function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (error) {
    translate(error);
  }
}

/** The same for promise-returning native calls. */
export async function callAsync<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    translate(error);
  }
}
