/**
 * The demo: the whole RepAdapter story on real images, on a CPU, in a few minutes.
 *
 *  1. A small ViT is pretrained on one task — Fashion-MNIST's first five classes (T-shirt/top,
 *     trouser, pullover, dress, coat) — or loaded from the cache an earlier run wrote.
 *  2. The frozen backbone is adapted to a *different* task — the other five classes (sandal,
 *     shirt, sneaker, bag, ankle boot) — from 1000 labelled images, as in VTAB-1k, three ways:
 *     RepAdapter (adapters + head), a linear probe (head only) and full fine-tuning.
 *  3. The adapted model is folded and checked: the folded model must give the same logits, and
 *     run exactly as fast as the plain backbone.
 *
 * Data: Debian's dataset-fashion-mnist (`apt-get install -y dataset-fashion-mnist`).
 */
import { mkdir, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { ImageDataset } from './data/dataset.js';
import { FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, mnist } from './data/idx.js';
import { RepAdapterError } from './errors.js';
import { saveAdapters } from './io/adapters.js';
import { adamw } from './optim/optimizer.js';
import { cosine } from './optim/schedules.js';
import { Tensor } from './tensor.js';
import { Trainer } from './train/trainer.js';
import { ViT } from './vit.js';
import type { ViTOptions } from './config.js';

export interface DemoOptions {
  /** Folder with Fashion-MNIST's IDX files. */
  dataDir?: string;
  /** Where the pretrained backbone is cached between runs. */
  cacheDir?: string;
  /** Where the adapter file, folded model and plot go. */
  outDir?: string;
  /** Pretrain again even when a cached backbone exists. */
  fresh?: boolean;
  /** Precision of the adapted models' backbone Linears (pretraining is float32 either way). */
  dtype?: 'float32' | 'bf16';
  log?: (line: string) => void;
}

const BACKBONE: ViTOptions = { imageSize: 28, patchSize: 7, width: 96, depth: 6, heads: 4, mlpRatio: 2 };
const PRETRAIN = { classes: [0, 1, 2, 3, 4], epochs: 3, batch: 128, lr: 1e-3 };
const ADAPT = { classes: [5, 6, 7, 8, 9], perClass: 200, epochs: 20, batch: 50 };

/** The images whose label is in `classes`, relabelled 0…k−1, at most `perClass` of each. */
function subset(ds: ImageDataset, classes: readonly number[], perClass = Infinity): ImageDataset {
  const frame = ds.cacheSize * ds.cacheSize * ds.channels;
  const taken = new Map<number, number>();
  const keep: number[] = [];
  for (let i = 0; i < ds.length; i++) {
    const k = classes.indexOf(ds.labels[i]);
    if (k < 0 || (taken.get(k) ?? 0) >= perClass) continue;
    taken.set(k, (taken.get(k) ?? 0) + 1);
    keep.push(i);
  }
  const pixels = new Uint8Array(keep.length * frame);
  const labels = new Int32Array(keep.length);
  keep.forEach((i, j) => {
    pixels.set(ds.image(i), j * frame);
    labels[j] = classes.indexOf(ds.labels[i]);
  });
  return ImageDataset.fromPixels(pixels, labels, {
    size: ds.cacheSize,
    channels: ds.channels,
    imageSize: ds.imageSize,
    numClasses: classes.length,
    classes: classes.map((c) => FASHION_MNIST_CLASSES[c]),
  });
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Median milliseconds of an eval forward over `images`. */
function latency(model: ViT, images: Tensor, repeats: number): number {
  model.eval();
  model.forward(images).dispose();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    model.forward(images).dispose();
    times.push(performance.now() - t0);
  }
  return median(times);
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('   ')).join('\n');
}

