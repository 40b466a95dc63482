/**
 * Training checkpoints: exact resume (bit-identical parameters and losses on CPU, with dropout
 * and drop path drawing from the restored RNG), the keeper's retention rules, failures in the
 * middle of a write, and corrupt files.
 */
import test from 'ava';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { ArgumentError, ConfigError, FormatError, Tensor, ViT, writeSafetensors } from '../lib/index.js';
import * as optim from '../lib/optim/index.js';
import * as schedules from '../lib/optim/schedules.js';
import {
  CheckpointKeeper,
  loadCheckpoint,
  readCheckpoint,
  readCheckpointInfo,
  saveCheckpoint,
  type CheckpointInput,
} from '../lib/train/checkpoint.js';
import { TINY as TINY_BASE } from './helpers/tiny.js';
import { randn, rng } from './util.js';

// The shared tiny model with stochastic depth and adapter dropout on: resume must restore masks.
const TINY = { ...TINY_BASE, dropPath: 0.2, adapter: { ...TINY_BASE.adapter, dropout: 0.3 } };

function tinyModel(seed = 5): ViT {
  const model = ViT.create(TINY, { trainable: 'adapters', seed });
  const random = rng(seed + 1000);
  for (const p of model.parameters())
    if (p.trainable) model.setParam(p.name, randn(random, p.shape.reduce((a, b) => a * b, 1), 0.3));
  return model.train();
}

function trainStep(model: ViT, opt: optim.Optimizer, schedule: schedules.Schedule, k: number): number {
  opt.applySchedule(schedule, { epoch: 0, update: opt.stepCount, updatesPerEpoch: 6 });
  const random = rng(k + 1);
  using images = Tensor.from(randn(random, 2 * 3 * 16 * 16), [2, 3, 16, 16]);
  model.forward(images).dispose();
  const loss = model.backward({ labels: [k % 3, (k + 1) % 3] });
  opt.step();
  return loss;
}

const allParams = (m: ViT) => new Map(m.parameters().map((p) => [p.name, m.param(p.name)]));

async function tempDir(t: import('ava').ExecutionContext): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'repadapter-ckpt-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('resume: save after 3 AdamW steps, load into a fresh model and optimizer, 3 more steps are bit-identical', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'run.safetensors');
  const schedule = schedules.cosine({ epochs: 1, warmupEpochs: 0.5, lrMin: 1e-4, warmupLrInit: 1e-3, perStep: true });
  const dataState = { seed: 7, epoch: 0, cursor: 6, order: [3, 1, 2] };

  using a = tinyModel();
  const optA = optim.adamw({ lr: 2e-2, weightDecay: 0.05, noDecay: 'timm', clipGradNorm: 5 }).attach(a);
  for (let k = 0; k < 3; k++) trainStep(a, optA, schedule, k);
  await saveCheckpoint(file, {
    model: a,
    optimizer: optA,
    schedule,
    position: { epoch: 0, update: optA.stepCount },
    dataState,
    baseFingerprint: 'sha256:abc',
    metrics: { top1: 0.5, loss: 1.25 },
    extra: { note: 'resume test' },
  });
  const lossesA: number[] = [];
  for (let k = 3; k < 6; k++) lossesA.push(trainStep(a, optA, schedule, k));

  using b = ViT.create(TINY, { trainable: 'adapters', seed: 5 }).train(); // same backbone, fresh adapters
  const optB = optim.adamw({ lr: 1, betas: [0.5, 0.6] }); // hyperparameters come from the checkpoint
  const ckpt = await loadCheckpoint(file, { model: b, optimizer: optB, fingerprint: 'sha256:abc' });
  t.is(optB.model, b);
  t.is(optB.stepCount, 3);
  t.deepEqual(ckpt.position, { epoch: 0, update: 3 });
  t.deepEqual(ckpt.dataState, dataState);
  t.deepEqual(ckpt.metrics, { top1: 0.5, loss: 1.25 });
  t.deepEqual(ckpt.extra, { note: 'resume test' });
  t.is(ckpt.baseFingerprint, 'sha256:abc');
  t.not(ckpt.rng.step, 0n, 'dropout and drop path drew from the RNG before the save');
  t.deepEqual(ckpt.config, a.config);
  const resumed = schedules.fromJSON(ckpt.schedule!);
  t.deepEqual(resumed.toJSON(), schedule.toJSON());
  const lossesB: number[] = [];
  for (let k = 3; k < 6; k++) lossesB.push(trainStep(b, optB, resumed, k));

  t.deepEqual(lossesB, lossesA);
  const pa = allParams(a);
  for (const [name, value] of allParams(b)) t.deepEqual(value, pa.get(name), name);
  t.deepEqual(b.handle().rng(), a.handle().rng());
});

