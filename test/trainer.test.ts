/**
 * The training loop: it learns, it resumes bit for bit (after an epoch and after a stop in the
 * middle of one), a non-finite loss stops it without touching the checkpoints, and the CLI
 * drives it end to end.
 */
import test from 'ava';
import { mkdtemp, readFile, readdir, rm, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';

import { ImageDataset } from '../lib/data/dataset.js';
import { NonFiniteLossError, Trainer } from '../lib/train/trainer.js';
import { adamw } from '../lib/optim/optimizer.js';
import { cosine } from '../lib/optim/schedules.js';
import { ViT } from '../lib/index.js';
import { main as cli } from '../lib/cli.js';
import { randomise, rng } from './util.js';

const CONFIG = { imageSize: 16, patchSize: 4, width: 32, depth: 2, heads: 2, mlpRatio: 2, numClasses: 3 };

/** Three classes of 16×16 greyscale textures with noise: vertical stripes, horizontal stripes, diagonals. */
function shapes(n: number, seed: number): ImageDataset {
  const random = rng(seed);
  const pixels = new Uint8Array(n * 16 * 16);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const y = i % 3;
    labels[i] = y;
    for (let r = 0; r < 16; r++)
      for (let c = 0; c < 16; c++) {
        const on = y === 0 ? c % 2 === 0 : y === 1 ? r % 2 === 0 : (r + c) % 4 < 2;
        pixels[i * 256 + r * 16 + c] = Math.round((on ? 180 : 60) + 60 * (random() - 0.5));
      }
  }
  return ImageDataset.fromPixels(pixels, labels, { size: 16, channels: 1, numClasses: 3 });
}

/** A frozen backbone with weights of a realistic scale (timm's init is for training from scratch). */
function model(seed = 1): ViT {
  const m = ViT.create(CONFIG, { seed, adapter: { placement: 'block', hidden: 4, groups: 2, scale: 1, dropout: 0.1 }, dropPath: 0.1 });
  randomise(m, seed, (p) => p.role === 'backbone');
  return m;
}

function trainer(m: ViT): Trainer {
  return new Trainer(m, {
    optimizer: adamw({ lr: 3e-3, weightDecay: 1e-4 }),
    schedule: cosine({ epochs: 4, warmupEpochs: 1, lrMin: 1e-5, warmupLrInit: 1e-4 }),
  });
}

const quiet = { progress: 'none' as const, handleSignals: false };

test('adapters on a frozen random backbone learn the task: loss falls tenfold, test top-1 above 95%', async (t) => {
  using m = model();
  const train = shapes(96, 1);
  const tr = new Trainer(m, {
    optimizer: adamw({ lr: 1e-2, weightDecay: 1e-4 }),
    schedule: cosine({ epochs: 8, warmupEpochs: 1, lrMin: 1e-5, warmupLrInit: 1e-3 }),
  });
  const r = await tr.fit(train, { epochs: 8, batchSize: 16, eval: shapes(60, 2), evalEvery: 8, ...quiet });
  t.is(r.epochs.length, 8);
  t.true(r.epochs[7].loss < r.epochs[0].loss * 0.1, `loss ${r.epochs.map((e) => e.loss.toFixed(3)).join(' → ')}`);
  t.true(r.best!.top1 > 0.95, `top-1 ${r.best!.top1}`);
});

