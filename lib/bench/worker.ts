/**
 * One benchmark workload, run in a child process of its own (forked by runBench) so that its
 * peak resident memory is its own. It receives { workload, settings } over IPC, builds the model,
 * runs warm-up and measured steps, and sends back a BenchRow.
 *
 * A training step is forward + backward (+ a real AdamW update when lib/optim is there); an
 * inference step is an eval-mode forward. Images are random normalised floats, labels random.
 */
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { ONNX_INPUT, toOnnx } from '../io/onnx.js';
import { native } from '../native.js';
import { Tensor } from '../tensor.js';
import { ViT, type CreateOptions } from '../vit.js';
import { randn, rng, spread } from './stats.js';
import type { BenchRow, BenchSettings, ProfileEntry, Workload } from './types.js';

export interface WorkerRequest {
  workload: Workload;
  settings: BenchSettings;
}

export interface WorkerReply {
  row: BenchRow;
  backend: string;
  /** The training step's optimizer; null for inference rows. */
  optimizer: 'adamw' | 'none' | null;
}

interface OptimizerLike {
  /** Forward, loss, backward, update and zeroed gradients in one call (what the Trainer runs). */
  trainStep(images: Tensor, target: { labels: Int32Array }): Promise<{ logits: { dispose(): void } }>;
}

/** lib/optim's AdamW attached to the model, or null when this build has no optimizer module. */
async function makeOptimizer(model: ViT, settings: BenchSettings): Promise<OptimizerLike | null> {
  const specifier = '../optim/index.js';
  let mod: { adamw?: (o: { lr: number; weightDecay: number }) => { attach(m: ViT): OptimizerLike } };
  try {
    mod = (await import(specifier)) as typeof mod;
  } catch {
    return null;
  }
  if (typeof mod.adamw !== 'function') return null;
  return mod.adamw({ lr: settings.lr, weightDecay: settings.weightDecay }).attach(model);
}

/**
 * Device hook: on 'cpu' a plain ViT.create. For another device the creation is tried with a
 * `device` option; until ViT.create takes one (it rejects unknown options), the workload is
 * reported as skipped, "not available in this build".
 */
function createModel(workload: Workload, settings: BenchSettings): ViT | { skipped: string } {
  const { config, placement, trainable } = workload;
  const options: CreateOptions = {
    seed: settings.seed,
    profile: settings.profile,
    numClasses: config.numClasses,
    trainable: trainable ?? 'adapters',
    adapter: placement ? { placement, ...settings.adapter } : null,
    dtype: settings.dtype === 'bfloat16' ? 'bf16' : 'float32',
  };
  const arch = {
    imageSize: config.imageSize,
    patchSize: config.patchSize,
    width: config.width,
    depth: config.depth,
    heads: config.heads,
    mlpHidden: config.mlpHidden,
  };
  if (settings.device === 'cpu') return ViT.create(arch, options);
  try {
    return ViT.create(arch, { ...options, device: settings.device } as CreateOptions);
  } catch (e) {
    return { skipped: `${settings.device}: not available in this build (${(e as Error).message.replace(/\s+/g, ' ')})` };
  }
}

/** Random non-zero adapter weights, so no adapter is the identity (new adapters are). */
function randomiseAdapters(model: ViT, seed: number): void {
  const random = rng(seed + 7919);
  for (const p of model.parameters()) {
    if (p.role !== 'adapter') continue;
    const n = p.shape.reduce((a, b) => a * b, 1);
    const fanIn = p.shape.length > 1 ? n / p.shape[0] : 0;
    model.setParam(p.name, randn(random, n, fanIn ? 1 / Math.sqrt(fanIn) : 0.02));
  }
}

function profileEntries(raw: ReturnType<ViT['profile']>, repeats: number): ProfileEntry[] {
  const total = raw.reduce((a, e) => a + e.seconds, 0) || 1;
  return raw
    .map((e) => ({
      op: e.op,
      seconds: e.seconds / repeats,
      calls: e.calls / repeats,
      flops: e.flops / repeats,
      gflops: e.seconds > 0 && e.flops > 0 ? e.flops / e.seconds / 1e9 : 0,
      share: e.seconds / total,
    }))
    .sort((a, b) => b.seconds - a.seconds);
}

const mb = (bytes: number) => bytes / 2 ** 20;