test('a checkpoint written before the first update, and one without an optimizer, load too', async (t) => {
  const dir = await tempDir(t);
  using a = tinyModel();
  const opt = optim.sgd({ lr: 0.1, momentum: 0.9 }).attach(a);
  await saveCheckpoint(path.join(dir, 'zero.safetensors'), { model: a, optimizer: opt, position: { epoch: 0, update: 0 } });
  await saveCheckpoint(path.join(dir, 'plain.safetensors'), { model: a, position: { epoch: 2, update: 10 } });
  using b = tinyModel(5);
  const optB = optim.sgd({ lr: 0.1, momentum: 0.9 });
  const c = await loadCheckpoint(path.join(dir, 'zero.safetensors'), { model: b, optimizer: optB });
  t.is(c.optimizerState!.step, 0);
  t.deepEqual(c.optimizerState!.slots, []);
  const plain = await readCheckpoint(path.join(dir, 'plain.safetensors'));
  t.is(plain.optimizer, null);
  t.is(plain.schedule, null);
  await t.throwsAsync(loadCheckpoint(path.join(dir, 'plain.safetensors'), { model: b, optimizer: optB }), {
    instanceOf: ArgumentError,
    message: /has no optimizer state/,
  });
  // A plain model file can be read as a checkpoint's parameters, and vice versa.
  const info = await readCheckpointInfo(path.join(dir, 'plain.safetensors'));
  t.deepEqual(info.position, { epoch: 2, update: 10 });
  using c2 = ViT.create(TINY, { trainable: 'adapters', seed: 9 });
  const r = await c2.load(path.join(dir, 'plain.safetensors'), { strict: false });
  t.deepEqual(r.unexpected, []);
});

test('loading checks the config, the fingerprint and the optimizer kind before changing anything', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'c.safetensors');
  using a = tinyModel();
  const opt = optim.adamw({ lr: 1e-3 }).attach(a);
  await saveCheckpoint(file, { model: a, optimizer: opt, position: { epoch: 1, update: 0 }, baseFingerprint: 'v1' });

  using b = tinyModel(6);
  const before = allParams(b);
  const rngBefore = b.handle().rng();
  await t.throwsAsync(loadCheckpoint(file, { model: b, fingerprint: 'v2' }), { instanceOf: ConfigError, message: /other base weights/ });
  await t.throwsAsync(loadCheckpoint(file, { model: b, optimizer: optim.sgd({ lr: 1 }) }), { instanceOf: ArgumentError, message: /adamw/ });
  using wide = ViT.create({ ...TINY, numClasses: 5 }, { trainable: 'adapters' });
  await t.throwsAsync(loadCheckpoint(file, { model: wide }), { instanceOf: ConfigError, message: /numClasses: model 5, checkpoint 3/ });
  using all = ViT.create(TINY, { trainable: 'all' });
  await t.throwsAsync(loadCheckpoint(file, { model: all }), { instanceOf: ConfigError, message: /trainable/ });
  t.deepEqual(allParams(b), before);
  t.deepEqual(b.handle().rng(), rngBefore);
});

