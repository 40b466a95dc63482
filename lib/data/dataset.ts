/**
 * ImageDataset: images decoded once into one uint8 cache in memory, with their labels.
 *
 * The cache is `pixels` [length, cacheSize, cacheSize, channels] (HWC, row-major): channels is 3
 * for colour sources and 1 for greyscale ones (IDX: MNIST, Fashion-MNIST), which the native batch
 * code replicates to RGB. Batches are made from it by native code (see batch.ts and loader.ts):
 * nothing touches the pixels per pixel in JavaScript.
 */
import { ArgumentError, OutOfRangeError, ShapeError, expected } from '../errors.js';
import { call, native } from '../native.js';
import { Tensor } from '../tensor.js';
import { resolveNormalize, type Normalize } from './transforms.js';

/** One item left out in `onError: 'skip'` mode, and why. */
export interface SkippedItem {
  /** The file the problem was found in: a list file, an image, an IDX file, a class folder. */
  file: string;
  /** 1-based line of a list file, when there is one. */
  line?: number;
  /** 0-based item index of an IDX file, when there is one. */
  item?: number;
  /** The image path the item names, when it differs from `file`. */
  image?: string;
  reason: string;
}

export interface DatasetInit {
  name: string;
  pixels: Uint8Array;
  cacheSize: number;
  channels: 1 | 3;
  imageSize: number;
  labels: Int32Array;
  numClasses: number;
  classes?: readonly string[];
  sources?: readonly string[];
  skipped?: readonly SkippedItem[];
}

export interface FromPixelsOptions {
  /** Side of the square images in `pixels`. */
  size: number;
  channels: 1 | 3;
  /** Side of the batches (default: size; otherwise resampled bilinearly per batch). */
  imageSize?: number;
  /** Default: the largest label + 1. */
  numClasses?: number;
  classes?: readonly string[];
  name?: string;
}

export class ImageDataset {
  /** What it was loaded from (a list file, a folder, an IDX file). */
  readonly name: string;
  readonly length: number;
  /** Side S of the batches made from it: [B, 3, S, S]. */
  readonly imageSize: number;
  /** Side of the cached images (imageSize unless asked otherwise). */
  readonly cacheSize: number;
  readonly channels: 1 | 3;
  readonly numClasses: number;
  /** Class names by label, when the source names them (ImageFolder). */
  readonly classes: readonly string[] | undefined;
  /** [length] class ids in [0, numClasses). */
  readonly labels: Int32Array;
  /** [length, cacheSize, cacheSize, channels] uint8. */
  readonly pixels: Uint8Array;
  /** Where each item came from (file path, or `file#index` for IDX). */
  readonly sources: readonly string[];
  /** Items left out by `onError: 'skip'`. */
  readonly skipped: readonly SkippedItem[];

  constructor(init: DatasetInit) {
    const n = init.labels.length;
    const frame = init.cacheSize * init.cacheSize * init.channels;
    if (init.pixels.length !== n * frame)
      throw new ShapeError(
        `expected ${n * frame} pixel bytes for ${n} images of ${init.cacheSize}×${init.cacheSize}×${init.channels}, got ${init.pixels.length}`,
      );
    if (!Number.isSafeInteger(init.numClasses) || init.numClasses < 1)
      throw new ArgumentError(expected('a positive integer', 'numClasses', init.numClasses));
    for (let i = 0; i < n; i++)
      if (init.labels[i] < 0 || init.labels[i] >= init.numClasses)
        throw new OutOfRangeError(expected(`a label in [0, ${init.numClasses})`, `labels[${i}]`, init.labels[i]));
    this.name = init.name;
    this.length = n;
    this.imageSize = init.imageSize;
    this.cacheSize = init.cacheSize;
    this.channels = init.channels;
    this.numClasses = init.numClasses;
    this.classes = init.classes ? Object.freeze([...init.classes]) : undefined;
    this.labels = init.labels;
    this.pixels = init.pixels;
    this.sources = Object.freeze([...(init.sources ?? [])]);
    this.skipped = Object.freeze([...(init.skipped ?? [])]);
  }

  /** A dataset over pixels already in memory: [n, size, size, channels] uint8. */
  static fromPixels(pixels: Uint8Array, labels: Int32Array | readonly number[], opts: FromPixelsOptions): ImageDataset {
    if (!(pixels instanceof Uint8Array)) throw new ArgumentError(expected('a Uint8Array', 'pixels', pixels));
    const size = checkSize(opts?.size, 'size');
    if (opts.channels !== 1 && opts.channels !== 3) throw new ArgumentError(expected('1 or 3', 'channels', opts.channels));
    const imageSize = opts.imageSize === undefined ? size : checkSize(opts.imageSize, 'imageSize');
    const ids = labels instanceof Int32Array ? labels : Int32Array.from(labels);
    let max = 0;
    for (let i = 0; i < ids.length; i++) max = Math.max(max, ids[i]);
    const numClasses = opts.numClasses ?? max + 1;
    return new ImageDataset({
      name: opts.name ?? 'pixels',
      pixels,
      cacheSize: size,
      channels: opts.channels,
      imageSize,
      labels: ids,
      numClasses,
      classes: opts.classes,
    });
  }

  /** [length, cacheSize, cacheSize, channels]: the layout of `pixels`. */
  get shape(): [number, number, number, number] {
    return [this.length, this.cacheSize, this.cacheSize, this.channels];
  }

  /** The cached pixels of item i: a view [cacheSize, cacheSize, channels], not a copy. */
  image(i: number): Uint8Array {
    this.#checkIndex(i, 'index');
    const frame = this.cacheSize * this.cacheSize * this.channels;
    return this.pixels.subarray(i * frame, (i + 1) * frame);
  }

  /**
   * The evaluation batch of the given items: normalized [B, 3, S, S], no augmentation. The caller
   * owns (and disposes) the tensor. For training batches use `loader()`.
   */
  batch(indices: ArrayLike<number>, opts: { normalize?: Normalize } = {}): { images: Tensor; labels: Int32Array } {
    const idx = Int32Array.from(indices as ArrayLike<number>);
    if (idx.length === 0) throw new ArgumentError(expected('at least one index', 'indices', indices));
    const labels = new Int32Array(idx.length);
    for (let b = 0; b < idx.length; b++) {
      this.#checkIndex(idx[b], `indices[${b}]`);
      labels[b] = this.labels[idx[b]];
    }
    const { mean, std } = resolveNormalize(opts.normalize);
    const r = call(() => native.dataBatch(this.pixels, this.shape, idx, null, { size: this.imageSize, mean, std }));
    return { images: Tensor.adopt(r.images), labels };
  }

  #checkIndex(i: number, name: string): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.length)
      throw new OutOfRangeError(expected(`an integer in [0, ${this.length})`, name, i));
  }

  toString(): string {
    return `ImageDataset(${this.name}: ${this.length} images ${this.cacheSize}×${this.cacheSize}×${this.channels} → ${this.imageSize}, ${this.numClasses} classes)`;
  }
}

export function checkSize(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1 || v > 8192)
    throw new ArgumentError(expected('an integer in [1, 8192]', name, v));
  return v;
}
