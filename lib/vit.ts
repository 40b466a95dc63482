/**
 * ViT: a Vision Transformer (timm's architecture and parameter names) with RepAdapter, on the
 * native core. Forward, loss and backward, parameters and gradients by name, state dicts in
 * safetensors, and the fold that turns an adapted model back into a plain ViT.
 */
import { resolveConfig, type ResolvedConfig, type ViTOptions } from './config.js';
import { ArgumentError, ConfigError, DisposedError, OutOfRangeError, ShapeError, StateDictError, expected } from './errors.js';
import type { MisshapedTensor } from './errors.js';
import { loadPretrained, type LoadPretrainedOptions, type PretrainedReport } from './io/pretrained.js';
import { readSafetensors, toFloat32, writeSafetensors, type TensorInput } from './io/safetensors.js';
import {
  call,
  callAsync,
  native,
  type ComputeDType,
  type NativeParamInfo,
  type NativeUpdate,
  type NativeViTHandle,
  type TrainableSet,
} from './native.js';
import { Tensor } from './tensor.js';

export interface ParamInfo {
  name: string;
  shape: readonly number[];
  /** backbone | norm | adapter | head */
  role: NativeParamInfo['role'];
  trainable: boolean;
}

/** What a loss is computed against: integer class labels, or a distribution per image (mixup). */
export type Target =
  | { labels: Int32Array | readonly number[]; labelSmoothing?: number }
  | { softTargets: Float32Array | Tensor };

export interface CreateOptions extends ViTOptions {
  /** Seed of the initial weights and of every dropout / drop-path mask. */
  seed?: number;
  /** Time every native op (see profile()); for benchmarks, it adds a little overhead. */
  profile?: boolean;
  /**
   * Where the model computes: 'cpu' (default), 'cuda' (the GPU; a NativeError says why when it
   * cannot be had: backend not built, CUDA libraries missing, no driver, no device) or 'auto'
   * (the GPU when available, else the CPU). Tensors stay in host memory either way: a CUDA model
   * uploads its inputs and downloads its results.
   */
  device?: 'cpu' | 'cuda' | 'auto';
  /**
   * Compute precision of the backbone's Linears (patch embedding, qkv, proj, fc1, fc2):
   * 'float32' (default) or 'bf16' — bf16 copies of those weights multiplied with bf16-rounded
   * activations, accumulated in float32. Parameters, gradients, optimizer state, LayerNorm,
   * softmax, GELU and the adapters stay float32. See `bf16Native` for whether it is faster here.
   */
  dtype?: ComputeDType;
  /**
   * On CUDA, eval forwards and `Optimizer.trainStep` replay recorded CUDA graphs: per shape the
   * first call runs the ops, the second records them, later ones launch the whole forward (or
   * training step) at once. Anything that moves a buffer (another batch size, fold,
   * setTrainable, a dtype change) records again. No effect on the CPU, or with `profile`.
   * Default false.
   */
  cudaGraphs?: boolean;
  /**
   * Training memory for compute: backward recomputes each block's GELU input (fc1 of the norm or
   * adapter output) instead of keeping it — the largest activation training keeps (about a third
   * in bf16), for one more fc1 product per block (~15% more FLOPs with a frozen backbone). The
   * numbers are the same either way. Default false.
   */
  recomputeMlp?: boolean;
}

export interface OpProfile {
  op: string;
  seconds: number;
  calls: number;
  /** Floating-point operations done (for matrix products and attention), else 0. */
  flops: number;
}

export interface LoadResult {
  /** Model tensors the file did not have (only without strict). */
  missing: string[];
  /** File tensors the model does not have (only without strict). */
  unexpected: string[];
}

const backstop = new FinalizationRegistry<NativeViTHandle>((handle) => {
  try {
    handle.dispose();
  } catch {
    // busy: the job in flight keeps what it needs alive; the process reclaims the rest
  }
});

export class ViT implements Disposable {
  #handle: NativeViTHandle | null;
  #training = false;
  #batch = 0;

  private constructor(handle: NativeViTHandle) {
    this.#handle = handle;
    backstop.register(this, handle, this);
  }