test('corrupt or foreign files are FormatErrors naming the file, and the model is untouched', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'good.safetensors');
  using a = tinyModel();
  const opt = optim.adamw({ lr: 1e-3 }).attach(a);
  await saveCheckpoint(file, { model: a, optimizer: opt, position: { epoch: 0, update: 0 } });
  const bytes = await readFile(file);

  const truncated = path.join(dir, 'truncated.safetensors');
  await writeFile(truncated, bytes.subarray(0, bytes.length - 10));
  const garbage = path.join(dir, 'garbage.safetensors');
  await writeFile(garbage, Buffer.from('this is not a checkpoint at all'));
  const foreign = path.join(dir, 'model.safetensors');
  await a.save(foreign, { trainableOnly: true });
  const badMeta = path.join(dir, 'meta.safetensors');
  await writeSafetensors(badMeta, [{ name: 'x', dtype: 'F32', shape: [1], data: new Float32Array(1) }], {
    'repadapter.checkpoint': '{"format":"repadapter.checkpoint","version":99}',
  });
  const badJson = path.join(dir, 'json.safetensors');
  await writeSafetensors(badJson, [], { 'repadapter.checkpoint': '{nope' });

  using b = tinyModel(6);
  const before = allParams(b);
  for (const [f, message] of [
    [truncated, /invalid safetensors file/],
    [garbage, /invalid safetensors file/],
    [foreign, /not a training checkpoint/],
    [badMeta, /expected version 1 .* for version, got 99/],
    [badJson, /not valid JSON/],
  ] as const) {
    const e = await t.throwsAsync(loadCheckpoint(f, { model: b }), { instanceOf: FormatError, message });
    t.true(e!.message.includes(f), e!.message);
    t.is((e as FormatError).file, f);
  }
  for (const f of [truncated, garbage, foreign, badJson]) await t.throwsAsync(readCheckpointInfo(f), { instanceOf: FormatError });
  t.deepEqual(allParams(b), before);
});

// ---- the keeper -------------------------------------------------------------------------------------

function input(model: ViT, opt: optim.Optimizer, update: number, top1?: number): CheckpointInput {
  return { model, optimizer: opt, position: { epoch: update, update }, metrics: top1 === undefined ? {} : { top1 } };
}

const names = async (dir: string) => (await readdir(dir)).sort();

test('keeper keeps the last k and the best by a metric, and finds them again on reopen', async (t) => {
  const dir = await tempDir(t);
  using model = tinyModel();
  const opt = optim.adamw({ lr: 1e-3 }).attach(model);
  const keeper = await CheckpointKeeper.open(dir, { keepLast: 2, best: { metric: 'top1', mode: 'max' } });
  const top1 = [0.5, 0.9, 0.6, 0.7, 0.4];
  for (let u = 1; u <= top1.length; u++) await keeper.save(input(model, opt, u, top1[u - 1]));
  const expected = [2, 4, 5].map((u) => path.basename(keeper.pathFor({ epoch: u, update: u })));
  t.deepEqual(await names(dir), expected);
  t.is(keeper.bestCheckpoint()!.metrics.top1, 0.9);
  t.is(keeper.latest()!.position.update, 5);

  const again = await CheckpointKeeper.open(dir, { keepLast: 2, best: { metric: 'top1', mode: 'max' } });
  t.deepEqual(again.list().map((e) => path.basename(e.path)), expected);
  await again.save(input(model, opt, 6, 0.95));
  t.deepEqual(await names(dir), [5, 6].map((u) => path.basename(keeper.pathFor({ epoch: u, update: u }))));

  // mode 'min', keepLast 1, and checkpoints without the metric are never "best".
  const dir2 = await tempDir(t);
  const k2 = await CheckpointKeeper.open(dir2, { keepLast: 1, best: { metric: 'loss', mode: 'min' }, prefix: 'run' });
  await k2.save({ ...input(model, opt, 1), metrics: { loss: 0.3 } });
  await k2.save({ ...input(model, opt, 2), metrics: {} });
  await k2.save({ ...input(model, opt, 3), metrics: { loss: 0.5 } });
  t.deepEqual(await names(dir2), ['run-e0001-u000000001.safetensors', 'run-e0003-u000000003.safetensors']);
});

