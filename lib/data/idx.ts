/**
 * IDX files (MNIST, Fashion-MNIST, KMNIST…): `*-images-idx3-ubyte` [n, rows, cols] and
 * `*-labels-idx1-ubyte` [n] unsigned bytes, big-endian header, gzipped or not (detected by the
 * gzip magic, not the name).
 *
 * The greyscale images stay one channel in the cache (the batch code replicates them to RGB) and
 * are resized to cacheSize (default imageSize) by native code with PIL's antialiased bicubic
 * filter, all at once: sharp costs about 1.5 ms per call here, 100 s for Fashion-MNIST, where one
 * native pass over the whole set takes a moment. With cacheSize equal to the files' size (28)
 * nothing is resized at load time.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { gunzip as gunzipCallback } from 'node:zlib';

import { ArgumentError, FormatError, expected } from '../errors.js';
import { callAsync, native } from '../native.js';
import { ImageDataset, type SkippedItem } from './dataset.js';
import { allocateCache, resolveLoadOptions, type LoadOptions } from './decode.js';

const gunzip = promisify(gunzipCallback);

/** Where Debian's `dataset-fashion-mnist` package puts the files. */
export const FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';
/** Fashion-MNIST's class names, by label. */
export const FASHION_MNIST_CLASSES: readonly string[] = Object.freeze([
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
]);

export interface IdxOptions extends LoadOptions {
  /** Class names by label (e.g. FASHION_MNIST_CLASSES). */
  classes?: readonly string[];
}

const TYPE_NAMES: Record<number, string> = {
  0x08: 'uint8',
  0x09: 'int8',
  0x0b: 'int16',
  0x0c: 'int32',
  0x0d: 'float32',
  0x0e: 'float64',
};

/** The bytes of a file, gunzipped when it starts with the gzip magic. */
async function readMaybeGzip(file: string): Promise<Uint8Array> {
  let raw: Buffer;
  try {
    raw = await readFile(file);
  } catch (cause) {
    throw new FormatError(`${file}: cannot read: ${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message}`, { file, cause });
  }
  if (raw.length >= 2 && raw[0] === 0x1f && raw[1] === 0x8b) {
    try {
      return await gunzip(raw);
    } catch (cause) {
      throw new FormatError(`${file}: corrupt gzip data: ${(cause as Error).message}`, { file, cause });
    }
  }
  return raw;
}

/** Parses an IDX file of unsigned bytes with `ndim` dimensions; checks every size. */
export function parseIdx(buf: Uint8Array, file: string, ndim: number): { dims: number[]; data: Uint8Array } {
  if (buf.length < 4) throw new FormatError(`${file}: ${buf.length} bytes is too short for an IDX header`, { file });
  if (buf[0] !== 0 || buf[1] !== 0) {
    const magic = Array.from(buf.subarray(0, 4), (b) => b.toString(16).padStart(2, '0')).join('');
    throw new FormatError(`${file}: not an IDX file (magic 0x${magic}, expected 0x0000TTDD)`, { file });
  }
  if (buf[2] !== 0x08)
    throw new FormatError(
      `${file}: IDX element type 0x${buf[2].toString(16).padStart(2, '0')} (${TYPE_NAMES[buf[2]] ?? 'unknown'}) is not supported: expected uint8 (0x08)`,
      { file },
    );
  if (buf[3] !== ndim)
    throw new FormatError(`${file}: expected an IDX file of ${ndim} dimension${ndim > 1 ? 's' : ''}, got ${buf[3]}`, { file });
  const header = 4 + 4 * ndim;
  if (buf.length < header) throw new FormatError(`${file}: truncated IDX header (${buf.length} of ${header} bytes)`, { file });
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const dims: number[] = [];
  let size = 1;
  for (let d = 0; d < ndim; d++) {
    const v = view.getUint32(4 + 4 * d, false);
    dims.push(v);
    size *= v;
  }
  const have = buf.length - header;
  if (have < size) throw new FormatError(`${file}: truncated: ${have} data bytes, the header [${dims.join(', ')}] promises ${size}`, { file });
  if (have > size) throw new FormatError(`${file}: ${have - size} unexpected bytes after the data of [${dims.join(', ')}]`, { file });
  if (dims[0] === 0) throw new FormatError(`${file}: the file holds no items`, { file });
  return { dims, data: buf.subarray(header) };
}