  /**
   * A new model from a timm preset name (`vit_base_patch16_224`, …) or a full config, with
   * timm's initialisation for the backbone and the paper's for adapters (a new adapter is the
   * identity). Load pretrained weights with `load()`.
   */
  static create(config: string | ViTOptions, options: CreateOptions = {}): ViT {
    const { seed = 0, profile = false, device = 'cpu', dtype = 'float32', cudaGraphs = false, recomputeMlp = false, ...overrides } = options;
    if (!Number.isSafeInteger(seed) || seed < 0) throw new ConfigError(expected('a non-negative integer', 'seed', seed));
    if (device !== 'cpu' && device !== 'cuda' && device !== 'auto')
      throw new ConfigError(expected("'cpu' | 'cuda' | 'auto'", 'device', device));
    checkDType(dtype);
    const resolved = resolveConfig(config, overrides);
    const vit = new ViT(
      call(() => new native.NativeViT(resolved, seed, { profile, device, cudaGraphs: Boolean(cudaGraphs), recomputeMlp: Boolean(recomputeMlp) })),
    );
    if (dtype !== 'float32') vit.dtype = dtype;
    return vit;
  }

  /** Compute precision of the backbone's Linears; can be changed at any time (see CreateOptions). */
  get dtype(): ComputeDType {
    return call(() => this.handle().dtype());
  }

  set dtype(dtype: ComputeDType) {
    checkDType(dtype);
    call(() => this.handle().setDType(dtype));
  }

  /**
   * True when this model's device multiplies bf16 on bf16 hardware (a CPU with avx512_bf16 or
   * AMX, any supported GPU). False: dtype 'bf16' is emulated — the same numbers as on such
   * hardware, but slower than float32. Useful to preview bf16's accuracy effect.
   */
  get bf16Native(): boolean {
    return call(() => this.handle().bf16Native());
  }

  /** Where the model computes. */
  get device(): 'cpu' | 'cuda' {
    return call(() => this.handle().device());
  }

  /** The resolved config; after fold() its adapter is null. */
  get config(): ResolvedConfig {
    return call(() => this.handle().config());
  }

  get training(): boolean {
    return this.#training;
  }

  /** Training mode: dropout and drop path on; forward keeps what backward needs. */
  train(): this {
    this.#training = true;
    return this;
  }

  /** Inference mode: deterministic, keeps nothing. */
  eval(): this {
    this.#training = false;
    return this;
  }

  /** Parameters in timm's state_dict order. */
  parameters(): ParamInfo[] {
    return call(() => this.handle().params()).map(({ name, shape, role, trainable }) => ({
      name,
      shape: Object.freeze(shape),
      role,
      trainable,
    }));
  }

  /** Number of trainable values, and of all values. */
  countParameters(): { trainable: number; total: number } {
    let trainable = 0;
    let total = 0;
    for (const p of this.parameters()) {
      const n = p.shape.reduce((a, b) => a * b, 1);
      total += n;
      if (p.trainable) trainable += n;
    }
    return { trainable, total };
  }

  /** Which parameters train: 'adapters' (adapters + head), 'head' (linear probe) or 'all'. */
  setTrainable(mode: TrainableSet): this {
    call(() => this.handle().setTrainable(mode));
    return this;
  }

  /** A copy of a parameter's values. */
  param(name: string): Float32Array {
    return call(() => this.handle().getParam(name));
  }

  setParam(name: string, data: Float32Array): void {
    call(() => this.handle().setParam(name, data));
  }

  /** A copy of a trainable parameter's accumulated gradient. */
  grad(name: string): Float32Array {
    return call(() => this.handle().getGrad(name));
  }

  zeroGrad(): void {
    call(() => this.handle().zeroGrad());
  }

