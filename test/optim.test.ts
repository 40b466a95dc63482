/**
 * Optimizers and schedules.
 *
 * Against PyTorch / timm (test/fixtures/optim_reference.json, made by make_optim_fixtures.py):
 * the native AdamW and SGD updates (runOp) over 5 steps with changing gradients and lrs, to 1e-6
 * relative; clip_grad_norm_'s norm and coefficient; timm's CosineLRScheduler / StepLRScheduler
 * lr values per epoch and per update, to 1e-9 relative.
 *
 * On a real tiny ViT: Optimizer.step() changes exactly the trainable parameters, as a hand
 * computation from the gradients predicts (weight decay per group, noDecay, clipping,
 * accumulation), leaves frozen ones bit-identical, and makes one fused native call per update.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { ArgumentError, ConfigError, Tensor, ViT } from '../lib/index.js';
import { resolveConfig } from '../lib/config.js';
import { native } from '../lib/native.js';
import * as optim from '../lib/optim/index.js';
import * as schedules from '../lib/optim/schedules.js';
import { randn, relErr, rng } from './util.js';

const here = path.dirname(fileURLToPath(import.meta.url));
type Tensors = Record<string, number[]>;
interface SgdCase {
  hyper: { lr: number; momentum: number; dampening: number; nesterov: boolean; weight_decay: number };
  init: Tensors;
  grads: Tensors[];
  steps: { params: Tensors; momentum_buffer?: Tensors }[];
}
const fixture = JSON.parse(readFileSync(path.join(here, 'fixtures', 'optim_reference.json'), 'utf8')) as {
  adamw: {
    hyper: { betas: [number, number]; eps: number };
    groups: { names: string[]; weight_decay: number }[];
    init: Tensors;
    grads: Tensors[];
    steps: { lr: number; params: Tensors; exp_avg: Tensors; exp_avg_sq: Tensors }[];
  };
  sgd: SgdCase[];
  clip: { grads: Tensors; cases: { max_norm: number; total_norm: number; clipped: Tensors }[] };
  schedules: {
    name: string;
    kind: 'cosine' | 'step';
    options: Record<string, unknown>;
    base_lrs: number[];
    updates_per_epoch?: number;
    lrs: number[][];
  }[];
};

const f32 = (a: number[]) => Float32Array.from(a);

// ---- the update math against torch.optim --------------------------------------------------------

// Tolerance 1e-6 relative for parameters and both moments: the native update forms 1 − β in
// double and rounds once, as torch does, and follows torch's operation order (lerp for m).
test('AdamW update (native) matches torch.optim.AdamW over 5 steps, with and without weight decay', (t) => {
  const { hyper, groups, init, grads, steps } = fixture.adamw;
  const worst = { param: 0, exp_avg: 0, exp_avg_sq: 0 };
  const tolerance = { param: 1e-6, exp_avg: 1e-6, exp_avg_sq: 1e-6 };
  for (const group of groups)
    for (const name of group.names) {
      let param: Float32Array = f32(init[name]);
      let m: Float32Array = new Float32Array(param.length);
      let v: Float32Array = new Float32Array(param.length);
      steps.forEach((s, i) => {
        const out = native.runOp(
          'adamw',
          { n: param.length, lr: s.lr, beta1: hyper.betas[0], beta2: hyper.betas[1], eps: hyper.eps, weight_decay: group.weight_decay, step: i + 1 },
          { param, grad: f32(grads[i][name]), m, v },
        );
        ({ param, m, v } = out as { param: Float32Array; m: Float32Array; v: Float32Array });
        for (const [key, mine, theirs] of [['param', param, s.params[name]], ['exp_avg', m, s.exp_avg[name]], ['exp_avg_sq', v, s.exp_avg_sq[name]]] as const) {
          const e = relErr(mine, theirs);
          worst[key] = Math.max(worst[key], e);
          t.true(e <= tolerance[key], `${name} ${key} step ${i + 1}: relative error ${e}`);
        }
      });
    }
  t.log(`max relative errors vs torch AdamW: ${Object.entries(worst).map(([k, e]) => `${k} ${e.toExponential(2)}`).join(', ')}`);
});

test('SGD update (native) matches torch.optim.SGD: momentum, dampening, nesterov, weight decay', (t) => {
  let worst = 0;
  for (const c of fixture.sgd) {
    const h = c.hyper;
    for (const name of Object.keys(c.init)) {
      let param: Float32Array = f32(c.init[name]);
      let buf: Float32Array = new Float32Array(param.length);
      c.steps.forEach((s, i) => {
        const out = native.runOp(
          'sgd',
          { n: param.length, lr: h.lr, momentum: h.momentum, dampening: h.dampening, nesterov: h.nesterov ? 1 : 0, weight_decay: h.weight_decay, first: i === 0 ? 1 : 0 },
          { param, grad: f32(c.grads[i][name]), buf },
        );
        ({ param, buf } = out as { param: Float32Array; buf: Float32Array });
        const e = relErr(param, s.params[name]);
        worst = Math.max(worst, e);
        t.true(e <= 1e-6, `${JSON.stringify(h)} ${name} step ${i + 1}: ${e}`);
        if (s.momentum_buffer) t.true(relErr(buf, s.momentum_buffer[name]) <= 1e-6);
      });
    }
  }
  t.log(`max relative error vs torch SGD: ${worst.toExponential(2)}`);
});

test('one native update over two ranges equals one update per range (AdamW and SGD)', (t) => {
  const random = rng(17);
  const n = 1001, k = 377;
  const part = (x: Float32Array, from: number, to: number) => x.slice(from, to);
  const join = (a: Float32Array, b: Float32Array) => { const out = new Float32Array(a.length + b.length); out.set(a); out.set(b, a.length); return out; };
  const inputs = { param: randn(random, n), grad: randn(random, n), m: randn(random, n, 0.1), v: randn(random, n, 0.01).map(Math.abs) };
  const both = native.runOp('adamw', { n, split: k, lr: 1e-3, weight_decay: 0.05, lr2: 3e-3, weight_decay2: 0, step: 4 }, inputs);
  const first = native.runOp('adamw', { n: k, lr: 1e-3, weight_decay: 0.05, step: 4 }, Object.fromEntries(Object.entries(inputs).map(([key, x]) => [key, part(x, 0, k)])));
  const second = native.runOp('adamw', { n: n - k, lr: 3e-3, weight_decay: 0, step: 4 }, Object.fromEntries(Object.entries(inputs).map(([key, x]) => [key, part(x, k, n)])));
  for (const key of ['param', 'm', 'v']) t.deepEqual(both[key], join(first[key], second[key]), `adamw ${key}`);
  t.notDeepEqual(first.param, native.runOp('adamw', { n: k, lr: 3e-3, weight_decay: 0, step: 4 }, Object.fromEntries(Object.entries(inputs).map(([key, x]) => [key, part(x, 0, k)]))).param, 'the groups differ');

  const sgdIn = { param: inputs.param, grad: inputs.grad, buf: inputs.m };
  const sgdBoth = native.runOp('sgd', { n, split: k, lr: 0.1, weight_decay: 1e-3, lr2: 0.01, weight_decay2: 0, momentum: 0.9 }, sgdIn);
  const sgdFirst = native.runOp('sgd', { n: k, lr: 0.1, weight_decay: 1e-3, momentum: 0.9 }, Object.fromEntries(Object.entries(sgdIn).map(([key, x]) => [key, part(x, 0, k)])));
  const sgdSecond = native.runOp('sgd', { n: n - k, lr: 0.01, weight_decay: 0, momentum: 0.9 }, Object.fromEntries(Object.entries(sgdIn).map(([key, x]) => [key, part(x, k, n)])));
  for (const key of ['param', 'buf']) t.deepEqual(sgdBoth[key], join(sgdFirst[key], sgdSecond[key]), `sgd ${key}`);
});

test('the native update refuses ranges that overlap or leave the trainable buffer, and changes nothing', (t) => {
  const handle = new native.NativeViT(resolveConfig({ imageSize: 16, patchSize: 8, width: 16, depth: 1, heads: 2, numClasses: 3 }, { trainable: 'head' }), 1);
  const before = handle.getParam('head.weight');
  const hyper = { beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 1, gradScale: 1 };
  t.throws(() => handle.adamwStep(new Float64Array([0, 10, 1e-3, 0, 5, 10, 1e-3, 0]), hyper), { message: /optimizer ranges \[0, 10\) and \[5, 15\) overlap/ });
  t.throws(() => handle.adamwStep(new Float64Array([0, 1e6, 1e-3, 0]), hyper), { message: /outside the trainable buffer/ });
  t.deepEqual(handle.getParam('head.weight'), before);
  handle.dispose();
});

test('clip coefficient and total norm match torch.nn.utils.clip_grad_norm_', (t) => {
  const { grads, cases } = fixture.clip;
  let sum = 0;
  for (const g of Object.values(grads)) for (const x of f32(g)) sum += x * x;
  const norm = Math.sqrt(sum);
  for (const c of cases) {
    t.true(Math.abs(norm - c.total_norm) / c.total_norm <= 1e-6, `norm ${norm} vs ${c.total_norm}`);
    const coef = Math.fround(optim.clipCoefficient(norm, c.max_norm));
    for (const [name, g] of Object.entries(grads)) {
      const clipped = f32(g).map((x) => x * coef);
      t.true(relErr(clipped, c.clipped[name]) <= 1e-6, `max_norm ${c.max_norm} ${name}`);
    }
  }
});

// ---- schedules against timm ---------------------------------------------------------------------

test('schedules match timm CosineLRScheduler / StepLRScheduler per epoch and per update', (t) => {
  let worst = 0;
  for (const c of fixture.schedules) {
    const schedule = c.kind === 'cosine' ? schedules.cosine(c.options as never) : schedules.step(c.options as never);
    t.deepEqual(schedules.fromJSON(JSON.parse(JSON.stringify(schedule.toJSON()))).toJSON(), schedule.toJSON());
    const upe = c.updates_per_epoch;
    c.lrs.forEach((row, t_) => {
      row.forEach((expectedLr, g) => {
        const position = upe ? { epoch: Math.floor(t_ / upe), update: t_, updatesPerEpoch: upe } : { epoch: t_ };
        const lr = schedule.lr(position, c.base_lrs[g]);
        const e = Math.abs(lr - expectedLr) / Math.max(Math.abs(expectedLr), 1e-300);
        worst = Math.max(worst, e);
        t.true(e <= 1e-9, `${c.name} t=${t_} group ${g}: ${lr} vs timm ${expectedLr}`);
      });
    });
  }
  t.log(`max relative error vs timm schedulers: ${worst.toExponential(2)}`);
});

test('schedules: constant, lr stays at lrMin after the cosine, per-step positions, bad options', (t) => {
  t.is(schedules.constant().lr({ epoch: 7 }, 0.3), 0.3);
  const cos = schedules.cosine({ epochs: 10, lrMin: 1e-5 });
  t.is(cos.lr({ epoch: 10 }, 1e-3), 1e-5);
  t.is(cos.lr({ epoch: 500 }, 1e-3), 1e-5);
  t.is(cos.at(0, 1e-3), 1e-3);
  const perStep = schedules.cosine({ epochs: 2, perStep: true, updatesPerEpoch: 4 });
  t.is(perStep.lr({ epoch: 0, update: 4 }, 1), perStep.at(4, 1));
  t.is(perStep.lr({ epoch: 0, update: 4 }, 1), schedules.cosine({ epochs: 2 }).lr({ epoch: 1 }, 1));
  t.throws(() => schedules.cosine({ epochs: 2, perStep: true }).lr({ epoch: 0, update: 1 }, 1), { instanceOf: ArgumentError });
  t.throws(() => perStep.lr({ epoch: 0 }, 1), { instanceOf: ArgumentError, message: /position\.update/ });
  t.throws(() => cos.lr({ epoch: -1 }, 1), { instanceOf: ArgumentError, message: 'expected a finite number ≥ 0 for position.epoch, got -1' });
  t.throws(() => schedules.cosine({ epochs: 0 }), { instanceOf: ConfigError, message: 'expected a finite number > 0 for epochs, got 0' });
  t.throws(() => schedules.cosine({ epochs: 5, lrMin: -1 }), { instanceOf: ConfigError, message: 'expected a finite number ≥ 0 for lrMin, got -1' });
  t.throws(() => schedules.cosine({ epochs: 5, warmup: 2 } as never), { instanceOf: ConfigError, message: /unknown option "warmup"/ });
  t.throws(() => schedules.step({ decayEpochs: 3 } as never), { instanceOf: ConfigError, message: 'expected a value for decayRate, got undefined' });
  t.throws(() => schedules.fromJSON({ kind: 'linear', options: {} } as never), { instanceOf: ConfigError });
});

// ---- on a real model ----------------------------------------------------------------------------

const TINY = { imageSize: 16, patchSize: 8, width: 16, depth: 1, heads: 2, numClasses: 3, adapter: { placement: 'attn' as const, hidden: 4, groups: 2, dropout: 0 } };

/** A tiny model with random (non-zero) trainable parameters, so every gradient is non-zero. */
function tinyModel(trainable: 'adapters' | 'all' = 'adapters', seed = 1): ViT {
  const model = ViT.create(TINY, { trainable, seed });
  const random = rng(seed + 100);
  for (const p of model.parameters())
    if (p.trainable && !p.name.includes('norm')) model.setParam(p.name, randn(random, p.shape.reduce((a, b) => a * b, 1), 0.3));
  return model.train();
}

