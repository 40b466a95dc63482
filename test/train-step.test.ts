// Optimizer.trainStep: forward, loss, backward, update and zeroed gradients in one native call
// (ViT::train_step, the unit a GPU records as one CUDA graph). It must be the same arithmetic as
// forward(), backward() and step() in turn, bit for bit: dropout, drop path, label smoothing,
// clipping and parameter groups included.
import test from 'ava';

import { OutOfRangeError, Tensor, ViT, optim, type Target } from '../lib/index.js';
import { randn, randomise, rng } from './util.js';

const CONFIG = {
  imageSize: 16,
  patchSize: 8,
  width: 16,
  depth: 3,
  heads: 2,
  mlpHidden: 32,
  numClasses: 5,
  dropPath: 0.3,
  adapter: { placement: 'block' as const, hidden: 4, groups: 2, scale: 0.7, dropout: 0.2 },
};
const B = 6;

function model(options: { cudaGraphs?: boolean; trainable?: 'adapters' | 'all' } = {}): ViT {
  const m = ViT.create(CONFIG, { seed: 3, cudaGraphs: options.cudaGraphs ?? false });
  randomise(m, 11);
  if (options.trainable) m.setTrainable(options.trainable);
  return m.train();
}

function batches(n: number, soft: boolean): { images: Tensor; target: Target }[] {
  const random = rng(29);
  return Array.from({ length: n }, () => {
    const images = Tensor.from(randn(random, B * 3 * 16 * 16), [B, 3, 16, 16]);
    if (soft) {
      const t = new Float32Array(B * 5);
      for (let i = 0; i < t.length; i++) t[i] = random();
      return { images, target: { softTargets: t } };
    }
    const labels = Int32Array.from({ length: B }, () => Math.floor(random() * 5));
    return { images, target: { labels, labelSmoothing: 0.1 } };
  });
}

function trainable(m: ViT): Map<string, Float32Array> {
  return new Map(m.parameters().filter((p) => p.trainable).map((p) => [p.name, m.param(p.name)]));
}

const cases = [
  { name: 'AdamW with groups, clipping and label smoothing', soft: false, trainable: 'adapters' as const,
    make: () => optim.adamw({ lr: 3e-2, weightDecay: 0.05, noDecay: 'timm', clipGradNorm: 0.5 }) },
  { name: 'SGD with Nesterov momentum on soft targets, the whole model training', soft: true, trainable: 'all' as const,
    make: () => optim.sgd({ lr: 0.1, momentum: 0.9, nesterov: true, weightDecay: 1e-3 }) },
];

for (const c of cases)
  test(`trainStep equals forward, backward and step() bit for bit: ${c.name}`, async (t) => {
    using separate = model({ trainable: c.trainable });
    using fused = model({ trainable: c.trainable });
    const optSeparate = c.make().attach(separate);
    const optFused = c.make().attach(fused);
    for (const [i, { images, target }] of batches(3, c.soft).entries()) {
      using _ = images;
      optSeparate.setLr((g) => g.baseLr * (1 - 0.2 * i));
      optFused.setLr((g) => g.baseLr * (1 - 0.2 * i));
      using logits = separate.forward(images);
      const loss = separate.backward(target);
      const stepped = optSeparate.step();
      const result = await optFused.trainStep(images, target);
      using fusedLogits = result.logits;
      t.is(result.loss, loss, `step ${i + 1}: loss`);
      t.deepEqual(fusedLogits.toArray(), logits.toArray(), `step ${i + 1}: logits of the training forward`);
      t.deepEqual(result.update, stepped, `step ${i + 1}: what the update reports`);
    }
    const a = trainable(separate);
    const b = trainable(fused);
    for (const [name, values] of a) t.deepEqual(b.get(name), values, name);
    t.deepEqual(optFused.state().slots, optSeparate.state().slots, 'optimizer state');
    for (const p of fused.parameters().filter((p) => p.trainable)) t.true(fused.grad(p.name).every((g) => g === 0), `${p.name}: grads zeroed`);
    using initial = model({ trainable: c.trainable });
    const name = 'blocks.0.adapter_attn.conv_A.weight';
    t.notDeepEqual(a.get(name), initial.param(name), 'the steps moved the parameters');
  });

test('trainStep with cudaGraphs on gives the eager numbers (on the CPU nothing is recorded)', async (t) => {
  using eager = model();
  using graphed = model({ cudaGraphs: true });
  const optA = optim.adamw({ lr: 1e-2, clipGradNorm: 1 }).attach(eager);
  const optB = optim.adamw({ lr: 1e-2, clipGradNorm: 1 }).attach(graphed);
  for (const { images, target } of batches(4, false)) {
    using _ = images;
    const [ra, rb] = [await optA.trainStep(images, target), await optB.trainStep(images, target)];
    ra.logits.dispose();
    rb.logits.dispose();
    t.is(rb.loss, ra.loss);
    t.is(rb.update.gradNorm, ra.update.gradNorm);
  }
  for (const [name, values] of trainable(eager)) t.deepEqual(graphed.param(name), values, name);
});

test('trainStep refuses accumulation, eval mode and bad labels, changing nothing', async (t) => {
  using m = model();
  const [{ images, target }] = batches(1, false);
  using _ = images;
  const accumulating = optim.sgd({ lr: 0.1, accumulate: 2 }).attach(m);
  await t.throwsAsync(accumulating.trainStep(images, target), { message: /needs accumulate 1, this optimizer has 2/ });

  const opt = optim.adamw({ lr: 0.1 }).attach(m);
  const before = trainable(m);
  m.eval();
  await t.throwsAsync(opt.trainStep(images, target), { message: /training mode/ });
  m.train();
  const bad = Int32Array.from({ length: B }, (_, i) => (i === 4 ? 5 : 0));
  await t.throwsAsync(opt.trainStep(images, { labels: bad }), { instanceOf: OutOfRangeError, message: /label 5 of sample 4 is outside \[0, 5\)/ });
  t.is(opt.stepCount, 0, 'no update counted');
  for (const [name, values] of before) t.deepEqual(m.param(name), values, `${name} unchanged`);
  const short = Int32Array.from({ length: B - 1 }, () => 0);
  await t.throwsAsync(opt.trainStep(images, { labels: short }), { message: /expected 6 labels/ });
});

test('recomputeMlp: backward recomputes GELU\'s input and gives the same numbers, float32 and bf16, adapters and all', async (t) => {
  for (const dtype of ['float32', 'bf16'] as const)
    for (const mode of ['adapters', 'all'] as const) {
      const make = (recomputeMlp: boolean) => {
        const m = ViT.create(CONFIG, { seed: 3, dtype, recomputeMlp });
        randomise(m, 11);
        m.setTrainable(mode);
        return m.train();
      };
      using kept = make(false);
      using recomputed = make(true);
      const optA = optim.adamw({ lr: 1e-2 }).attach(kept);
      const optB = optim.adamw({ lr: 1e-2 }).attach(recomputed);
      for (const { images, target } of batches(2, false)) {
        using _ = images;
        const [a, b] = [await optA.trainStep(images, target), await optB.trainStep(images, target)];
        a.logits.dispose();
        b.logits.dispose();
        t.is(b.loss, a.loss, `${dtype} ${mode}: loss`);
      }
      for (const [name, values] of trainable(kept)) t.deepEqual(recomputed.param(name), values, `${dtype} ${mode}: ${name}`);
    }
});