/** Loads an IDX images / labels pair (e.g. Fashion-MNIST's train-images-idx3-ubyte.gz). */
export async function idx(imagesPath: string, labelsPath: string, opts?: IdxOptions): Promise<ImageDataset> {
  if (typeof imagesPath !== 'string' || imagesPath === '') throw new ArgumentError(expected('a file path', 'imagesPath', imagesPath));
  if (typeof labelsPath !== 'string' || labelsPath === '') throw new ArgumentError(expected('a file path', 'labelsPath', labelsPath));
  const o = resolveLoadOptions(opts, 'idx');
  if (opts?.classes !== undefined && (!Array.isArray(opts.classes) || !opts.classes.every((c) => typeof c === 'string')))
    throw new ArgumentError(expected('an array of class names', 'classes', opts.classes));
  const imagesFile = path.resolve(imagesPath);
  const labelsFile = path.resolve(labelsPath);
  const [imagesBuf, labelsBuf] = await Promise.all([readMaybeGzip(imagesFile), readMaybeGzip(labelsFile)]);
  const images = parseIdx(imagesBuf, imagesFile, 3);
  const labels = parseIdx(labelsBuf, labelsFile, 1);
  const [n, rows, cols] = images.dims;
  if (labels.dims[0] !== n)
    throw new FormatError(`${labelsFile}: ${labels.dims[0]} labels for the ${n} images of ${imagesFile}`, { file: labelsFile });
  if (rows === 0 || cols === 0) throw new FormatError(`${imagesFile}: images of ${rows}×${cols} pixels`, { file: imagesFile });

  const numClasses = o.numClasses ?? opts?.classes?.length;
  // Labels: out-of-range ones throw or are skipped (IDX labels are bytes, so always integers).
  const skipped: SkippedItem[] = [];
  const keep: number[] = [];
  let max = 0;
  for (let i = 0; i < n && keep.length < o.limit; i++) {
    const label = labels.data[i];
    if (numClasses !== undefined && label >= numClasses) {
      const reason = `label ${label} is out of range [0, ${numClasses})`;
      if (o.onError === 'skip') {
        skipped.push({ file: labelsFile, item: i, reason });
        continue;
      }
      throw new FormatError(`${labelsFile}: item ${i}: ${reason}`, { file: labelsFile });
    }
    keep.push(i);
    max = Math.max(max, label);
  }
  if (keep.length === 0) throw new FormatError(`${labelsFile}: every item was skipped (${skipped.length}); first: item ${skipped[0]?.item}: ${skipped[0]?.reason}`, { file: labelsFile });

  // The kept images, contiguous: a view when nothing was dropped, else one memcpy per image.
  const frame = rows * cols;
  let source: Uint8Array;
  if (keep.length === n) source = images.data;
  else if (keep[keep.length - 1] === keep.length - 1) source = images.data.subarray(0, keep.length * frame);
  else {
    source = new Uint8Array(keep.length * frame);
    keep.forEach((i, k) => source.set(images.data.subarray(i * frame, (i + 1) * frame), k * frame));
  }
  const ids = Int32Array.from(keep, (i) => labels.data[i]);

  const S = o.cacheSize;
  let pixels: Uint8Array;
  if (S === rows && S === cols) {
    pixels = source.byteOffset === 0 && source.byteLength === source.buffer.byteLength ? source : source.slice();
  } else {
    pixels = allocateCache(keep.length, S, 1, imagesFile);
    // In chunks, so no single job holds a libuv thread for long.
    const chunk = Math.max(1, Math.floor((1 << 22) / (S * S)));
    for (let first = 0; first < keep.length; first += chunk) {
      const count = Math.min(chunk, keep.length - first);
      await callAsync(() =>
        native.dataResizeAsync(
          source.subarray(first * frame, (first + count) * frame),
          [count, rows, cols, 1],
          pixels.subarray(first * S * S, (first + count) * S * S),
          [S, S],
          'bicubic',
        ),
      );
    }
  }
  return new ImageDataset({
    name: path.basename(imagesFile),
    pixels,
    cacheSize: S,
    channels: 1,
    imageSize: o.imageSize,
    labels: ids,
    numClasses: numClasses ?? max + 1,
    classes: opts?.classes,
    sources: keep.map((i) => `${imagesFile}#${i}`),
    skipped,
  });
}

/**
 * An MNIST-format folder: `train-*` or `t10k-*` images and labels, gzipped or not, named as the
 * original downloads and Debian's packages name them (`train-images-idx3-ubyte.gz`, also
 * `train-images.idx3-ubyte`). numClasses defaults to 10.
 *
 *     const train = await data.mnist(data.FASHION_MNIST_DIR, 'train', { imageSize: 32, classes: data.FASHION_MNIST_CLASSES });
 */
export async function mnist(dir: string, split: 'train' | 'test', opts?: IdxOptions): Promise<ImageDataset> {
  if (typeof dir !== 'string' || dir === '') throw new ArgumentError(expected('a folder path', 'dir', dir));
  if (split !== 'train' && split !== 'test') throw new ArgumentError(expected("'train' | 'test'", 'split', split));
  const prefix = split === 'train' ? 'train' : 't10k';
  const find = async (kind: 'images' | 'labels', rank: number): Promise<string> => {
    const names = [`${prefix}-${kind}-idx${rank}-ubyte`, `${prefix}-${kind}.idx${rank}-ubyte`].flatMap((b) => [`${b}.gz`, b]);
    for (const name of names) {
      const p = path.join(dir, name);
      if (await stat(p).then((s) => s.isFile(), () => false)) return p;
    }
    throw new ArgumentError(`no ${split} ${kind} in ${path.resolve(dir)}: looked for ${names.join(', ')}`);
  };
  // One after the other: when both are missing, the error names the images, every time.
  const images = await find('images', 3);
  const labels = await find('labels', 1);
  return idx(images, labels, { numClasses: 10, ...opts });
}