function batch(seed: number, B = 2): { images: Tensor; labels: Int32Array } {
  const random = rng(seed);
  return { images: Tensor.from(randn(random, B * 3 * 16 * 16), [B, 3, 16, 16]), labels: Int32Array.from({ length: B }, (_, i) => (i + seed) % 3) };
}

function backward(model: ViT, seed: number): number {
  const { images, labels } = batch(seed);
  using _ = images;
  model.forward(images).dispose();
  return model.backward({ labels });
}

const snapshotParams = (m: ViT) => new Map(m.parameters().map((p) => [p.name, m.param(p.name)]));
const snapshotGrads = (m: ViT) => new Map(m.parameters().filter((p) => p.trainable).map((p) => [p.name, m.grad(p.name)]));

function assertFrozenUnchanged(t: import('ava').ExecutionContext, m: ViT, before: Map<string, Float32Array>) {
  for (const p of m.parameters())
    if (!p.trainable) t.deepEqual(m.param(p.name), before.get(p.name), `frozen ${p.name} changed`);
}

test('AdamW step on a model: trainable params as predicted (noDecay timm), frozen ones bit-identical, one fused call', (t) => {
  using model = tinyModel('all');
  const lr = 1e-2;
  const wd = 0.5; // large, so a wrongly decayed (or not decayed) parameter stands out
  const opt = optim.adamw({ lr, weightDecay: wd, betas: [0.8, 0.95], eps: 1e-6, noDecay: 'timm' }).attach(model);
  const noDecay = new Set(opt.groups.filter((g) => g.weightDecay === 0).flatMap((g) => g.params));
  t.true(noDecay.has('blocks.0.adapter_attn.conv_A.bias') && noDecay.has('blocks.0.norm1.weight') && noDecay.has('pos_embed') && noDecay.has('cls_token'));
  t.false(noDecay.has('blocks.0.adapter_attn.conv_A.weight') || noDecay.has('head.weight') || noDecay.has('blocks.0.attn.qkv.weight'));

  // Count native calls: one adamwStep per update, over merged ranges.
  const handle = model.handle();
  const calls: Float64Array[] = [];
  const original = handle.adamwStep.bind(handle);
  Object.defineProperty(handle, 'adamwStep', {
    configurable: true,
    value: (ranges: Float64Array, hyper: Parameters<typeof original>[1]) => {
      calls.push(ranges.slice());
      original(ranges, hyper);
    },
  });

  const m = new Map<string, Float64Array>();
  const v = new Map<string, Float64Array>();
  for (let step = 1; step <= 3; step++) {
    backward(model, step);
    const before = snapshotParams(model);
    const grads = snapshotGrads(model);
    const result = opt.step();
    t.deepEqual([result.updated, result.step], [true, step]);
    let worst = 0;
    let worstDelta = 0;
    for (const [name, g] of grads) {
      const p0 = before.get(name)!;
      const decay = noDecay.has(name) ? 0 : wd;
      const mm = m.get(name) ?? new Float64Array(g.length);
      const vv = v.get(name) ?? new Float64Array(g.length);
      const expectedP = new Float64Array(g.length);
      for (let i = 0; i < g.length; i++) {
        mm[i] = 0.8 * mm[i] + 0.2 * g[i];
        vv[i] = 0.95 * vv[i] + 0.05 * g[i] * g[i];
        const denom = Math.sqrt(vv[i]) / Math.sqrt(1 - 0.95 ** step) + 1e-6;
        expectedP[i] = p0[i] * (1 - lr * decay) - (lr / (1 - 0.8 ** step)) * (mm[i] / denom);
      }
      m.set(name, mm);
      v.set(name, vv);
      const after = model.param(name);
      worst = Math.max(worst, relErr(after, expectedP));
      worstDelta = Math.max(worstDelta, relErr(after.map((x, i) => x - p0[i]), expectedP.map((x, i) => x - p0[i])));
    }
    t.true(worst <= 1e-6, `step ${step}: params off by ${worst}`);
    t.true(worstDelta <= 1e-3, `step ${step}: updates off by ${worstDelta}`);
    for (const [name] of grads) t.true(model.grad(name).every((x) => x === 0), `${name} gradient not zeroed`);
  }
  t.is(calls.length, 3);
  // One range per run of equal hyperparameters: contiguous, neighbours always differ, and together
  // they cover the flat buffer up to the end of the last trainable tensor.
  const ranges = calls[0];
  const n = ranges.length / 4;
  t.true(n < model.parameters().length);
  for (let i = 1; i < n; i++) {
    t.is(ranges[4 * i], ranges[4 * (i - 1)] + ranges[4 * (i - 1) + 1]);
    t.notDeepEqual([ranges[4 * i + 2], ranges[4 * i + 3]], [ranges[4 * i - 2], ranges[4 * i - 1]]);
  }
  const extent = Math.max(...handle.params().filter((p) => p.trainable).map((p) => p.offset + p.shape.reduce((a, b) => a * b, 1)));
  t.is(ranges[0], 0);
  t.is(ranges[4 * n - 4] + ranges[4 * n - 3], extent);
});

