/**
 * DataLoader: seeded, resumable batches of an ImageDataset, assembled by native code one batch
 * ahead of the consumer.
 *
 *     const train = data.loader(dataset, { batchSize: 64, shuffle: true, seed: 42, augment: true, mixup: true });
 *     for (let e = 0; e < epochs; e++)
 *       for await (const batch of train) {          // one epoch per loop
 *         await model.forwardAsync(batch.images);
 *         await model.backwardAsync(batch.softTargets ? { softTargets: batch.softTargets } : { labels: batch.labels });
 *         batch.dispose();                          // the consumer owns the images tensor
 *       }
 *
 * Everything random is a function of (seed, epoch, …): the order of an epoch of (seed, epoch),
 * a sample's crop and flip of (seed, epoch, dataset index), the Mixup draw of (seed, epoch,
 * batch index). So `state()` ({ epoch, position }, plain JSON) is all it takes to resume: a loader
 * made with the same dataset and options and given that state yields exactly the batches the
 * first one would have yielded next.
 */
import { ArgumentError, BusyError, expected } from '../errors.js';
import { call, callAsync, native, type NativeBatchSpec } from '../native.js';
import { Tensor } from '../tensor.js';
import type { ImageDataset } from './dataset.js';
import { resolveTransforms, type AugmentOptions, type MixupOptions, type Normalize } from './transforms.js';

export interface LoaderOptions {
  batchSize: number;
  /** A new seeded order every epoch. Default false (dataset order). */
  shuffle?: boolean;
  /** Seed of the order, the augmentations and Mixup (a non-negative safe integer). Default 0. */
  seed?: number;
  /** Leave out the last, smaller batch of an epoch. Default false. */
  dropLast?: boolean;
  /** Random crop and flip per sample (timm semantics); see AugmentOptions. Default none. */
  augment?: AugmentOptions | boolean;
  /** Mixup / CutMix with label smoothing; batches then carry `softTargets`. Default none. */
  mixup?: MixupOptions | boolean;
  /** Default 'imagenet' (mean 0.485/0.456/0.406, std 0.229/0.224/0.225, as the official code). */
  normalize?: Normalize;
  /** Assemble the next batch while the current one is in use. Default true. */
  prefetch?: boolean;
  /** Where to resume: a state() of an earlier loader over the same data and options. */
  state?: LoaderState;
}

/** Where a loader stands: `position` batches of epoch `epoch` have been handed out. */
export interface LoaderState {
  epoch: number;
  position: number;
}

export interface Batch extends Disposable {
  /** [B, 3, S, S] normalized (and augmented / mixed) images; owned by the consumer. */
  images: Tensor;
  /** [B] class ids (unmixed). */
  labels: Int32Array;
  /** [B, numClasses] mixed, smoothed targets (rows sum to 1), with `mixup` only. */
  softTargets?: Float32Array;
  /** Mixup weight of each sample's own label (1 = not mixed), with `mixup` only. */
  lam?: number;
  /** [B] dataset indices of the samples. */
  indices: Int32Array;
  epoch: number;
  /** The batch's position in its epoch. */
  index: number;
  /** Disposes `images`. */
  dispose(): void;
}

function counter(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
    throw new ArgumentError(expected('a non-negative safe integer', name, v));
  return v;
}

export class DataLoader implements AsyncIterable<Batch> {
  readonly dataset: ImageDataset;
  readonly batchSize: number;
  readonly shuffle: boolean;
  readonly seed: number;
  readonly dropLast: boolean;
  readonly prefetch: boolean;
  readonly #spec: Omit<NativeBatchSpec, 'epoch' | 'batchIndex'>;
  readonly #mixup: boolean;
  #epoch = 0;
  #position = 0;
  #iterating = false;
  #order: { epoch: number; order: Int32Array } | null = null;

