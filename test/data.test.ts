/**
 * The data pipeline: decoding (sharp), the three layouts, native batch assembly, augmentation,
 * Mixup, the loader's order and resume, and every kind of bad data. Images are generated here
 * with sharp into a temporary folder; only the PIL reference of the resamplers is a fixture.
 */
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

import test from 'ava';
import sharp from 'sharp';

import * as data from '../lib/data/index.js';
import { ArgumentError, BusyError, FormatError, OutOfRangeError } from '../lib/errors.js';
import { native } from '../lib/native.js';

const here = path.dirname(fileURLToPath(import.meta.url));
let tmp = '';

const f32 = Math.fround;
/** What the native code computes for a byte: (v / 255 - mean) / std in float32, as torchvision. */
function norm(v: number, c: number, mean: readonly number[] = data.IMAGENET_MEAN, std: readonly number[] = data.IMAGENET_STD): number {
  return f32(f32(f32(v / 255) - f32(mean[c])) / f32(std[c]));
}

/** Value of channel c at (y, x) of image b in a [B, 3, S, S] array. */
function at(a: Float32Array, S: number, b: number, c: number, y: number, x: number): number {
  return a[((b * 3 + c) * S + y) * S + x];
}

async function solid(file: string, w: number, h: number, rgb: [number, number, number]): Promise<void> {
  await sharp({ create: { width: w, height: h, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } }).toFile(file);
}

/** An RGB image from a function of (x, y). */
async function painted(file: string, w: number, h: number, px: (x: number, y: number) => number[], meta?: { orientation: number }) {
  const raw = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) raw.set(px(x, y), (y * w + x) * 3);
  let s = sharp(raw, { raw: { width: w, height: h, channels: 3 } });
  if (meta) s = s.withMetadata(meta);
  await s.toFile(file);
}

function idxFile(dims: number[], bytes: ArrayLike<number>): Buffer {
  const header = Buffer.alloc(4 + 4 * dims.length);
  header[2] = 0x08;
  header[3] = dims.length;
  dims.forEach((d, i) => header.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([header, Buffer.from(Array.from(bytes))]);
}

test.before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'repadapter-data-'));
  const img = path.join(tmp, 'img');
  await mkdir(img);
  await solid(path.join(img, 'solid.png'), 8, 8, [200, 100, 50]);
  await painted(path.join(img, 'split.png'), 8, 8, (x) => (x < 4 ? [255, 0, 0] : [0, 0, 255]));
  await sharp(Buffer.alloc(64, 128), { raw: { width: 8, height: 8, channels: 1 } }).png().toFile(path.join(img, 'grey.png'));
  await solid(path.join(img, 'solid.jpg'), 8, 8, [200, 100, 50]);
  await sharp({ create: { width: 8, height: 8, channels: 3, background: { r: 200, g: 100, b: 50 } } })
    .toColourspace('cmyk')
    .jpeg({ quality: 100 })
    .toFile(path.join(img, 'cmyk.jpg'));
  // RGBA: transparent white on the left, opaque green on the right.
  const rgba = Buffer.alloc(8 * 8 * 4);
  for (let y = 0; y < 8; y++)
    for (let x = 0; x < 8; x++) rgba.set(x < 4 ? [255, 255, 255, 0] : [0, 255, 0, 255], (y * 8 + x) * 4);
  await sharp(rgba, { raw: { width: 8, height: 8, channels: 4 } }).png().toFile(path.join(img, 'rgba.png'));
  // 4 wide, 2 high: top row blue, bottom row red; EXIF orientation 6 (rotate 90° clockwise)
  // makes it 2 wide, 4 high: left column red, right column blue.
  await painted(path.join(img, 'orient.png'), 4, 2, (_x, y) => (y === 0 ? [0, 0, 255] : [255, 0, 0]), { orientation: 6 });
  await writeFile(path.join(img, 'corrupt.png'), Buffer.from('this is not a png'));
  const jpeg = await readFile(path.join(img, 'solid.jpg'));
  await writeFile(path.join(img, 'truncated.jpg'), jpeg.subarray(0, jpeg.length >> 1));
});