test('frozen parameters stay bit-identical (adapters trainable); head group with its own lr', (t) => {
  using model = tinyModel('adapters');
  const frozen = snapshotParams(model);
  const opt = optim.sgd({ lr: 0.1, paramGroups: [{ name: 'head', params: /^head\./, lr: 1 }] }).attach(model);
  t.deepEqual(opt.groups.map((g) => [g.name, g.lr]), [['default', 0.1], ['head', 1]]);
  backward(model, 1);
  const before = snapshotParams(model);
  const grads = snapshotGrads(model);
  opt.step();
  for (const [name, g] of grads) {
    const lr = name.startsWith('head.') ? 1 : 0.1;
    const expectedP = before.get(name)!.map((p, i) => p - lr * g[i]);
    t.true(relErr(model.param(name), expectedP) <= 1e-6, name);
  }
  assertFrozenUnchanged(t, model, frozen);
});

test('clipGradNorm scales by maxNorm / (norm + 1e-6), as clip_grad_norm_', (t) => {
  using model = tinyModel();
  const maxNorm = 0.05;
  const opt = optim.sgd({ lr: 0.5, clipGradNorm: maxNorm }).attach(model);
  backward(model, 3);
  const before = snapshotParams(model);
  const grads = snapshotGrads(model);
  let sum = 0;
  for (const g of grads.values()) for (const x of g) sum += x * x;
  const norm = Math.sqrt(sum);
  t.true(norm > maxNorm * 2, 'the test needs a gradient to clip');
  const result = opt.step();
  t.true(Math.abs(result.gradNorm! - norm) / norm < 1e-9);
  const coef = maxNorm / (norm + 1e-6);
  t.true(Math.abs(result.gradScale! - coef) < 1e-12);
  for (const [name, g] of grads)
    t.true(relErr(model.param(name), before.get(name)!.map((p, i) => p - 0.5 * g[i] * coef)) <= 1e-6, name);
  // A large maxNorm changes nothing.
  const loose = optim.sgd({ lr: 0.5, clipGradNorm: 1e6 }).attach(model);
  backward(model, 4);
  t.is(loose.step().gradScale, 1);
});