test('resume continues bit for bit, after an epoch and after a stop in the middle of one', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ra-trainer-'));
  try {
    const train = shapes(48, 3);
    const fitOptions = { epochs: 4, batchSize: 8, seed: 5, ...quiet };
    using reference = model();
    const full = await trainer(reference).fit(train, fitOptions);

    // Stop in the middle of the second epoch (the signal fires during step 9 of 24).
    const stopper = new AbortController();
    using first = model();
    const t1 = trainer(first);
    let steps = 0;
    // Each batch is one trainStep (forward, backward and update in one call).
    const originalStep = t1.optimizer.trainStep.bind(t1.optimizer);
    t1.optimizer.trainStep = (images, target) => {
      if (++steps === 9) stopper.abort();
      return originalStep(images, target);
    };
    const part = await t1.fit(train, { ...fitOptions, checkpointDir: dir, signal: stopper.signal });
    t.true(part.interrupted);
    t.regex(path.basename(part.checkpoint!), /e0*1-u0*9\./);

    using second = model();
    const rest = await trainer(second).fit(train, { ...fitOptions, checkpointDir: dir, resume: true });
    t.false(rest.interrupted);
    t.deepEqual(rest.epochs.map((e) => e.loss), full.epochs.map((e) => e.loss), 'every epoch gives the same loss');
    for (const p of reference.parameters().filter((p) => p.trainable))
      t.deepEqual(second.param(p.name), reference.param(p.name), p.name);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a non-finite loss stops training with a clear error and saves nothing after it', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ra-nan-'));
  try {
    using m = model();
    const tr = trainer(m);
    const train = shapes(24, 4);
    await tr.fit(train, { epochs: 1, batchSize: 8, checkpointDir: dir, ...quiet });
    const before = await readdir(dir);
    m.setParam('head.bias', new Float32Array([NaN, 0, 0]));
    const error = await t.throwsAsync(tr.fit(train, { epochs: 3, batchSize: 8, checkpointDir: dir, resume: false, ...quiet }), {
      instanceOf: NonFiniteLossError,
    });
    t.regex(error!.message, /loss became NaN at epoch 1, step 1/);
    t.deepEqual(await readdir(dir), before, 'the checkpoints are as they were');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('the CLI trains on an ImageFolder, writes log, plot, checkpoints and an adapter file, then folds and evaluates', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ra-cli-'));
  try {
    const data = path.join(dir, 'data');
    const ds = shapes(30, 6);
    for (let i = 0; i < ds.length; i++) {
      const folder = path.join(data, ['left', 'right', 'centre'][ds.labels[i]]);
      await mkdir(folder, { recursive: true });
      await sharp(Buffer.from(ds.image(i)), { raw: { width: 16, height: 16, channels: 1 } }).png().toFile(path.join(folder, `${i}.png`));
    }
    const out = path.join(dir, 'run');
    const base = path.join(dir, 'base.safetensors');
    using backbone = ViT.create(CONFIG, { seed: 3 });
    await backbone.save(base);
    const config = JSON.stringify({ ...CONFIG, numClasses: undefined });
    const code = await cli(['train', '--data', data, '--eval-data', data, '--config', config, '--pretrained', base,
      '--epochs', '2', '--warmup', '1', '--batch', '10', '--eval-every', '1', '--out', out, '--recompute-mlp', '--cuda-graphs']);
    t.is(code, 0);
    const files = await readdir(out);
    for (const f of ['log.jsonl', 'plot.svg', 'checkpoints', 'task.adapters.safetensors']) t.true(files.includes(f), f);
    const log = (await readFile(path.join(out, 'log.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    t.is(log.filter((r) => r.type === 'epoch').length, 2);
    t.is(log.filter((r) => r.type === 'step').length, 6);
    t.regex(await readFile(path.join(out, 'plot.svg'), 'utf8'), /^<svg/);
    const folded = path.join(dir, 'folded.safetensors');
    t.is(await cli(['fold', '--pretrained', base, '--adapters', path.join(out, 'task.adapters.safetensors'), '--out', folded]), 0);
    t.is(await cli(['eval', '--data', data, '--weights', folded, '--batch', '10']), 0);
    t.is(await cli(['eval', '--data', data, '--weights', folded, '--batch', '10', '--dtype', 'bf16']), 0);
    t.is(await cli(['eval', '--data', data, '--weights', folded, '--dtype', 'fp16']), 2, 'a bad --dtype is a usage error');
    t.is(await cli(['eval', '--data', data, '--weights', folded, '--device', 'tpu']), 2, 'a bad --device is a usage error');
    t.is(await cli(['train', '--data', path.join(dir, 'missing')]), 2);
    await writeFile(path.join(dir, 'x'), '');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