export async function runDemo(options: DemoOptions = {}): Promise<void> {
  const log = options.log ?? ((line: string) => console.log(line));
  const dataDir = options.dataDir ?? FASHION_MNIST_DIR;
  const cacheDir = options.cacheDir ?? path.join(process.cwd(), '.cache', 'repadapter-demo');
  const outDir = options.outDir ?? path.join(process.cwd(), 'results', 'demo');
  if (!existsSync(dataDir))
    throw new RepAdapterError(
      `Fashion-MNIST not found in ${dataDir}. Install it with \`apt-get install -y dataset-fashion-mnist\` ` +
        'or pass the folder holding its IDX files.',
    );
  await mkdir(cacheDir, { recursive: true });
  await mkdir(outDir, { recursive: true });
  const started = performance.now();
  const seconds = () => ((performance.now() - started) / 1000).toFixed(0);
  log(`repadapter demo — ${os.cpus().length} CPU cores, data from ${dataDir}\n`);

  const trainAll = await mnist(dataDir, 'train', { imageSize: 28 });
  const testAll = await mnist(dataDir, 'test', { imageSize: 28 });
  const pretrainSet = subset(trainAll, PRETRAIN.classes);
  const adaptTrain = subset(trainAll, ADAPT.classes, ADAPT.perClass);
  const adaptTest = subset(testAll, ADAPT.classes);
  const names = (classes: number[]) => classes.map((c) => FASHION_MNIST_CLASSES[c]).join(', ');

  // ---- 1. the backbone --------------------------------------------------------------------------
  const backboneFile = path.join(cacheDir, 'backbone-fashion0-4.safetensors');
  using backbone = ViT.create({ ...BACKBONE, numClasses: PRETRAIN.classes.length, dropPath: 0.1, trainable: 'all' }, { seed: 1 });
  if (!options.fresh && existsSync(backboneFile)) {
    await backbone.load(backboneFile);
    log(`1. backbone: loaded from ${path.relative(process.cwd(), backboneFile)} (pretrained by an earlier run)`);
  } else {
    log(`1. pretraining a ViT (width ${BACKBONE.width}, depth ${BACKBONE.depth}, patch ${BACKBONE.patchSize}) on ${pretrainSet.length} images of: ${names(PRETRAIN.classes)}`);
    const trainer = new Trainer(backbone, {
      optimizer: adamw({ lr: PRETRAIN.lr, weightDecay: 0.05, noDecay: 'timm' }),
      schedule: cosine({ epochs: PRETRAIN.epochs, warmupEpochs: 1, lrMin: 1e-5, warmupLrInit: 1e-4 }),
    });
    await trainer.fit(pretrainSet, { epochs: PRETRAIN.epochs, batchSize: PRETRAIN.batch, seed: 1, labelSmoothing: 0.1, augment: { flip: 0.5 }, progress: 'lines', handleSignals: false });
    await backbone.save(backboneFile);
    log(`   saved to ${path.relative(process.cwd(), backboneFile)} (${seconds()} s so far)`);
  }
  const backboneWeights = backbone.stateDict();

  // ---- 2. three ways to adapt it -------------------------------------------------------------------
  log(`\n2. adapting to a new task: ${names(ADAPT.classes)} — ${adaptTrain.length} training images, ${adaptTest.length} test images`);
  if (options.dtype === 'bf16') {
    using probe = ViT.create(BACKBONE, { dtype: 'bf16' });
    log(`   in bf16 (the backbone's Linears; ${probe.bf16Native ? 'bf16 hardware' : 'emulated: this CPU has no bf16 dot products, so slower than float32'})`);
  }
  const methods = [
    { name: 'RepAdapter (attn, h=8, g=2)', trainable: 'adapters' as const, adapter: { placement: 'attn' as const, hidden: 8, groups: 2, scale: 1, dropout: 0.1 }, lr: 1e-3 },
    { name: 'linear probe', trainable: 'head' as const, adapter: null, lr: 1e-3 },
    { name: 'full fine-tuning', trainable: 'all' as const, adapter: null, lr: 2e-4 },
  ];
  const results: { name: string; trainable: number; total: number; top1: number; seconds: number }[] = [];
  let adapted: ViT | null = null;
  for (const m of methods) {
    const model = ViT.create({ ...BACKBONE, numClasses: ADAPT.classes.length, dropPath: 0.1, adapter: m.adapter, trainable: m.trainable }, { seed: 2, dtype: options.dtype ?? 'float32' });
    // The backbone's weights; the head is new (other classes) and the adapters start as identity.
    const weights = new Map([...backboneWeights].filter(([name]) => !name.startsWith('head.')));
    model.loadStateDict(weights, { strict: false });
    const t0 = performance.now();
    const trainer = new Trainer(model, {
      optimizer: adamw({ lr: m.lr, weightDecay: 1e-4 }),
      schedule: cosine({ epochs: ADAPT.epochs, warmupEpochs: 3, lrMin: 1e-5, warmupLrInit: 1e-6 }),
    });
    const fit = await trainer.fit(adaptTrain, {
      epochs: ADAPT.epochs, batchSize: ADAPT.batch, seed: 3, eval: adaptTest, evalEvery: ADAPT.epochs, progress: 'none', handleSignals: false,
      ...(m.trainable === 'adapters' ? { plotFile: path.join(outDir, 'repadapter-training.svg') } : {}),
    });
    const counts = model.countParameters();
    results.push({ name: m.name, ...counts, top1: fit.best?.top1 ?? NaN, seconds: (performance.now() - t0) / 1000 });
    log(`   ${m.name}: top-1 ${(100 * (fit.best?.top1 ?? NaN)).toFixed(2)}% in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    if (m.trainable === 'adapters') adapted = model;
    else model.dispose();
  }
  log('');
  log(
    table([
      ['method', 'trainable params', 'share', 'test top-1', 'train time'],
      ...results.map((r) => [r.name, r.trainable.toLocaleString('en'), `${((100 * r.trainable) / r.total).toFixed(2)}%`, `${(100 * r.top1).toFixed(2)}%`, `${r.seconds.toFixed(1)} s`]),
    ]),
  );

  // ---- 3. fold and check --------------------------------------------------------------------------
  const model = adapted!;
  const adapterFile = path.join(outDir, 'fashion5-9.adapters.safetensors');
  await saveAdapters(model, adapterFile, { classNames: ADAPT.classes.map((c) => FASHION_MNIST_CLASSES[c]) });
  const probe = adaptTest.batch(Array.from({ length: 256 }, (_, i) => i));
  using images = probe.images;
  using one = adaptTest.batch([0]).images;
  model.eval();
  const before = model.forward(images).toArray();
  const unfoldedBatch = latency(model, images, 15);
  const unfoldedOne = latency(model, one, 50);
  model.fold();
  const after = model.forward(images).toArray();
  let maxDiff = 0;
  let maxLogit = 0;
  for (let i = 0; i < before.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(after[i] - before[i]));
    maxLogit = Math.max(maxLogit, Math.abs(before[i]));
  }
  const foldedBatch = latency(model, images, 15);
  const foldedOne = latency(model, one, 50);
  using plain = ViT.create({ ...BACKBONE, numClasses: ADAPT.classes.length }, { dtype: options.dtype ?? 'float32' });
  plain.loadStateDict(model.stateDict());
  const plainBatch = latency(plain, images, 15);
  const plainOne = latency(plain, one, 50);
  const foldedFile = path.join(outDir, 'fashion5-9.folded.safetensors');
  await model.save(foldedFile);
  const adapterBytes = (await stat(adapterFile)).size;
  const modelBytes = (await stat(foldedFile)).size;
  model.dispose();

  log(`\n3. folded the adapters into qkv: max |Δlogit| = ${maxDiff.toExponential(2)} (logits up to ${maxLogit.toFixed(2)}; ${(maxDiff / maxLogit).toExponential(2)} relative)`);
  log(
    table([
      ['inference (median)', 'batch 1', 'batch 256'],
      ['plain backbone', `${plainOne.toFixed(2)} ms`, `${plainBatch.toFixed(1)} ms`],
      ['RepAdapter, unfolded', `${unfoldedOne.toFixed(2)} ms`, `${unfoldedBatch.toFixed(1)} ms`],
      ['RepAdapter, folded', `${foldedOne.toFixed(2)} ms`, `${foldedBatch.toFixed(1)} ms`],
    ]),
  );
  log(
    `\nadapter file ${(adapterBytes / 1024).toFixed(1)} KiB vs full model ${(modelBytes / 1024).toFixed(1)} KiB ` +
      `(${((100 * adapterBytes) / modelBytes).toFixed(1)}%): ${path.relative(process.cwd(), adapterFile)}, ${path.relative(process.cwd(), foldedFile)}`,
  );
  log(`done in ${seconds()} s`);
}