test('gradient accumulation: every k-th step updates with the mean gradient; flush() takes the rest', (t) => {
  using model = tinyModel();
  const opt = optim.sgd({ lr: 0.3, accumulate: 3, weightDecay: 0.01 }).attach(model);
  const start = snapshotParams(model);
  backward(model, 1);
  t.deepEqual(opt.step(), { updated: false, step: 0 });
  backward(model, 2);
  t.deepEqual(opt.step(), { updated: false, step: 0 });
  t.deepEqual(snapshotParams(model), start, 'no update before the k-th micro-batch');
  backward(model, 3);
  const sum = snapshotGrads(model); // the model sums the three micro-batches' gradients
  const r = opt.step();
  t.true(r.updated);
  t.is(r.step, 1);
  t.is(r.gradScale, 1 / 3);
  for (const [name, g] of sum) {
    const p0 = start.get(name)!;
    t.true(relErr(model.param(name), p0.map((p, i) => p - 0.3 * (g[i] / 3 + 0.01 * p))) <= 1e-6, name);
    t.true(model.grad(name).every((x) => x === 0));
  }
  // A partial accumulation at the end of an epoch: flush divides by what was accumulated.
  backward(model, 4);
  opt.step();
  const before = snapshotParams(model);
  const grads = snapshotGrads(model);
  t.is(opt.pending, 1);
  t.throws(() => opt.state(), { instanceOf: ArgumentError, message: /middle of gradient accumulation/ });
  const f = opt.flush();
  t.deepEqual([f.updated, f.step, f.gradScale], [true, 2, 1]);
  for (const [name, g] of grads)
    t.true(relErr(model.param(name), before.get(name)!.map((p, i) => p - 0.3 * (g[i] + 0.01 * p))) <= 1e-6, name);
  t.false(opt.flush().updated);
});