  constructor(dataset: ImageDataset, opts: LoaderOptions) {
    if (!dataset || typeof dataset !== 'object' || !(dataset.pixels instanceof Uint8Array) || !(dataset.labels instanceof Int32Array))
      throw new ArgumentError(expected('an ImageDataset', 'dataset', dataset));
    if (!opts || typeof opts !== 'object') throw new ArgumentError(expected('an options object with batchSize', 'loader options', opts));
    if (!Number.isSafeInteger(opts.batchSize) || opts.batchSize < 1)
      throw new ArgumentError(expected('a positive integer', 'batchSize', opts.batchSize));
    this.dataset = dataset;
    this.batchSize = opts.batchSize;
    this.shuffle = Boolean(opts.shuffle);
    this.seed = opts.seed === undefined ? 0 : counter(opts.seed, 'seed');
    this.dropLast = Boolean(opts.dropLast);
    this.prefetch = opts.prefetch ?? true;
    const t = resolveTransforms(opts);
    this.#mixup = t.mixup !== null;
    this.#spec = {
      size: dataset.imageSize,
      mean: t.mean,
      std: t.std,
      flip: t.flip,
      crop: t.crop,
      mixup: t.mixup,
      numClasses: dataset.numClasses,
      seed: this.seed,
    };
    if (this.length === 0)
      throw new ArgumentError(
        `expected at least one batch per epoch: ${dataset.length} images with batchSize ${this.batchSize} and dropLast make none`,
      );
    if (opts.state !== undefined) this.restore(opts.state);
  }

  /** Batches per epoch. */
  get length(): number {
    const n = this.dataset.length;
    return this.dropLast ? Math.floor(n / this.batchSize) : Math.ceil(n / this.batchSize);
  }

  get epoch(): number {
    return this.#epoch;
  }

  /** Batches of the current epoch handed out so far. */
  get position(): number {
    return this.#position;
  }

  /** Where the loader stands, as plain JSON; a finished epoch reads as the start of the next. */
  state(): LoaderState {
    return this.#position >= this.length ? { epoch: this.#epoch + 1, position: 0 } : { epoch: this.#epoch, position: this.#position };
  }

  /** Continue from a state() of a loader over the same dataset with the same options. */
  restore(state: LoaderState): void {
    if (this.#iterating) throw new BusyError('cannot restore a DataLoader while it is being iterated');
    if (!state || typeof state !== 'object') throw new ArgumentError(expected('{ epoch, position }', 'state', state));
    const epoch = counter(state.epoch, 'state.epoch');
    const position = counter(state.position, 'state.position');
    if (position > this.length)
      throw new ArgumentError(expected(`a position in [0, ${this.length}] (batches per epoch)`, 'state.position', position));
    this.#epoch = epoch;
    this.#position = position;
  }

  /** The dataset order of an epoch: a seeded permutation with shuffle, else 0..n-1. */
  order(epoch: number = this.#epoch): Int32Array {
    counter(epoch, 'epoch');
    if (this.#order?.epoch === epoch) return this.#order.order;
    const n = this.dataset.length;
    const order = this.shuffle ? call(() => native.dataPermutation(n, this.seed, epoch)) : Int32Array.from({ length: n }, (_, i) => i);
    this.#order = { epoch, order };
    return order;
  }

  /** Batch `index` of `epoch`, made on demand (the same batch iteration yields). */
  async batchAt(epoch: number, index: number): Promise<Batch> {
    counter(epoch, 'epoch');
    if (!Number.isSafeInteger(index) || index < 0 || index >= this.length)
      throw new ArgumentError(expected(`a batch index in [0, ${this.length})`, 'index', index));
    return this.#make(epoch, this.order(epoch), index);
  }

  async #make(epoch: number, order: Int32Array, index: number): Promise<Batch> {
    const ds = this.dataset;
    const indices = order.slice(index * this.batchSize, Math.min((index + 1) * this.batchSize, ds.length));
    const labels = new Int32Array(indices.length);
    for (let b = 0; b < indices.length; b++) labels[b] = ds.labels[indices[b]];
    const spec: NativeBatchSpec = { ...this.#spec, epoch, batchIndex: index };
    const r = await callAsync(() => native.dataBatchAsync(ds.pixels, ds.shape, indices, this.#mixup ? labels : null, spec));
    const images = Tensor.adopt(r.images);
    const batch: Batch = {
      images,
      labels,
      indices,
      epoch,
      index,
      dispose: () => images.dispose(),
      [Symbol.dispose]: () => images.dispose(),
    };
    if (r.softTargets) {
      batch.softTargets = r.softTargets;
      batch.lam = r.lam;
    }
    return batch;
  }

  /**
   * The remaining batches of the current epoch; when they are all handed out the loader moves to
   * the next epoch. One iteration at a time. Breaking out early keeps the position, so the next
   * loop continues where this one stopped.
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<Batch, void, undefined> {
    if (this.#iterating) throw new BusyError('this DataLoader is already being iterated: finish or leave the other loop first');
    this.#iterating = true;
    let pending: Promise<Batch> | null = null;
    const start = (epoch: number, order: Int32Array, index: number): Promise<Batch> => {
      const p = this.#make(epoch, order, index);
      p.catch(() => {}); // rejections surface when awaited, not as unhandled ones meanwhile
      return p;
    };
    try {
      if (this.#position >= this.length) {
        this.#epoch += 1;
        this.#position = 0;
      }
      const epoch = this.#epoch;
      const order = this.order(epoch);
      let index = this.#position;
      if (index < this.length) pending = start(epoch, order, index);
      while (pending) {
        const batch: Batch = await pending;
        pending = null;
        index += 1;
        if (this.prefetch && index < this.length) pending = start(epoch, order, index);
        this.#position = index;
        yield batch;
        if (!this.prefetch && index < this.length) pending = start(epoch, order, index);
      }
      this.#epoch = epoch + 1;
      this.#position = 0;
    } finally {
      this.#iterating = false;
      if (pending) pending.then((b) => b.dispose(), () => {}); // a prefetched batch nobody will see
    }
  }
}

/** A DataLoader over `dataset`; see LoaderOptions. */
export function loader(dataset: ImageDataset, opts: LoaderOptions): DataLoader {
  return new DataLoader(dataset, opts);
}