test('a write that fails half-way leaves every earlier checkpoint intact', async (t) => {
  const dir = await tempDir(t);
  using model = tinyModel();
  const opt = optim.adamw({ lr: 1e-3 }).attach(model);
  let fail = false;
  const keeper = await CheckpointKeeper.open(dir, {
    keepLast: 1,
    write: async (file, tensors, metadata) => {
      if (!fail) return writeSafetensors(file, tensors, metadata);
      await writeFile(`${file}.partial`, 'half a checkpoint'); // the writer got this far…
      await rm(`${file}.partial`);
      throw new Error('disk full');
    },
  });
  const first = await keeper.save(input(model, opt, 1));
  const bytes = await readFile(first);
  fail = true;
  await t.throwsAsync(keeper.save(input(model, opt, 2)), { message: 'disk full' });
  t.deepEqual(await names(dir), [path.basename(first)]);
  t.deepEqual(await readFile(first), bytes);
  t.is(keeper.latest()!.path, first);
  fail = false;
  const third = await keeper.save(input(model, opt, 3));
  t.deepEqual(await names(dir), [path.basename(third)]);

  // The real atomic writer failing at its last step (the rename: a directory is in the way).
  const blocked = keeper.pathFor({ epoch: 4, update: 4 });
  await mkdir(path.join(blocked, 'x'), { recursive: true });
  await t.throwsAsync(keeper.save(input(model, opt, 4)));
  t.deepEqual(await names(dir), [path.basename(third), path.basename(blocked)].sort()); // no temp file left
  t.is((await stat(third)).isFile(), true);
  await loadCheckpoint(third, { model });
});

test('keeper: a read-only directory (when permissions apply) and bad options', async (t) => {
  const dir = await tempDir(t);
  using model = tinyModel();
  const opt = optim.adamw({ lr: 1e-3 }).attach(model);
  const keeper = await CheckpointKeeper.open(dir, { keepLast: 1 });
  const first = await keeper.save(input(model, opt, 1));
  await chmod(dir, 0o555);
  t.teardown(() => chmod(dir, 0o755));
  const root = process.getuid?.() === 0; // root ignores directory permissions
  if (!root) {
    await t.throwsAsync(keeper.save(input(model, opt, 2)));
    t.deepEqual(await names(dir), [path.basename(first)]);
  }
  await chmod(dir, 0o755);
  await t.throwsAsync(CheckpointKeeper.open(dir, { keepLast: 0 }), { instanceOf: ConfigError, message: 'expected an integer ≥ 1 for keepLast, got 0' });
  await t.throwsAsync(CheckpointKeeper.open(dir, { prefix: '../x' }), { instanceOf: ConfigError });
  await t.throwsAsync(CheckpointKeeper.open(dir, { best: { metric: 'top1', mode: 'up' as never } }), { instanceOf: ConfigError });
  // A file that matches the naming scheme but is not a checkpoint is neither listed nor deleted.
  const stray = path.join(dir, 'checkpoint-e0000-u000000000.safetensors');
  await writeFile(stray, 'junk');
  const k2 = await CheckpointKeeper.open(dir, { keepLast: 1 });
  t.deepEqual(k2.list().map((e) => e.path), keeper.list().map((e) => e.path));
  await k2.save(input(model, opt, 7));
  t.true((await names(dir)).includes(path.basename(stray)));
  // Saving checks its input before touching the disk.
  await t.throwsAsync(keeper.save({ ...input(model, opt, 8), dataState: { n: 1n } }), { instanceOf: ArgumentError, message: /JSON-serialisable/ });
});

test('saveCheckpoint refuses an optimizer of another model and bad positions', async (t) => {
  const dir = await tempDir(t);
  using a = tinyModel();
  using b = tinyModel(6);
  const opt = optim.adamw({ lr: 1e-3 }).attach(b);
  await t.throwsAsync(saveCheckpoint(path.join(dir, 'x.safetensors'), { model: a, optimizer: opt, position: { epoch: 0, update: 0 } }), {
    instanceOf: ArgumentError,
    message: /not attached to the model/,
  });
  await t.throwsAsync(saveCheckpoint(path.join(dir, 'x.safetensors'), { model: a, position: { epoch: -1, update: 0 } }), {
    instanceOf: ArgumentError,
    message: /expected \{ epoch, update \} \(integers ≥ 0\) for position/,
  });
  t.deepEqual(await names(dir), []);
});