test('accumulation with clipping: the norm is that of the mean gradient', (t) => {
  using model = tinyModel();
  const opt = optim.sgd({ lr: 1, accumulate: 2, clipGradNorm: 0.01 }).attach(model);
  backward(model, 5);
  opt.step();
  backward(model, 6);
  const sum = snapshotGrads(model);
  let ss = 0;
  for (const g of sum.values()) for (const x of g) ss += x * x;
  const meanNorm = Math.sqrt(ss) / 2;
  const r = opt.step();
  t.true(Math.abs(r.gradNorm! - meanNorm) / meanNorm < 1e-9);
  t.true(Math.abs(r.gradScale! - 0.5 * (0.01 / (meanNorm + 1e-6))) < 1e-12);
});

test('SGD momentum/nesterov on a model follows torch over steps; schedules set each group lr', (t) => {
  using model = tinyModel();
  const opt = optim.sgd({ lr: 0.1, momentum: 0.9, nesterov: true, weightDecay: 1e-3, noDecay: 'timm' }).attach(model);
  const schedule = schedules.step({ decayEpochs: 1, decayRate: 0.5, warmupPrefix: false });
  const buf = new Map<string, Float64Array>();
  const noDecay = new Set(opt.groups.filter((g) => g.weightDecay === 0).flatMap((g) => g.params));
  for (let epoch = 0; epoch < 3; epoch++) {
    opt.applySchedule(schedule, { epoch });
    t.true(opt.groups.every((g) => g.lr === 0.1 * 0.5 ** epoch));
    backward(model, 10 + epoch);
    const before = snapshotParams(model);
    const grads = snapshotGrads(model);
    opt.step();
    for (const [name, g] of grads) {
      const p0 = before.get(name)!;
      const b = buf.get(name);
      const wd = noDecay.has(name) ? 0 : 1e-3;
      const d = Float64Array.from(g, (x, i) => x + wd * p0[i]);
      const nb = b ? Float64Array.from(d, (x, i) => 0.9 * b[i] + x) : Float64Array.from(d);
      buf.set(name, nb);
      const expectedP = p0.map((p, i) => p - opt.lr * (d[i] + 0.9 * nb[i]));
      t.true(relErr(model.param(name), expectedP) <= 1e-6, `${name} epoch ${epoch}`);
    }
  }
});