  /**
   * images [B, 3, S, S] → logits [B, numClasses]. In training mode, with `inputGrad`, the next
   * backward also computes d loss / d images (see inputGrad()).
   */
  forward(images: Tensor, options: { inputGrad?: boolean } = {}): Tensor {
    const handle = this.handle();
    const logits = Tensor.adopt(call(() => handle.forward(this.#images(images), this.#training, !!options.inputGrad)));
    this.#batch = logits.shape[0];
    return logits;
  }

  /** forward() on the addon's compute thread; the event loop stays free. */
  async forwardAsync(images: Tensor, options: { inputGrad?: boolean } = {}): Promise<Tensor> {
    const handle = this.handle();
    const raw = await callAsync(() => handle.forwardAsync(this.#images(images), this.#training, !!options.inputGrad));
    const logits = Tensor.adopt(raw);
    this.#batch = logits.shape[0];
    return logits;
  }

  /**
   * The mean cross-entropy of the last training forward against `target`, and its gradient
   * accumulated into every trainable parameter (call zeroGrad() between steps).
   */
  backward(target: Target): number {
    const handle = this.handle();
    const [labels, soft, smoothing] = this.#target(target);
    return call(() => handle.backward(labels, soft, smoothing));
  }

  async backwardAsync(target: Target): Promise<number> {
    const handle = this.handle();
    const [labels, soft, smoothing] = this.#target(target);
    return callAsync(() => handle.backwardAsync(labels, soft, smoothing));
  }

  /**
   * @internal The model's half of Optimizer.trainStep(): forward, loss, backward and `update`
   * in one native call on the compute thread.
   */
  async trainStepAsync(images: Tensor, target: Target, update: NativeUpdate): Promise<{ loss: number; logits: Tensor; gradNorm?: number }> {
    const handle = this.handle();
    if (!this.#training) throw new ArgumentError('trainStep needs the model in training mode: call model.train() first');
    const raw = this.#images(images);
    const [labels, soft, smoothing] = this.#target(target, images.shape[0]);
    const r = await callAsync(() => handle.trainStepAsync(raw, labels, soft, smoothing, update));
    this.#batch = images.shape[0];
    return { loss: r.loss, logits: Tensor.adopt(r.logits), ...(r.gradNorm !== undefined ? { gradNorm: r.gradNorm } : {}) };
  }

  /** d loss / d images [B, 3, S, S] of the last backward after forward(…, { inputGrad: true }). */
  inputGrad(): Tensor {
    return Tensor.adopt(call(() => this.handle().inputGrad()));
  }

  /**
   * Folds every adapter into the qkv / fc1 weights and biases that follow it (W' = W + s·(W B̂)A,
   * c' = c + s·W(B̂a + b), in float64). The model becomes a plain ViT with the same outputs.
   */
  fold(): this {
    call(() => this.handle().fold());
    return this;
  }

  /** Time spent per native op since the last reset (empty unless created with profile: true). */
  profile(options: { reset?: boolean } = {}): OpProfile[] {
    return call(() => this.handle().profile(!!options.reset));
  }

  // ---- state dicts -----------------------------------------------------------------------------

  /** Every parameter (or the trainable ones) by timm / official RepAdapter name. */
  stateDict(options: { trainableOnly?: boolean } = {}): Map<string, { shape: readonly number[]; data: Float32Array }> {
    const out = new Map<string, { shape: readonly number[]; data: Float32Array }>();
    for (const p of this.parameters())
      if (!options.trainableOnly || p.trainable) out.set(p.name, { shape: p.shape, data: this.param(p.name) });
    return out;
  }

  /**
   * Loads tensors by name. Every problem (missing, unexpected, mis-shaped names) is reported at
   * once in one StateDictError, and nothing is changed unless everything fits. Without strict,
   * missing and unexpected names are allowed and returned.
   */
  loadStateDict(
    entries: ReadonlyMap<string, { shape: readonly number[]; data: Float32Array }>,
    options: { strict?: boolean; context?: string } = {},
  ): LoadResult {
    const strict = options.strict ?? true;
    const params = this.parameters();
    const known = new Map(params.map((p) => [p.name, p]));
    const missing = params.filter((p) => !entries.has(p.name)).map((p) => p.name);
    const unexpected = [...entries.keys()].filter((n) => !known.has(n));
    const misshaped: MisshapedTensor[] = [];
    for (const [name, entry] of entries) {
      const p = known.get(name);
      if (!p) continue;
      if (!(entry.data instanceof Float32Array))
        throw new ArgumentError(expected('a Float32Array', `the data of ${name}`, entry.data));
      const same = entry.shape.length === p.shape.length && entry.shape.every((d, i) => d === p.shape[i]);
      const size = p.shape.reduce((a, b) => a * b, 1);
      // A right shape over the wrong number of values is reported as the flat count it holds.
      if (!same) misshaped.push({ name, expected: [...p.shape], got: [...entry.shape] });
      else if (entry.data.length !== size) misshaped.push({ name, expected: [...p.shape], got: [entry.data.length] });
    }
    if (misshaped.length || (strict && (missing.length || unexpected.length)))
      throw new StateDictError(
        { missing: strict ? missing : [], unexpected: strict ? unexpected : [], misshaped },
        { context: options.context },
      );
    for (const [name, entry] of entries) if (known.has(name)) this.setParam(name, entry.data);
    return { missing, unexpected };
  }

  /** Loads a safetensors file of timm / official RepAdapter names (see loadStateDict). */
  async load(path: string, options: { strict?: boolean } = {}): Promise<LoadResult> {
    const file = await readSafetensors(path);
    const entries = new Map<string, { shape: readonly number[]; data: Float32Array }>();
    for (const [name, entry] of file.tensors) entries.set(name, { shape: entry.shape, data: toFloat32(entry) });
    return this.loadStateDict(entries, { ...options, context: `with ${path}` });
  }

  /**
   * Loads a pretrained backbone from Google's .npz (original, AugReg, big_vision layouts), timm's
   * or Hugging Face's .safetensors: names converted, q/k/v joined, the position embedding
   * resampled to this image size, a fresh head when the class count differs (io/pretrained.ts).
   */
  async loadPretrained(path: string, options: LoadPretrainedOptions = {}): Promise<PretrainedReport> {
    return loadPretrained(this, path, options);
  }

  /**
   * Writes the parameters as float32 safetensors (atomically), with the config in the metadata.
   * trainableOnly keeps only what trained: for RepAdapter, the adapters and the head.
   */
  async save(path: string, options: { trainableOnly?: boolean; metadata?: Record<string, string> } = {}): Promise<void> {
    const tensors: TensorInput[] = [];
    for (const [name, { shape, data }] of this.stateDict(options)) tensors.push({ name, dtype: 'F32', shape, data });
    await writeSafetensors(path, tensors, { ...options.metadata, 'repadapter.config': JSON.stringify(this.config) });
  }

  // ---- lifetime --------------------------------------------------------------------------------

  get disposed(): boolean {
    return this.#handle === null;
  }

  dispose(): void {
    if (!this.#handle) return;
    call(() => this.#handle!.dispose());
    backstop.unregister(this);
    this.#handle = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal */
  handle(): NativeViTHandle {
    if (!this.#handle) throw new DisposedError('this model has been disposed');
    return this.#handle;
  }

  // ---- argument checks ---------------------------------------------------------------------------

  #images(images: Tensor) {
    if (!(images instanceof Tensor)) throw new ArgumentError(expected('a Tensor', 'images', images));
    const s = this.config.imageSize;
    const shape = images.shape;
    if (shape.length !== 4 || shape[0] < 1 || shape[1] !== 3 || shape[2] !== s || shape[3] !== s)
      throw new ShapeError(`expected shape [B, 3, ${s}, ${s}] for images, got [${shape.join(', ')}]`);
    return images.handle();
  }

  /** The target of a batch of B images: by default the last forward's, which must have trained. */
  #target(target: Target, batch?: number): [Int32Array | null, Float32Array | null, number] {
    if (batch === undefined && (!this.#training || this.#batch === 0))
      throw new ArgumentError('backward needs a forward in training mode first: call model.train(), then forward()');
    const B = batch ?? this.#batch;
    const C = this.config.numClasses;
    if (target && typeof target === 'object' && 'labels' in target) {
      const smoothing = target.labelSmoothing ?? 0;
      if (typeof smoothing !== 'number' || !(smoothing >= 0 && smoothing < 1))
        throw new ArgumentError(expected('a number in [0, 1)', 'labelSmoothing', smoothing));
      const labels = target.labels;
      if (!(labels instanceof Int32Array) && !Array.isArray(labels))
        throw new ArgumentError(expected('an Int32Array or an array of integers', 'labels', labels));
      if (labels.length !== B) throw new ShapeError(`expected ${B} labels (one per image), got ${labels.length}`);
      for (let i = 0; i < labels.length; i++) {
        const y = labels[i];
        if (!Number.isInteger(y)) throw new ArgumentError(expected('integer class indices', `labels[${i}]`, y));
        if (y < 0 || y >= C) throw new OutOfRangeError(`label ${y} of sample ${i} is outside [0, ${C})`);
      }
      return [labels instanceof Int32Array ? labels : Int32Array.from(labels), null, smoothing];
    }
    if (target && typeof target === 'object' && 'softTargets' in target) {
      const soft = target.softTargets instanceof Tensor ? target.softTargets.toArray() : target.softTargets;
      if (!(soft instanceof Float32Array)) throw new ArgumentError(expected('a Float32Array or Tensor', 'softTargets', soft));
      if (soft.length !== B * C) throw new ShapeError(`expected softTargets of shape [${B}, ${C}], got ${soft.length} values`);
      return [null, soft, 0];
    }
    throw new ArgumentError(expected('{ labels } or { softTargets }', 'target', target));
  }
}

function checkDType(dtype: unknown): asserts dtype is ComputeDType {
  if (dtype !== 'float32' && dtype !== 'bf16') throw new ConfigError(expected("'float32' | 'bf16'", 'dtype', dtype));
}