test.after.always(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

// ---- VTAB layout and decoding ------------------------------------------------------------------

async function vtabTask(name: string, lists: Record<string, string>): Promise<string> {
  const dir = path.join(tmp, 'vtab', name);
  await mkdir(path.join(dir, 'images'), { recursive: true });
  for (const f of ['solid.png', 'split.png', 'grey.png', 'cmyk.jpg', 'rgba.png', 'orient.png', 'corrupt.png', 'truncated.jpg', 'solid.jpg'])
    await writeFile(path.join(dir, 'images', f), await readFile(path.join(tmp, 'img', f)));
  for (const [split, text] of Object.entries(lists)) await writeFile(path.join(dir, `${split}.txt`), text);
  return dir;
}

test('vtab: decodes every kind of image to exact normalized RGB values', async (t) => {
  const dir = await vtabTask('cifar', {
    train800: 'images/solid.png 3\r\nimages/split.png 7\n\nimages/grey.png 0\nimages/rgba.png 99\nimages/orient.png 5\nimages/cmyk.jpg 1\n',
  });
  const ds = await data.vtab(dir, 'train800', { imageSize: 8 });
  t.is(ds.length, 6);
  t.is(ds.numClasses, 100); // cifar, from VTAB_TASKS
  t.deepEqual(Array.from(ds.labels), [3, 7, 0, 99, 5, 1]);
  t.deepEqual(ds.shape, [6, 8, 8, 3]);
  t.is(ds.name, 'cifar/train800');
  t.is(ds.sources[0], path.join(dir, 'images', 'solid.png'));

  const { images, labels } = ds.batch([0, 1, 2, 3, 4, 5]);
  t.deepEqual(images.shape, [6, 3, 8, 8]);
  t.deepEqual(Array.from(labels), [3, 7, 0, 99, 5, 1]);
  const a = images.toArray();
  images.dispose();
  // solid colour → the same normalized value everywhere
  for (let c = 0; c < 3; c++) for (const [y, x] of [[0, 0], [7, 7], [3, 5]]) t.is(at(a, 8, 0, c, y, x), norm([200, 100, 50][c], c));
  // left red, right blue
  t.is(at(a, 8, 1, 0, 4, 0), norm(255, 0));
  t.is(at(a, 8, 1, 2, 4, 0), norm(0, 2));
  t.is(at(a, 8, 1, 0, 4, 7), norm(0, 0));
  t.is(at(a, 8, 1, 2, 4, 7), norm(255, 2));
  // greyscale → three equal channels
  for (let c = 0; c < 3; c++) t.is(at(a, 8, 2, c, 2, 2), norm(128, c));
  // RGBA: transparent pixels composited onto black, opaque green kept
  for (let c = 0; c < 3; c++) t.is(at(a, 8, 3, c, 0, 0), norm(0, c));
  t.is(at(a, 8, 3, 1, 0, 7), norm(255, 1));
  // EXIF orientation 6 applied before the resize: red on the left, blue on the right, top to bottom
  const px = (y: number, x: number) => [0, 1, 2].map((c) => Math.round((at(a, 8, 4, c, y, x) * data.IMAGENET_STD[c] + data.IMAGENET_MEAN[c]) * 255));
  for (const y of [0, 7]) {
    t.true(px(y, 0)[0] > 200 && px(y, 0)[2] < 50, `left at row ${y}: ${px(y, 0)}`);
    t.true(px(y, 7)[2] > 200 && px(y, 7)[0] < 50, `right at row ${y}: ${px(y, 7)}`);
  }
  // CMYK JPEG → sRGB, near the colour it was made from
  const cmyk = [0, 1, 2].map((c) => (at(a, 8, 5, c, 4, 4) * data.IMAGENET_STD[c] + data.IMAGENET_MEAN[c]) * 255);
  cmyk.forEach((v, c) => t.true(Math.abs(v - [200, 100, 50][c]) < 30, `CMYK channel ${c}: ${v}`));
});

test('vtab: resizes once to the cache size, root + task, limit, custom numClasses', async (t) => {
  const root = path.join(tmp, 'vtab');
  await vtabTask('mytask', { test: 'images/solid.png 1\nimages/split.png 0\nimages/grey.png 1\n' });
  const ds = await data.vtab(root, 'test', { task: 'mytask', imageSize: 16, limit: 2 });
  t.is(ds.length, 2);
  t.is(ds.numClasses, 2); // not a VTAB task name: the largest label + 1
  t.deepEqual(ds.shape, [2, 16, 16, 3]);
  const { images } = ds.batch([0]);
  const a = images.toArray();
  images.dispose();
  for (let c = 0; c < 3; c++) t.is(at(a, 16, 0, c, 9, 3), norm([200, 100, 50][c], c)); // a solid stays solid
  const small = await data.vtab(root, 'test', { task: 'mytask', imageSize: 8, cacheSize: 4 });
  t.deepEqual(small.shape, [3, 4, 4, 3]);
  const b = small.batch([1]);
  t.deepEqual(b.images.shape, [1, 3, 8, 8]); // resampled per batch from the 4×4 cache
  b.images.dispose();
});

test('vtab: bad data errors name the file and line', async (t) => {
  const dir = await vtabTask('dtd', {
    train800: 'images/solid.png 1\nimages/missing.png 2\n',
    val200: 'images/solid.png 1\nimages/corrupt.png 2\n',
    train800val200: 'images/solid.png 1\nimages/truncated.jpg 0\n',
    test: 'images/solid.png 1\n\nimages/split.png 47\n',
    'bad-label': 'images/solid.png 1.5\n',
    'bad-line': 'images/solid.png 1\nimages/split.png\n',
    'negative': 'images/solid.png -1\n',
    empty: '\n  \n',
  });
  const list = (s: string) => path.join(dir, `${s}.txt`).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  await t.throwsAsync(data.vtab(dir, 'train800', { imageSize: 8 }), {
    instanceOf: FormatError,
    message: new RegExp(`^${list('train800')}:2: cannot decode image .*missing\\.png: Input file is missing`),
  });
  await t.throwsAsync(data.vtab(dir, 'val200', { imageSize: 8 }), {
    instanceOf: FormatError,
    message: new RegExp(`^${list('val200')}:2: cannot decode image .*corrupt\\.png: .*unsupported image format`),
  });
  await t.throwsAsync(data.vtab(dir, 'train800val200', { imageSize: 8 }), {
    instanceOf: FormatError,
    message: new RegExp(`^${list('train800val200')}:2: cannot decode image .*truncated\\.jpg`),
  });
  const range = await t.throwsAsync(data.vtab(dir, 'test', { imageSize: 8 }), {
    instanceOf: FormatError,
    message: new RegExp(`^${list('test')}:3: label 47 is out of range \\[0, 47\\)`), // dtd has 47 classes
  });
  t.is((range as FormatError).file, path.join(dir, 'test.txt'));
  await t.throwsAsync(data.vtab(dir, 'bad-label', { imageSize: 8 }), {
    instanceOf: FormatError,
    message: new RegExp(`^${list('bad-label')}:1: expected an integer label, got "1\\.5"`),
  });
  await t.throwsAsync(data.vtab(dir, 'bad-line', { imageSize: 8 }), {
    instanceOf: FormatError,
    message: new RegExp(`^${list('bad-line')}:2: expected 'relative/path label', got "images/split.png"`),
  });
  await t.throwsAsync(data.vtab(dir, 'negative', { imageSize: 8 }), { instanceOf: FormatError, message: /negative\.txt:1: label -1 is out of range/ });
  await t.throwsAsync(data.vtab(dir, 'empty', { imageSize: 8 }), { instanceOf: FormatError, message: /empty\.txt: the split lists no images/ });
  await t.throwsAsync(data.vtab(dir, 'nosuchsplit', { imageSize: 8 }), {
    instanceOf: FormatError,
    message: /nosuchsplit\.txt: cannot read the list of split 'nosuchsplit': ENOENT \(the VTAB-1k splits are/,
  });
  await t.throwsAsync(data.vtab(path.join(dir, 'nope'), 'test'), { instanceOf: ArgumentError, message: /existing VTAB task folder/ });
  await t.throwsAsync(data.vtab(dir, '../x'), { instanceOf: ArgumentError });
  await t.throwsAsync(data.vtab(dir, 'test', { imageSize: 0 }), { instanceOf: ArgumentError, message: /expected an integer in \[1, 8192\] for imageSize, got 0/ });
  await t.throwsAsync(data.vtab(dir, 'test', { onError: 'ignore' as 'skip' }), { instanceOf: ArgumentError });
});

test('vtab: skip mode leaves bad items out and reports each one', async (t) => {
  const dir = await vtabTask('svhn', {
    train800: [
      'images/solid.png 1',
      'images/missing.png 2',
      'images/split.png 3.5',
      'images/corrupt.png 4',
      'just-one-field',
      'images/grey.png 10',
      'images/split.png 9',
    ].join('\n'),
    val200: 'images/missing.png 1\nimages/x.png 99\n',
  });
  const ds = await data.vtab(dir, 'train800', { imageSize: 8, onError: 'skip' });
  t.deepEqual(Array.from(ds.labels), [1, 9]);
  t.is(ds.length, 2);
  t.deepEqual(
    ds.skipped.map((s) => [s.line, s.image ? path.basename(s.image) : undefined, s.reason.split(':')[0]]),
    [
      [2, 'missing.png', 'cannot decode image'],
      [3, undefined, 'expected an integer label, got "3.5"'],
      [4, 'corrupt.png', 'cannot decode image'],
      [5, undefined, `expected 'relative/path label', got "just-one-field"`],
      [6, undefined, 'label 10 is out of range [0, 10)'],
    ],
  );
  t.true(ds.skipped.every((s) => s.file === path.join(dir, 'train800.txt')));
  // the split image is intact after the gap left by the skipped ones was closed
  const { images } = ds.batch([1]);
  t.is(at(images.toArray(), 8, 0, 0, 0, 0), norm(255, 0));
  images.dispose();
  await t.throwsAsync(data.vtab(dir, 'val200', { imageSize: 8, onError: 'skip' }), { instanceOf: FormatError, message: /val200\.txt: .*skipped/ });
});

// ---- ImageFolder ---------------------------------------------------------------------------------

test('imageFolder: sorted classes, recursive files by extension, skip report', async (t) => {
  const root = path.join(tmp, 'folder');
  const copy = async (from: string, to: string) => {
    await mkdir(path.dirname(path.join(root, to)), { recursive: true });
    await writeFile(path.join(root, to), await readFile(path.join(tmp, 'img', from)));
  };
  await copy('split.png', 'zebra/b.PNG');
  await copy('solid.png', 'zebra/a.png');
  await copy('grey.png', 'ant/deep/er/c.png');
  await copy('solid.jpg', 'ant/d.jpeg');
  await sharp(await readFile(path.join(tmp, 'img', 'split.png'))).webp({ lossless: true }).toFile(path.join(root, 'ant', 'e.webp'));
  await sharp(await readFile(path.join(tmp, 'img', 'solid.png'))).tiff().toFile(path.join(root, 'zebra', 'f.TIFF'));
  await sharp(await readFile(path.join(tmp, 'img', 'split.png'))).gif().toFile(path.join(root, 'zebra', 'g.gif'));
  await writeFile(path.join(root, 'ant', 'notes.txt'), 'not an image');
  await writeFile(path.join(root, 'README'), 'not a class');
  const ds = await data.imageFolder(root, { imageSize: 8 });
  t.deepEqual(ds.classes, ['ant', 'zebra']);
  t.is(ds.numClasses, 2);
  t.deepEqual(
    ds.sources.map((s) => path.relative(root, s)),
    [
      path.join('ant', 'd.jpeg'),
      path.join('ant', 'deep', 'er', 'c.png'),
      path.join('ant', 'e.webp'),
      path.join('zebra', 'a.png'),
      path.join('zebra', 'b.PNG'),
      path.join('zebra', 'f.TIFF'),
      path.join('zebra', 'g.gif'),
    ],
  );
  t.deepEqual(Array.from(ds.labels), [0, 0, 0, 1, 1, 1, 1]);
  const { images } = ds.batch([2, 4, 5, 6]);
  const a = images.toArray();
  images.dispose();
  for (const b of [0, 1, 3]) {
    t.is(at(a, 8, b, 0, 0, 0), norm(255, 0), `image ${b}: red on the left`);
    t.is(at(a, 8, b, 2, 0, 7), norm(255, 2), `image ${b}: blue on the right`);
  }
  for (let c = 0; c < 3; c++) t.is(at(a, 8, 2, c, 5, 5), norm([200, 100, 50][c], c)); // TIFF

  // the test split of the same classes, one of them empty or missing
  await copy('corrupt.png', 'broken/zebra/x.png');
  await copy('solid.png', 'broken/zebra/y.png');
  await mkdir(path.join(root, 'broken', 'ant'), { recursive: true });
  await t.throwsAsync(data.imageFolder(path.join(root, 'broken'), { classes: ds.classes, imageSize: 8 }), {
    instanceOf: FormatError,
    message: /broken\/ant: class 'ant' has no images/,
  });
  const skipped = await data.imageFolder(path.join(root, 'broken'), { classes: ds.classes, imageSize: 8, onError: 'skip' });
  t.deepEqual(Array.from(skipped.labels), [1]);
  t.deepEqual(
    skipped.skipped.map((s) => [path.relative(root, s.file), s.reason.split(':')[0]]),
    [
      [path.join('broken', 'ant'), "class 'ant' has no images (.jpg, .jpeg, .png, .webp, .gif, .tif, .tiff)"],
      [path.join('broken', 'zebra', 'x.png'), 'cannot decode image'],
    ],
  );
  await t.throwsAsync(data.imageFolder(path.join(root, 'broken', 'zebra'), { imageSize: 8 }), {
    instanceOf: FormatError,
    message: /no class folders/,
  });
  await t.throwsAsync(data.imageFolder(path.join(root, 'missing')), { instanceOf: ArgumentError });
});

// ---- IDX -------------------------------------------------------------------------------------------

test('idx: plain and gzipped files, greyscale replicated, exact pixels, bicubic resize', async (t) => {
  const dir = path.join(tmp, 'idx');
  await mkdir(dir, { recursive: true });
  const n = 5;
  const pixels = Array.from({ length: n * 16 }, (_, i) => (i * 7) % 256);
  const labels = [3, 1, 4, 1, 5];
  await writeFile(path.join(dir, 'train-images-idx3-ubyte'), idxFile([n, 4, 4], pixels));
  await writeFile(path.join(dir, 'train-labels-idx1-ubyte'), idxFile([n], labels));
  await writeFile(path.join(dir, 't10k-images-idx3-ubyte.gz'), gzipSync(idxFile([n, 4, 4], pixels)));
  await writeFile(path.join(dir, 't10k-labels-idx1-ubyte.gz'), gzipSync(idxFile([n], labels)));

  const plain = await data.idx(path.join(dir, 'train-images-idx3-ubyte'), path.join(dir, 'train-labels-idx1-ubyte'), { imageSize: 4 });
  const gz = await data.mnist(dir, 'test', { imageSize: 4 });
  for (const ds of [plain, gz]) {
    t.deepEqual(ds.shape, [5, 4, 4, 1]);
    t.deepEqual(Array.from(ds.pixels), pixels);
    t.deepEqual(Array.from(ds.labels), labels);
  }
  t.is(plain.numClasses, 6); // the largest label + 1
  t.is(gz.numClasses, 10); // mnist(): 10
  const { images } = gz.batch([2]);
  const a = images.toArray();
  images.dispose();
  for (let c = 0; c < 3; c++) t.is(at(a, 4, 0, c, 1, 3), norm(pixels[2 * 16 + 1 * 4 + 3], c));

  // resized once, natively, with PIL's bicubic
  const big = await data.mnist(dir, 'train', { imageSize: 9 });
  t.deepEqual(big.shape, [5, 9, 9, 1]);
  const ref = new Uint8Array(5 * 81);
  await native.dataResizeAsync(Uint8Array.from(pixels), [5, 4, 4, 1], ref, [9, 9], 'bicubic');
  t.deepEqual(big.pixels, ref);
});

test('idx: bad files and labels', async (t) => {
  const dir = path.join(tmp, 'idx-bad');
  await mkdir(dir, { recursive: true });
  const p = (name: string) => path.join(dir, name);
  const images = idxFile([3, 2, 2], new Array(12).fill(9));
  await writeFile(p('images'), images);
  await writeFile(p('labels'), idxFile([3], [0, 12, 1]));
  await writeFile(p('labels2'), idxFile([2], [0, 1]));
  await writeFile(p('truncated'), images.subarray(0, images.length - 1));
  await writeFile(p('trailing'), Buffer.concat([images, Buffer.from([1])]));
  await writeFile(p('magic'), Buffer.concat([Buffer.from([0x50, 0x4b, 3, 4]), images.subarray(4)]));
  await writeFile(p('int32'), Buffer.concat([Buffer.from([0, 0, 0x0c, 3]), images.subarray(4)]));
  await writeFile(p('badgz'), Buffer.from([0x1f, 0x8b, 8, 0, 1, 2, 3]));

  await t.throwsAsync(data.idx(p('images'), p('labels'), { numClasses: 10 }), {
    instanceOf: FormatError,
    message: new RegExp(`^${p('labels')}: item 1: label 12 is out of range \\[0, 10\\)`),
  });
  const skipped = await data.idx(p('images'), p('labels'), { numClasses: 10, onError: 'skip', imageSize: 2 });
  t.deepEqual(Array.from(skipped.labels), [0, 1]);
  t.deepEqual(skipped.sources, [`${p('images')}#0`, `${p('images')}#2`]);
  t.deepEqual(skipped.skipped, [{ file: p('labels'), item: 1, reason: 'label 12 is out of range [0, 10)' }]);
  await t.throwsAsync(data.idx(p('images'), p('labels2')), { instanceOf: FormatError, message: /labels2: 2 labels for the 3 images/ });
  await t.throwsAsync(data.idx(p('truncated'), p('labels')), { instanceOf: FormatError, message: /truncated: truncated: 11 data bytes, the header \[3, 2, 2\] promises 12/ });
  await t.throwsAsync(data.idx(p('trailing'), p('labels')), { instanceOf: FormatError, message: /trailing: 1 unexpected bytes/ });
  await t.throwsAsync(data.idx(p('magic'), p('labels')), { instanceOf: FormatError, message: /magic: not an IDX file \(magic 0x504b0304/ });
  await t.throwsAsync(data.idx(p('int32'), p('labels')), { instanceOf: FormatError, message: /int32: IDX element type 0x0c \(int32\) is not supported/ });
  await t.throwsAsync(data.idx(p('badgz'), p('labels')), { instanceOf: FormatError, message: /badgz: corrupt gzip data/ });
  const missing = await t.throwsAsync(data.idx(p('nope'), p('labels')), { instanceOf: FormatError, message: /nope: cannot read: ENOENT/ });
  t.is((missing as FormatError).file, p('nope'));
  await t.throwsAsync(data.idx(p('labels'), p('labels')), { instanceOf: FormatError, message: /expected an IDX file of 3 dimensions, got 1/ });
  await t.throwsAsync(data.mnist(dir, 'train'), { instanceOf: ArgumentError, message: /looked for train-images-idx3-ubyte\.gz/ });
});

test('idx: the Fashion-MNIST files of Debian\'s dataset-fashion-mnist, where installed', async (t) => {
  const present = await stat(path.join(data.FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz')).then(() => true, () => false);
  if (!present) {
    t.log(`${data.FASHION_MNIST_DIR} not installed (apt-get install -y dataset-fashion-mnist): skipped`);
    t.pass();
    return;
  }
  const ds = await data.mnist(data.FASHION_MNIST_DIR, 'test', { imageSize: 28, limit: 100, classes: data.FASHION_MNIST_CLASSES });
  t.deepEqual(ds.shape, [100, 28, 28, 1]);
  t.is(ds.numClasses, 10);
  t.is(ds.classes?.[9], 'Ankle boot');
  t.true(ds.labels.every((l) => l >= 0 && l < 10));
  t.is(ds.labels[0], 9); // the first t10k item is an ankle boot
});

// ---- native resamplers against PIL -------------------------------------------------------------------

test('native resize matches PIL: bicubic exactly, bilinear within one level', async (t) => {
  const ref = JSON.parse(await readFile(path.join(here, 'fixtures', 'data', 'pil_resize.json'), 'utf8')) as {
    width: number;
    height: number;
    src: number[];
    resized: { filter: 'bicubic' | 'bilinear'; width: number; height: number; data: number[] }[];
  };
  const src = Uint8Array.from(ref.src);
  for (const r of ref.resized) {
    const out = new Uint8Array(r.width * r.height * 3);
    await native.dataResizeAsync(src, [1, ref.height, ref.width, 3], out, [r.height, r.width], r.filter);
    const diff = Math.max(...Array.from(out, (v, i) => Math.abs(v - r.data[i])));
    t.true(diff <= (r.filter === 'bicubic' ? 0 : 1), `${r.filter} ${r.width}×${r.height}: max difference ${diff}`);
    if (r.filter === 'bilinear' && r.width === r.height) {
      // the batch path resamples with the same bilinear filter (mean 0, std 1: values are v / 255)
      const b = native.dataBatch(src, [1, ref.height, ref.width, 3], Int32Array.of(0), null, { size: r.width, mean: [0, 0, 0], std: [1, 1, 1] });
      const a = b.images.toArray();
      b.images.dispose();
      for (let y = 0; y < r.height; y++)
        for (let x = 0; x < r.width; x++)
          for (let c = 0; c < 3; c++) t.is(Math.round(at(a, r.width, 0, c, y, x) * 255), out[(y * r.width + x) * 3 + c]);
    }
  }
});

// ---- the loader --------------------------------------------------------------------------------------

/** n images of S×S where every pixel of image i is i * 10 + channel. */
function numbered(n: number, S = 4, numClasses = 5): data.ImageDataset {
  const frame = S * S * 3;
  const px = new Uint8Array(n * frame);
  for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) for (let p = 0; p < S * S; p++) px[i * frame + p * 3 + c] = i * 10 + c;
  return data.fromPixels(px, Array.from({ length: n }, (_, i) => i % numClasses), { size: S, channels: 3, numClasses });
}

async function collect(l: data.DataLoader, stopAfter = Infinity): Promise<data.Batch[]> {
  const out: data.Batch[] = [];
  for await (const b of l) {
    out.push(b);
    if (out.length >= stopAfter) break;
  }
  return out;
}

test('loader: dataset order, batch contents, dropLast', async (t) => {
  const ds = numbered(10);
  const l = data.loader(ds, { batchSize: 4 });
  t.is(l.length, 3);
  const batches = await collect(l);
  t.deepEqual(batches.map((b) => Array.from(b.indices)), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]);
  t.deepEqual(Array.from(batches[2].labels), [3, 4]);
  t.deepEqual(batches[2].images.shape, [2, 3, 4, 4]);
  const a = batches[1].images.toArray();
  for (let b = 0; b < 4; b++) for (let c = 0; c < 3; c++) t.is(at(a, 4, b, c, 3, 1), norm((4 + b) * 10 + c, c));
  t.true(batches[1].softTargets === undefined);
  batches.forEach((b) => b.dispose());
  t.true(batches[0].images.disposed);
  t.deepEqual(l.state(), { epoch: 1, position: 0 });

  const dropped = data.loader(ds, { batchSize: 4, dropLast: true });
  t.is(dropped.length, 2);
  const d = await collect(dropped);
  t.deepEqual(d.map((b) => b.indices.length), [4, 4]);
  d.forEach((b) => b.dispose());
  t.throws(() => data.loader(ds, { batchSize: 11, dropLast: true }), { instanceOf: ArgumentError });
  t.throws(() => data.loader(ds, { batchSize: 0 }), { instanceOf: ArgumentError, message: /expected a positive integer for batchSize, got 0/ });
  t.throws(() => data.loader(ds, { batchSize: 2, seed: -1 }), { instanceOf: ArgumentError });
  t.throws(() => data.loader(ds, { batchSize: 2, normalize: { mean: [0, 0, 0], std: [1, 0, 1] } }), { instanceOf: ArgumentError });
  t.throws(() => data.loader(ds, { batchSize: 2, augment: { flip: 2 } }), { instanceOf: ArgumentError, message: /augment\.flip/ });
  t.throws(() => data.loader(ds, { batchSize: 2, mixup: { mixupAlpha: 0 } }), { instanceOf: ArgumentError });
});

test('loader: shuffling is deterministic per seed and differs per epoch', async (t) => {
  const ds = numbered(50);
  const epochOrder = async (seed: number, epochs: number) => {
    const l = data.loader(ds, { batchSize: 8, shuffle: true, seed });
    const out: number[][] = [];
    for (let e = 0; e < epochs; e++) {
      const bs = await collect(l);
      out.push(bs.flatMap((b) => Array.from(b.indices)));
      bs.forEach((b) => b.dispose());
    }
    return out;
  };
  const [a0, a1] = await epochOrder(7, 2);
  const [b0, b1] = await epochOrder(7, 2);
  const [c0] = await epochOrder(8, 1);
  t.deepEqual(a0, b0);
  t.deepEqual(a1, b1);
  t.notDeepEqual(a0, a1);
  t.notDeepEqual(a0, c0);
  for (const o of [a0, a1, c0]) t.deepEqual([...o].sort((x, y) => x - y), Array.from({ length: 50 }, (_, i) => i));
  t.deepEqual(Array.from(native.dataPermutation(50, 7, 1)), a1);
});

test('loader: resuming from a saved state yields exactly the remaining batches', async (t) => {
  const ds = numbered(21, 8);
  const opts: data.LoaderOptions = { batchSize: 4, shuffle: true, seed: 3, augment: true, mixup: { cutmixAlpha: 1, mixupAlpha: 0.8 } };
  const first = data.loader(ds, opts);
  (await collect(first)).forEach((b) => b.dispose()); // epoch 0
  const seen = await collect(first, 2); // two batches of epoch 1, then stop (e.g. a checkpoint)
  seen.forEach((b) => b.dispose());
  const saved = JSON.parse(JSON.stringify(first.state())) as data.LoaderState;
  t.deepEqual(saved, { epoch: 1, position: 2 });
  const rest = [...(await collect(first)), ...(await collect(first))]; // rest of epoch 1, all of epoch 2

  const resumed = data.loader(ds, { ...opts, state: saved });
  const again = [...(await collect(resumed)), ...(await collect(resumed))];
  t.is(again.length, rest.length);
  t.is(rest.length, 4 + 6);
  for (let i = 0; i < rest.length; i++) {
    t.deepEqual(again[i].indices, rest[i].indices);
    t.deepEqual([again[i].epoch, again[i].index], [rest[i].epoch, rest[i].index]);
    t.deepEqual(again[i].images.toArray(), rest[i].images.toArray());
    t.deepEqual(again[i].softTargets, rest[i].softTargets);
  }
  // the same batch on demand
  const direct = await resumed.batchAt(1, 3);
  t.deepEqual(direct.images.toArray(), rest[1].images.toArray());
  direct.dispose();
  [...rest, ...again].forEach((b) => b.dispose());
  t.throws(() => resumed.restore({ epoch: 0, position: 7 }), { instanceOf: ArgumentError });
});

test('loader: break keeps the position; one iteration at a time', async (t) => {
  const l = data.loader(numbered(10), { batchSize: 2 });
  const a = await collect(l, 2);
  t.deepEqual(l.state(), { epoch: 0, position: 2 });
  const b = await collect(l);
  t.deepEqual(b.map((x) => x.index), [2, 3, 4]);
  t.deepEqual(l.state(), { epoch: 1, position: 0 });
  [...a, ...b].forEach((x) => x.dispose());
  const it = l[Symbol.asyncIterator]();
  const first = await it.next();
  await t.throwsAsync(async () => {
    for await (const x of l) x.dispose();
  }, { instanceOf: BusyError });
  if (!first.done) first.value.dispose();
  await it.return(undefined);
  t.deepEqual(l.state(), { epoch: 1, position: 1 });
});

test('augmentation: flips, crops, reproducible from (seed, epoch, index)', async (t) => {
  // left half red, right half blue
  const S = 8;
  const px = new Uint8Array(2 * S * S * 3);
  for (let i = 0; i < 2; i++)
    for (let y = 0; y < S; y++) for (let x = 0; x < S; x++) px.set(x < 4 ? [255, 0, 0] : [0, 0, 255], ((i * S + y) * S + x) * 3);
  const ds = data.fromPixels(px, [0, 1], { size: S, channels: 3 });
  const one = async (opts: Partial<data.LoaderOptions>, epoch = 0) => {
    const l = data.loader(ds, { batchSize: 2, ...opts });
    const b = await l.batchAt(epoch, 0);
    const a = b.images.toArray();
    b.dispose();
    return a;
  };
  const plain = await one({});
  t.is(at(plain, S, 0, 0, 0, 0), norm(255, 0));
  const flipped = await one({ augment: { flip: 1 } });
  t.is(at(flipped, S, 0, 0, 0, 0), norm(0, 0));
  t.is(at(flipped, S, 0, 2, 0, 0), norm(255, 2));
  t.is(at(flipped, S, 1, 2, 5, 1), norm(255, 2));
  // a crop of the whole image (scale 1, ratio 1) is the identity
  t.deepEqual(await one({ augment: { randomResizedCrop: { scale: [1, 1], ratio: [1, 1] } } }), plain);
  // timm's RandomResizedCrop: the same for the same (seed, epoch, index), different otherwise
  const rrc = { augment: true, seed: 5 };
  const e0 = await one(rrc, 0);
  t.deepEqual(await one(rrc, 0), e0);
  t.notDeepEqual(await one(rrc, 1), e0);
  t.notDeepEqual(await one({ ...rrc, seed: 6 }, 0), e0);
  t.notDeepEqual(e0, plain);
  // every value is still a normalized pixel of red or blue or a blend of them
  for (let i = 0; i < e0.length; i += 7) t.true(Number.isFinite(e0[i]));
});

test('mixup: soft targets are the mix of smoothed one-hot rows; images mix with the flipped batch', async (t) => {
  const C = 5;
  const ds = numbered(6, 4, C);
  const base = await data.loader(ds, { batchSize: 6, seed: 9 }).batchAt(0, 0);
  const x = base.images.toArray();
  base.dispose();
  let sawMix = false;
  let sawCut = false;
  for (const [mix, epoch] of [[{ mixupAlpha: 1, labelSmoothing: 0.1 }, 0], [{ mixupAlpha: 0, cutmixAlpha: 1, labelSmoothing: 0.2 }, 1]] as const) {
    const l = data.loader(ds, { batchSize: 6, seed: 9, mixup: mix });
    const b = await l.batchAt(epoch, 0);
    const B = b.labels.length;
    const lam = b.lam!;
    const soft = b.softTargets!;
    t.is(soft.length, B * C);
    t.true(lam > 0 && lam < 1, `lam ${lam}`);
    const off = mix.labelSmoothing / C;
    const on = 1 - mix.labelSmoothing + off;
    for (let i = 0; i < B; i++) {
      let sum = 0;
      for (let k = 0; k < C; k++) {
        const y1 = k === b.labels[i] ? on : off;
        const y2 = k === b.labels[B - 1 - i] ? on : off;
        t.true(Math.abs(soft[i * C + k] - (y1 * lam + y2 * (1 - lam))) < 1e-6);
        sum += soft[i * C + k];
      }
      t.true(Math.abs(sum - 1) < 1e-6, `row ${i} sums to ${sum}`);
    }
    const m = b.images.toArray();
    b.dispose();
    const frame = 3 * 16;
    if (mix.mixupAlpha > 0) {
      for (let i = 0; i < B; i++)
        for (let k = 0; k < frame; k++) {
          const expectedValue = x[i * frame + k] * lam + x[(B - 1 - i) * frame + k] * (1 - lam);
          t.true(Math.abs(m[i * frame + k] - expectedValue) < 1e-5);
        }
      sawMix = true;
    } else {
      // cutmix: each pixel is the sample's own or its partner's; lam is the own share
      for (let i = 0; i < B; i++) {
        let own = 0;
        for (let p = 0; p < 16; p++) {
          const v = m[i * frame + p];
          if (v === x[i * frame + p]) own++;
          else t.is(v, x[(B - 1 - i) * frame + p]);
        }
        t.is(own / 16, lam);
      }
      sawCut = true;
    }
  }
  t.true(sawMix && sawCut);
});

test('fromPixels and batch() validate their input', (t) => {
  const ds = numbered(3);
  t.throws(() => ds.batch([3]), { instanceOf: OutOfRangeError, message: /expected an integer in \[0, 3\) for indices\[0\], got 3/ });
  t.throws(() => ds.batch([]), { instanceOf: ArgumentError });
  t.throws(() => data.fromPixels(new Uint8Array(10), [0], { size: 2, channels: 3 }), { message: /expected 12 pixel bytes/ });
  t.throws(() => data.fromPixels(new Uint8Array(12), [4], { size: 2, channels: 3, numClasses: 3 }), { instanceOf: OutOfRangeError });
  t.throws(() => native.dataBatch(ds.pixels, ds.shape, Int32Array.of(0, 9), null, { size: 4 }), { message: /expected dataset indices in \[0, 3\)/ });
  t.deepEqual(Array.from(ds.image(1).subarray(0, 3)), [10, 11, 12]);
});
