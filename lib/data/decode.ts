/**
 * Decoding images once, with sharp, into the uint8 cache of an ImageDataset.
 *
 * Per file: EXIF orientation applied (`rotate()`), alpha composited onto `background` (black by
 * default), greyscale / CMYK / 16-bit converted to 8-bit sRGB, then resized to cacheSize ×
 * cacheSize with sharp's 'cubic' kernel (Catmull-Rom, as PIL's BICUBIC that the official
 * RepAdapter transform `Resize((224, 224), interpolation=3)` uses), aspect ratio not kept.
 * sharp's default input pixel limit (268 MP) stays on.
 *
 * Why composite rather than drop alpha: PIL's convert('RGB') keeps whatever colour happens to
 * sit under transparent pixels, which formats leave undefined, and sharp resizes premultiplied,
 * so "dropping" alpha after sharp's resize is not well defined either. Compositing onto a known
 * background gives the same result whichever order the operations run in.
 *
 * Decoding runs on libuv's thread pool (sharp's workers), `concurrency` files at a time (default
 * 2), so the pool keeps threads free for file reads and the native batch jobs.
 */
import { constants as bufferConstants } from 'node:buffer';

import sharp from 'sharp';

import { ArgumentError, FormatError, expected } from '../errors.js';
import { checkSize, type SkippedItem } from './dataset.js';

export type OnError = 'throw' | 'skip';
type Background = string | { r: number; g: number; b: number };

/** Options shared by every dataset loader. */
export interface LoadOptions {
  /** Side S of the batches (the model's imageSize). Default 224. */
  imageSize?: number;
  /**
   * Side of the cached images. Default: imageSize (decode and resize once). A smaller cache
   * (e.g. 28 for MNIST) saves memory; batches are then resampled bilinearly to imageSize.
   */
  cacheSize?: number;
  /** Labels must lie in [0, numClasses). Default: the layout's own count, or the largest label + 1. */
  numClasses?: number;
  /** 'throw' (default): the first bad item throws. 'skip': bad items are left out and listed in `skipped`. */
  onError?: OnError;
  /** Only the first `limit` items, in layout order (list lines that fail to parse in skip mode do not count). */
  limit?: number;
  /** Files decoded at a time (default 2; at most 16). */
  concurrency?: number;
  /** Colour transparent pixels are composited onto. Default black. */
  background?: Background;
  /** sharp's failOn: how strict decoding is. Default 'warning' (truncated files fail). */
  failOn?: 'none' | 'truncated' | 'error' | 'warning';
}

export interface ResolvedLoadOptions {
  imageSize: number;
  cacheSize: number;
  numClasses: number | undefined;
  onError: OnError;
  limit: number;
  concurrency: number;
  background: Background;
  failOn: 'none' | 'truncated' | 'error' | 'warning';
}

export function resolveLoadOptions(opts: LoadOptions | undefined, fn: string): ResolvedLoadOptions {
  if (opts !== undefined && (typeof opts !== 'object' || opts === null))
    throw new ArgumentError(expected('an options object', `${fn} options`, opts));
  const o = opts ?? {};
  const imageSize = o.imageSize === undefined ? 224 : checkSize(o.imageSize, 'imageSize');
  const cacheSize = o.cacheSize === undefined ? imageSize : checkSize(o.cacheSize, 'cacheSize');
  if (o.numClasses !== undefined && (!Number.isSafeInteger(o.numClasses) || o.numClasses < 1))
    throw new ArgumentError(expected('a positive integer', 'numClasses', o.numClasses));
  if (o.onError !== undefined && o.onError !== 'throw' && o.onError !== 'skip')
    throw new ArgumentError(expected("'throw' | 'skip'", 'onError', o.onError));
  if (o.limit !== undefined && (!Number.isSafeInteger(o.limit) || o.limit < 1))
    throw new ArgumentError(expected('a positive integer', 'limit', o.limit));
  if (o.concurrency !== undefined && (!Number.isSafeInteger(o.concurrency) || o.concurrency < 1 || o.concurrency > 16))
    throw new ArgumentError(expected('an integer in [1, 16]', 'concurrency', o.concurrency));
  const failOn = o.failOn ?? 'warning';
  if (!['none', 'truncated', 'error', 'warning'].includes(failOn))
    throw new ArgumentError(expected("'none' | 'truncated' | 'error' | 'warning'", 'failOn', o.failOn));
  return {
    imageSize,
    cacheSize,
    numClasses: o.numClasses,
    onError: o.onError ?? 'throw',
    limit: o.limit ?? Infinity,
    concurrency: o.concurrency ?? 2,
    background: o.background ?? { r: 0, g: 0, b: 0 },
    failOn,
  };
}