export async function runWorkload(request: WorkerRequest): Promise<WorkerReply> {
  const { workload, settings } = request;
  const baselineRssMB = mb(process.memoryUsage().rss);
  const row: BenchRow = { ...workload, status: 'ok', baselineRssMB };
  const created = createModel(workload, settings);
  if (!(created instanceof ViT)) return { row: { ...row, status: 'skipped', note: created.skipped }, backend: native.backend, optimizer: null };
  const model = created;
  const { imageSize: S, numClasses: C } = workload.config;
  const B = workload.batch;

  if (settings.dtype === 'bfloat16') {
    if (workload.method === 'infer-onnxruntime') {
      model.dispose();
      return { row: { ...row, status: 'skipped', note: 'onnxruntime runs the exported float32 model: see a float32 run' }, backend: native.backend, optimizer: null };
    }
    if (!model.bf16Native) row.note = 'bf16 emulated: this CPU has no bf16 dot products (avx512_bf16 or AMX), so this row shows bf16 numerics, not bf16 speed';
  }
  if (workload.placement) randomiseAdapters(model, settings.seed);
  if (workload.method === 'infer-folded' || workload.method === 'infer-onnxruntime') model.fold();
  row.params = model.countParameters();

  const random = rng(settings.seed + 104729 * B);
  const images = Tensor.from(randn(random, B * 3 * S * S), [B, 3, S, S]);
  const labels = new Int32Array(B);
  for (let i = 0; i < B; i++) labels[i] = Math.min(C - 1, Math.floor(random() * C));

  let step: () => void | Promise<unknown>;
  let optimizer: OptimizerLike | null = null;
  if (workload.method === 'infer-onnxruntime') {
    const ort = await loadOnnxRuntime();
    if (!ort) {
      model.dispose();
      images.dispose();
      return { row: { ...row, status: 'skipped', note: 'onnxruntime-node is not installed' }, backend: native.backend, optimizer: null };
    }
    // The same folded weights, exported and run with as many threads as we use.
    const session = await ort.InferenceSession.create(toOnnx(model), {
      intraOpNumThreads: os.availableParallelism(),
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
    });
    const input = new ort.Tensor('float32', images.toArray(), [B, 3, S, S]);
    step = () => session.run({ [ONNX_INPUT]: input });
  } else if (workload.kind === 'train') {
    model.train();
    optimizer = await makeOptimizer(model, settings);
    step = optimizer
      ? async () => (await optimizer!.trainStep(images, { labels })).logits.dispose()
      : () => {
          model.zeroGrad();
          model.forward(images).dispose();
          model.backward({ labels });
        };
  } else {
    model.eval();
    step = () => model.forward(images).dispose();
  }

  for (let i = 0; i < settings.warmup; i++) await step();
  if (settings.profile) model.profile({ reset: true });
  const samplesMs: number[] = [];
  for (let i = 0; i < settings.repeats; i++) {
    const t0 = process.hrtime.bigint();
    await step();
    samplesMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  if (settings.profile) row.profile = profileEntries(model.profile({ reset: true }), settings.repeats);

  row.samplesMs = samplesMs;
  row.stepMs = spread(samplesMs);
  row.imagesPerSec = (B * 1000) / row.stepMs.median;
  row.peakRssMB = process.resourceUsage().maxRSS / 1024; // maxRSS is in kilobytes
  if (workload.kind === 'train' && !optimizer) row.note = 'no optimizer in this build: forward + backward only';
  images.dispose();
  model.dispose();
  return { row, backend: native.backend, optimizer: workload.kind === 'train' ? (optimizer ? 'adamw' : 'none') : null };
}

interface OrtModule {
  InferenceSession: { create(model: Uint8Array, options: object): Promise<{ run(feeds: object): Promise<unknown> }> };
  Tensor: new (type: 'float32', data: Float32Array, dims: number[]) => object;
}

/** onnxruntime-node when installed (a dev dependency), else null. */
async function loadOnnxRuntime(): Promise<OrtModule | null> {
  const name = 'onnxruntime-node';  // not a literal import: type-checking must not need it
  try {
    return (await import(name)) as OrtModule;
  } catch {
    return null;
  }
}

// Entry point when forked by runBench (and only then: importing this module does nothing).
if (process.send && process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.once('message', (message: WorkerRequest) => {
    // One workload per process (its peak RSS is the row's): exit as soon as the reply is sent,
    // rather than waiting for the IPC channel and native threads to wind down. A failed workload
    // still answers with an error row, then exits 1 so the parent sees the failure either way.
    runWorkload(message).then(
      (reply) => process.send!(reply, () => process.exit(0)),
      (error: Error) => {
        const row: BenchRow = { ...message.workload, status: 'error', note: `${error.name}: ${error.message}` };
        process.send!({ row, backend: '', optimizer: null } satisfies WorkerReply, () => process.exit(1));
      },
    );
  });
}