test('state() / loadState() resume exactly; the saved hyperparameters and groups win', (t) => {
  using a = tinyModel('adapters', 4);
  const optA = optim.adamw({ lr: 3e-3, weightDecay: 0.1, noDecay: 'timm', clipGradNorm: 1 }).attach(a);
  for (let s = 1; s <= 2; s++) {
    backward(a, s);
    optA.step();
  }
  optA.setLr(1e-3);
  const state = optA.state();
  t.is(state.step, 2);
  t.deepEqual(state.slotNames, ['exp_avg', 'exp_avg_sq']);
  t.is(state.slots.length, 2);

  using b = tinyModel('adapters', 99); // other trainable values, same backbone seed? no: copy them
  for (const p of a.parameters()) b.setParam(p.name, a.param(p.name));
  const optB = optim.adamw({ lr: 5, betas: [0.5, 0.5] }).attach(b);
  optB.loadState(state);
  t.is(optB.stepCount, 2);
  t.deepEqual(optB.betas, [0.9, 0.999]);
  t.is(optB.clipGradNorm, 1);
  t.deepEqual(optB.groups, optA.groups);
  backward(a, 3);
  backward(b, 3);
  optA.step();
  optB.step();
  for (const p of a.parameters()) t.deepEqual(b.param(p.name), a.param(p.name), p.name);

  // Mismatches are refused before anything changes.
  t.throws(() => optim.sgd({ lr: 1 }).attach(b).loadState(state), { instanceOf: ArgumentError, message: /adamw/ });
  using c = tinyModel('all');
  t.throws(() => optim.adamw({ lr: 1 }).attach(c).loadState(state), { message: /state dict does not match/ });
});