/** Allocates the cache, refusing sizes a single buffer cannot hold. */
export function allocateCache(n: number, size: number, channels: number, what: string): Uint8Array {
  const bytes = n * size * size * channels;
  if (bytes > bufferConstants.MAX_LENGTH)
    throw new ArgumentError(
      `the decoded cache of ${what} would take ${(bytes / 2 ** 30).toFixed(1)} GiB (${n} images of ` +
        `${size}×${size}×${channels}), more than one buffer holds: pass a smaller cacheSize or a limit`,
    );
  return new Uint8Array(bytes);
}

/** One image to decode, and where it was listed (for messages). */
export interface DecodeItem {
  path: string;
  label: number;
  /** The file that names the image (a list file), or the image itself. */
  file: string;
  /** 1-based line in `file`, when it is a list. */
  line?: number;
}

export interface Decoded {
  pixels: Uint8Array;
  labels: Int32Array;
  sources: string[];
  skipped: SkippedItem[];
}

export function where(file: string, line?: number): string {
  return line === undefined ? file : `${file}:${line}`;
}

/** Decodes every item to [n, S, S, 3] (S = cacheSize) in item order, `concurrency` at a time. */
export async function decodeImages(items: readonly DecodeItem[], o: ResolvedLoadOptions, what: string): Promise<Decoded> {
  const S = o.cacheSize;
  const frame = S * S * 3;
  const pixels = allocateCache(items.length, S, 3, what);
  const ok = new Uint8Array(items.length);
  const skipped: { index: number; item: SkippedItem }[] = [];
  let next = 0;
  let failure: Error | null = null;

  const decodeOne = async (i: number): Promise<void> => {
    const item = items[i];
    try {
      const { data, info } = await sharp(item.path, { failOn: o.failOn })
        .rotate()
        .flatten({ background: o.background })
        .toColourspace('srgb')
        .resize(S, S, { fit: 'fill', kernel: 'cubic', fastShrinkOnLoad: false })
        .raw({ depth: 'uchar' })
        .toBuffer({ resolveWithObject: true });
      if (info.width !== S || info.height !== S || info.channels !== 3 || data.length !== frame)
        throw new Error(`decoded to ${info.width}×${info.height}×${info.channels}, expected ${S}×${S}×3`);
      pixels.set(data, i * frame);
      ok[i] = 1;
    } catch (cause) {
      const message = (cause as Error).message.split('\n')[0];
      const listed = item.path !== item.file;
      if (o.onError === 'skip') {
        const entry: SkippedItem = { file: item.file, reason: `cannot decode image: ${message}` };
        if (item.line !== undefined) entry.line = item.line;
        if (listed) entry.image = item.path;
        skipped.push({ index: i, item: entry });
      } else if (!failure) {
        const head = listed ? `${where(item.file, item.line)}: cannot decode image ${item.path}` : `${item.file}: cannot decode image`;
        failure = new FormatError(`${head}: ${message}`, { file: item.file, cause });
      }
    }
  };

  const worker = async (): Promise<void> => {
    while (!failure && next < items.length) await decodeOne(next++);
  };
  await Promise.all(Array.from({ length: Math.min(o.concurrency, items.length) }, worker));
  if (failure) throw failure;

  // Close the gaps the skipped items left (memmove per kept image, no per-pixel work).
  let kept = 0;
  const labels = new Int32Array(items.length);
  const sources: string[] = [];
  for (let i = 0; i < items.length; i++) {
    if (!ok[i]) continue;
    if (kept !== i) pixels.copyWithin(kept * frame, i * frame, (i + 1) * frame);
    labels[kept] = items[i].label;
    sources.push(items[i].path);
    kept++;
  }
  skipped.sort((a, b) => a.index - b.index);
  return {
    pixels: kept === items.length ? pixels : pixels.subarray(0, kept * frame),
    labels: kept === items.length ? labels : labels.slice(0, kept),
    sources,
    skipped: skipped.map((s) => s.item),
  };
}

/** Image file extensions sharp can read here (bmp only where sharp's build has a loader). */
export function imageExtensions(): Set<string> {
  const out = new Set<string>();
  const fmt = sharp.format as unknown as Record<string, { input?: { file?: boolean } } | undefined>;
  const map: Record<string, string[]> = {
    jpeg: ['.jpg', '.jpeg'],
    png: ['.png'],
    webp: ['.webp'],
    gif: ['.gif'],
    tiff: ['.tif', '.tiff'],
    bmp: ['.bmp'],
  };
  for (const [format, exts] of Object.entries(map)) if (fmt[format]?.input?.file) for (const e of exts) out.add(e);
  return out;
}
