/**
 * Device selection. On a machine with a working GPU, a CUDA model must give the CPU model's
 * numbers; everywhere else, asking for 'cuda' must say exactly why it cannot be had, and 'auto'
 * must fall back to the CPU.
 */
import test from 'ava';

import { NativeError, Tensor, ViT, optim } from '../lib/index.js';
import { randomise, randn, relErr, rng } from './util.js';

const CONFIG = { imageSize: 16, patchSize: 4, width: 32, depth: 2, heads: 2, numClasses: 5 };
const ADAPTER = { placement: 'block' as const, hidden: 8, groups: 2, scale: 0.5, dropout: 0 };

function cudaModel(): ViT | Error {
  try {
    return ViT.create(CONFIG, { device: 'cuda', adapter: ADAPTER });
  } catch (error) {
    return error as Error;
  }
}

test("'cpu' is the default and 'auto' picks the GPU only where one works", (t) => {
  using cpu = ViT.create(CONFIG);
  t.is(cpu.device, 'cpu');
  using auto = ViT.create(CONFIG, { device: 'auto' });
  t.is(auto.device, cudaModel() instanceof Error ? 'cpu' : 'cuda');
});

test("'cuda' either works and matches the CPU, or says why it is unavailable", (t) => {
  const gpu = cudaModel();
  if (gpu instanceof Error) {
    t.true(gpu instanceof NativeError, String(gpu));
    t.is((gpu as NativeError).code, 'RA_UNAVAILABLE');
    t.regex(gpu.message, /CUDA backend not built|cannot load the CUDA backend|no CUDA driver|no CUDA device|CUDA backend unavailable/);
    t.log(`no GPU here: ${gpu.message.split('\n')[0]}`);
    return;
  }
  using cuda = gpu;
  using cpu = ViT.create(CONFIG, { adapter: ADAPTER });
  randomise(cpu, 3);
  cuda.loadStateDict(cpu.stateDict());
  using images = Tensor.from(randn(rng(4), 2 * 3 * 16 * 16), [2, 3, 16, 16]);
  t.true(relErr(cuda.eval().forward(images).toArray(), cpu.eval().forward(images).toArray()) < 1e-4);
});

test('cudaGraphs: eval forwards replayed from a recording equal eager ones, across batch sizes, fold and a dtype change', (t) => {
  // On a GPU ('auto' picks it) the third forward at a batch size replays a CUDA graph; on the CPU
  // the recording is refused and every forward runs eagerly. Either way the numbers must be
  // those of a model without graphs, bit for bit (the same kernels in the same order).
  using plain = ViT.create(CONFIG, { device: 'auto', adapter: ADAPTER }).eval();
  using graphed = ViT.create(CONFIG, { device: 'auto', adapter: ADAPTER, cudaGraphs: true }).eval();
  randomise(plain, 5);
  for (const [name, { data }] of plain.stateDict()) graphed.setParam(name, data);
  const random = rng(11);
  const batches = [3, 3, 3, 3, 2, 2, 2, 3];
  const check = (label: string) => {
    for (const [i, B] of batches.entries()) {
      using x = Tensor.from(randn(random, B * 3 * 16 * 16), [B, 3, 16, 16]);
      using a = plain.forward(x);
      using b = graphed.forward(x);
      t.deepEqual(b.toArray(), a.toArray(), `${label}, forward ${i + 1} (batch ${B})`);
    }
  };
  check('adapters');
  // Weights written in place are read by the replay: no new recording needed, same numbers.
  const w = plain.param('blocks.1.mlp.fc2.weight').map((v) => v * 0.5);
  plain.setParam('blocks.1.mlp.fc2.weight', w);
  graphed.setParam('blocks.1.mlp.fc2.weight', w);
  check('after setParam');
  plain.fold();
  graphed.fold();
  check('folded');
  plain.dtype = 'bf16';
  graphed.dtype = 'bf16';
  check('bf16');
});

test('cudaGraphs: training steps replayed from a recording equal eager ones, float32 and bf16', async (t) => {
  // On a GPU the third trainStep of a shape replays the recorded step, reading each step's
  // learning rate, dropout key and drop-path masks from device memory; on the CPU every step
  // runs eagerly. Either way: the numbers of a model without graphs, bit for bit.
  for (const dtype of ['float32', 'bf16'] as const) {
    const config = { ...CONFIG, dropPath: 0.2 };
    const adapter = { ...ADAPTER, dropout: 0.1 };
    using plain = ViT.create(config, { device: 'auto', adapter, dtype }).train();
    using graphed = ViT.create(config, { device: 'auto', adapter, dtype, cudaGraphs: true }).train();
    randomise(plain, 7);
    for (const [name, { data }] of plain.stateDict()) graphed.setParam(name, data);
    const optA = optim.adamw({ lr: 1e-2, clipGradNorm: 1 }).attach(plain);
    const optB = optim.adamw({ lr: 1e-2, clipGradNorm: 1 }).attach(graphed);
    const random = rng(13);
    for (let i = 0; i < 5; i++) {
      optA.setLr((g) => g.baseLr * (1 - 0.1 * i));
      optB.setLr((g) => g.baseLr * (1 - 0.1 * i));
      using x = Tensor.from(randn(random, 4 * 3 * 16 * 16), [4, 3, 16, 16]);
      const labels = Int32Array.from({ length: 4 }, (_, j) => (i + j) % 5);
      const a = await optA.trainStep(x, { labels });
      const b = await optB.trainStep(x, { labels });
      a.logits.dispose();
      b.logits.dispose();
      t.is(b.loss, a.loss, `${dtype}: step ${i + 1} loss (${plain.device})`);
    }
    for (const p of plain.parameters().filter((p) => p.trainable))
      t.deepEqual(graphed.param(p.name), plain.param(p.name), `${dtype}: ${p.name}`);
  }
});