test('attach: a second optimizer retires the first; a changed trainable set is caught', (t) => {
  using model = tinyModel();
  const first = optim.sgd({ lr: 0.1 });
  t.throws(() => first.step(), { instanceOf: ArgumentError, message: /not attached/ });
  first.attach(model);
  const second = optim.sgd({ lr: 0.1 }).attach(model);
  backward(model, 1);
  t.throws(() => first.step(), { instanceOf: ArgumentError, message: /retired/ });
  t.true(second.step().updated);
  model.setTrainable('all');
  t.throws(() => second.step(), { instanceOf: ArgumentError, message: /trainable set changed/ });
  second.attach(model);
  backward(model, 2);
  t.true(second.step().updated);
});

test('bad hyperparameters are ConfigErrors with the standard message', (t) => {
  const cases: [() => unknown, string | RegExp][] = [
    [() => optim.adamw({ lr: -1 }), 'expected a finite number ≥ 0 for lr, got -1'],
    [() => optim.adamw({ lr: 1e-3, betas: [1, 0.999] }), 'expected two numbers in [0, 1) for betas, got [1, 0.999]'],
    [() => optim.adamw({ lr: 1e-3, betas: [0.9, -0.1] }), 'expected two numbers in [0, 1) for betas, got [0.9, -0.1]'],
    [() => optim.adamw({ lr: 1e-3, eps: -1 }), 'expected a finite number ≥ 0 for eps, got -1'],
    [() => optim.adamw({ lr: 1e-3, weightDecay: NaN }), 'expected a finite number ≥ 0 for weightDecay, got NaN'],
    [() => optim.adamw({ lr: 1e-3, accumulate: 0 }), 'expected an integer ≥ 1 for accumulate, got 0'],
    [() => optim.adamw({ lr: 1e-3, clipGradNorm: 0 }), 'expected a finite number > 0 or null for clipGradNorm, got 0'],
    [() => optim.adamw({ lr: 1e-3, weight_decay: 0.1 } as never), 'unknown optimizer option "weight_decay"'],
    [() => optim.sgd({ lr: 0.1, momentum: -0.9 }), 'expected a finite number ≥ 0 for momentum, got -0.9'],
    [() => optim.sgd({ lr: 0.1, nesterov: true }), 'expected momentum > 0 and dampening 0 for nesterov, got {momentum: 0, dampening: 0}'],
    [() => optim.sgd({ lr: 0.1, paramGroups: [{ params: 42 as never }] }), 'expected a predicate, a RegExp or an array of parameter names for paramGroups[0].params, got 42'],
    [() => optim.sgd({ lr: 0.1, paramGroups: [{ params: [], lr: -2 }] }), 'expected a finite number ≥ 0 for paramGroups[0].lr, got -2'],
    [() => optim.sgd({ lr: -1, momentum: -1 }), /invalid SGD options:\n {2}expected a finite number ≥ 0 for lr, got -1\n {2}expected a finite number ≥ 0 for momentum, got -1/],
  ];
  for (const [fn, message] of cases) t.throws(fn, { instanceOf: ConfigError, message });
  t.is(optim.adamw({ lr: 1 }).hyperparameters().weightDecay, 0.01);
  t.is(optim.sgd({ lr: 1 }).hyperparameters().weightDecay, 0);
});
