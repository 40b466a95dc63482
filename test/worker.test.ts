/**
 * Threads: the addon in worker_threads (loaded, used, exiting, terminated mid-call), and the
 * async API (same numbers as the sync one, the event loop stays free, busy models refuse sync
 * calls, inputs may be disposed while a job reads them).
 *
 * The async tests are serial (ava runs them first, one at a time): the event-loop test measures
 * timing, and nothing else may block the main thread meanwhile. The worker tests then run
 * concurrently with each other, since most of their time is the start of each worker (tsx).
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { readFile } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';

import { BusyError, Tensor, ViT } from '../lib/index.js';
import type { ViTOptions } from '../lib/index.js';
import { BIG, TINY, images, trainSteps, values } from './helpers/tiny.js';
import type { TrainStepResults } from './helpers/tiny.js';
import type { WorkerInput } from './helpers/vit-worker.js';

const WORKER = new URL('./helpers/vit-worker.mjs', import.meta.url);

interface Message {
  kind: string;
  results?: TrainStepResults;
  shape?: number[];
}

/** A worker with its messages buffered, so none is missed between two waits. */
class Thread {
  readonly worker: Worker;
  readonly errors: Error[] = [];
  readonly exited: Promise<number>;
  #messages: Message[] = [];
  #waiters: (() => void)[] = [];
  #exitCode: number | undefined;

  constructor(input: WorkerInput) {
    this.worker = new Worker(WORKER, { workerData: input });
    this.worker.on('error', (e) => this.errors.push(e));
    this.worker.on('message', (m: Message) => {
      this.#messages.push(m);
      this.#wake();
    });
    this.exited = new Promise((resolve) =>
      this.worker.once('exit', (code) => {
        this.#exitCode = code;
        this.#wake();
        resolve(code);
      }),
    );
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** The next message of this kind; rejects if the worker exits or `ms` pass first. */
  async next(kind: string, ms = 20_000): Promise<Message> {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.#messages.findIndex((m) => m.kind === kind);
      if (i >= 0) return this.#messages.splice(i, 1)[0];
      if (this.#exitCode !== undefined)
        throw new Error(`worker exited (${this.#exitCode}) before '${kind}'; errors: ${this.errors.map(String).join('; ')}`);
      if (Date.now() > deadline) throw new Error(`no '${kind}' from the worker within ${ms} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }
}

async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The main thread's own forward of the tiny model on a fixed input. */
function mainForward(seed = 5): Float32Array {
  using model = ViT.create({ ...TINY }, { seed });
  using x = images(2, TINY.imageSize, 77);
  using y = model.forward(x);
  return y.toArray();
}

// ---- (a) the addon in worker threads ------------------------------------------------------------

test('workers, one after another, load the addon, train, get the main thread’s numbers, and exit', async (t) => {
  for (const seed of [1, 2, 3]) {
    const thread = new Thread({ mode: 'train', seed });
    const { results } = await thread.next('done');
    // The same steps in the main thread give the same numbers.
    using model = ViT.create({ ...TINY }, { seed });
    using x = images(2, TINY.imageSize, seed);
    const expected = await trainSteps(model, x, [0, 2]);
    t.deepEqual(results, expected, `seed ${seed}`);
    t.true(Number.isFinite(expected.loss) && expected.loss > 0);
    // Nothing keeps a finished worker alive, and it exits cleanly.
    t.is(await within(thread.exited, 10_000, `exit of worker ${seed}`), 0);
    t.deepEqual(thread.errors, []);
  }
});

test('workers running at the same time each get their own addon state', async (t) => {
  const seeds = [11, 12];
  const threads = seeds.map((seed) => new Thread({ mode: 'train', seed }));
  const all = await Promise.all(threads.map((th) => th.next('done')));
  for (const [i, seed] of seeds.entries()) {
    using model = ViT.create({ ...TINY }, { seed });
    using x = images(2, TINY.imageSize, seed);
    t.deepEqual(all[i].results, await trainSteps(model, x, [0, 2]), `seed ${seed}`);
  }
  t.deepEqual(await Promise.all(threads.map((th) => within(th.exited, 10_000, 'exit'))), [0, 0]);
});

test('workers terminated in the middle of forward loops leave the main process working', async (t) => {
  const before = mainForward();
  const cases: { input: WorkerInput; wait: 'running' | 'busy'; after: number }[] = [
    { input: { mode: 'loop-sync', seed: 1 }, wait: 'running', after: 0 },
    { input: { mode: 'loop-sync', seed: 3, size: 'big' }, wait: 'busy', after: 15 },
    { input: { mode: 'loop-async', seed: 4 }, wait: 'running', after: 0 },
    { input: { mode: 'loop-async', seed: 5 }, wait: 'busy', after: 0 },
    { input: { mode: 'loop-async', seed: 7, size: 'big' }, wait: 'busy', after: 15 },
  ];
  for (const { input, wait, after } of cases) {
    const what = `${input.mode} ${input.size ?? 'tiny'} terminated ${after} ms after '${wait}'`;
    const thread = new Thread(input);
    await thread.next(wait);
    if (after) await delay(after);
    const code = await within(thread.worker.terminate(), 10_000, `terminate (${what})`);
    t.is(code, 1, what);
    t.is(await thread.exited, 1, what);
    t.deepEqual(thread.errors, [], what);
    // The main thread's addon is untouched.
    t.deepEqual(mainForward(), before, what);
  }
  // And a new worker can still load the addon and finish normally.
  const fresh = new Thread({ mode: 'train', seed: 8 });
  const { results } = await fresh.next('done');
  t.true(Number.isFinite(results!.loss));
  t.is(await within(fresh.exited, 10_000, 'exit of the fresh worker'), 0);
});

// ---- (b) async calls: same numbers, free event loop ---------------------------------------------

test.serial('forwardAsync / backwardAsync give exactly the numbers of forward / backward', async (t) => {
  // Eval: the same model, sync then async.
  {
    using model = ViT.create({ ...TINY }, { seed: 3 });
    using x = images(4, TINY.imageSize, 8);
    using sync = model.forward(x);
    using async = await model.forwardAsync(x);
    t.deepEqual(async.shape, sync.shape);
    t.deepEqual(async.toArray(), sync.toArray());
  }
  // Training (dropout, drop path, every parameter trainable, an input gradient, smoothing and
  // soft targets): two identical models, one driven sync, the other async.
  const config: ViTOptions = { ...TINY, depth: 2, dropPath: 0.2, trainable: 'all', adapter: { ...TINY.adapter, dropout: 0.3 } };
  using a = ViT.create(config, { seed: 9 }).train();
  using b = ViT.create(config, { seed: 9 }).train();
  using x = images(4, TINY.imageSize, 10);
  const soft = new Float32Array(values(12, 4).map((v) => Math.abs(v)));
  for (const [step, target] of [
    { labels: [0, 1, 2, 1] },
    { labels: [2, 2, 0, 1], labelSmoothing: 0.1 },
    { softTargets: soft },
  ].entries()) {
    using ya = a.forward(x, { inputGrad: true });
    using yb = await b.forwardAsync(x, { inputGrad: true });
    t.deepEqual(yb.toArray(), ya.toArray(), `logits, step ${step}`);
    t.is(await b.backwardAsync(target), a.backward(target), `loss, step ${step}`);
    using ga = a.inputGrad();
    using gb = b.inputGrad();
    t.deepEqual(gb.toArray(), ga.toArray(), `input gradient, step ${step}`);
  }
  for (const p of a.parameters()) t.deepEqual(b.grad(p.name), a.grad(p.name), p.name);
});

const LARGE: ViTOptions = { imageSize: 64, patchSize: 8, width: 64, depth: 4, heads: 4, numClasses: 10, adapter: { hidden: 8, groups: 2 } };

/** A batch for which a sync forward of `model` takes at least `ms` (the batch doubles until it does). */
function slowBatch(model: ViT, ms: number): { x: Tensor; syncMs: number; expected: Float32Array } {
  for (let B = 16; ; B *= 2) {
    const x = images(B, LARGE.imageSize!, B);
    model.forward(x).dispose(); // warm up: plan and primitive cache
    const start = performance.now();
    using y = model.forward(x);
    const syncMs = performance.now() - start;
    if (syncMs >= ms || B >= 1024) return { x, syncMs, expected: y.toArray() };
    x.dispose();
  }
}

test.serial('while a long forwardAsync runs, timers fire and file reads complete', async (t) => {
  using model = ViT.create(LARGE, { seed: 1 });
  const { x, syncMs, expected } = slowBatch(model, 120);
  using _x = x;
  t.log(`batch ${x.shape[0]}: sync forward ${syncMs.toFixed(0)} ms`);

  let ticks = 0;
  let maxGap = 0;
  let last = performance.now();
  const interval = setInterval(() => {
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
    ticks++;
  }, 2);
  const start = performance.now();
  let readMs = -1;
  const read = readFile(new URL(import.meta.url)).then((bytes) => {
    readMs = performance.now() - start;
    return bytes;
  });
  let immediateMs = -1;
  setImmediate(() => {
    immediateMs = performance.now() - start;
  });
  const pending = model.forwardAsync(x);
  const forwardFinished = pending.then(() => performance.now() - start);
  const asyncMs = await forwardFinished;
  clearInterval(interval);
  using y = await pending;
  t.log(`async forward ${asyncMs.toFixed(0)} ms: ${ticks} interval ticks (largest gap ${maxGap.toFixed(1)} ms), file read after ${readMs.toFixed(1)} ms`);

  t.deepEqual(y.toArray(), expected);
  t.true((await read).length > 0);
  t.true(immediateMs >= 0 && immediateMs < asyncMs, `setImmediate ran after ${immediateMs} ms`);
  t.true(readMs >= 0 && readMs < asyncMs, `file read finished after ${readMs} ms, the forward after ${asyncMs} ms`);
  t.true(ticks >= 3, `only ${ticks} interval ticks during a ${asyncMs.toFixed(0)} ms forward`);
  t.true(maxGap < asyncMs, `the event loop stalled for ${maxGap} ms`);
});

// ---- (c) busy models and inputs disposed during a call ------------------------------------------

function busy(t: ExecutionContext, what: string, call: () => unknown): void {
  const error = t.throws(call, { instanceOf: BusyError }, what);
  t.regex(error?.message ?? '', /busy|async call/, what);
}

test.serial('sync calls on a model with an async call in flight → BusyError; nothing changes', async (t) => {
  using model = ViT.create({ ...TINY }, { seed: 2 }).train();
  using x = images(2, TINY.imageSize, 6);
  const headBias = model.param('head.bias');

  const pending = model.forwardAsync(x);
  busy(t, 'forward', () => model.forward(x));
  busy(t, 'param', () => model.param('head.bias'));
  busy(t, 'setParam', () => model.setParam('head.bias', new Float32Array([9, 9, 9])));
  busy(t, 'grad', () => model.grad('head.bias'));
  busy(t, 'zeroGrad', () => model.zeroGrad());
  busy(t, 'parameters', () => model.parameters());
  busy(t, 'config', () => model.config);
  busy(t, 'stateDict', () => model.stateDict());
  busy(t, 'setTrainable', () => model.setTrainable('all'));
  busy(t, 'fold', () => model.fold());
  busy(t, 'inputGrad', () => model.inputGrad());
  busy(t, 'dispose', () => model.dispose());
  t.false(model.disposed);
  await t.throwsAsync(model.forwardAsync(x), { instanceOf: BusyError }, 'a second forwardAsync');
  using logits = await pending;
  t.deepEqual(logits.shape, [2, 3]);

  // The refused calls changed nothing, and the model is free again.
  t.deepEqual(model.param('head.bias'), headBias);
  t.is(model.config.trainable, 'adapters');
  t.not(model.config.adapter, null);

  const backward = model.backwardAsync({ labels: [1, 2] });
  busy(t, 'backward during backwardAsync', () => model.backward({ labels: [1, 2] }));
  busy(t, 'zeroGrad during backwardAsync', () => model.zeroGrad());
  await t.throwsAsync(model.backwardAsync({ labels: [1, 2] }), { instanceOf: BusyError }, 'a second backwardAsync');
  t.true(Number.isFinite(await backward));
  t.false(model.grad('head.bias').every((v) => v === 0));
});

test.serial('another model works synchronously while one is busy', async (t) => {
  using busyModel = ViT.create(LARGE, { seed: 4 });
  using other = ViT.create({ ...TINY }, { seed: 5 });
  using bx = images(16, LARGE.imageSize!, 1);
  using ox = images(2, TINY.imageSize, 2);
  using expectedBig = busyModel.forward(bx);
  using expectedTiny = other.forward(ox);

  const pending = busyModel.forwardAsync(bx);
  for (let i = 0; i < 5; i++) {
    using y = other.forward(ox);
    t.deepEqual(y.toArray(), expectedTiny.toArray());
  }
  using big = await pending;
  t.deepEqual(big.toArray(), expectedBig.toArray());
});

test.serial('disposing the images of an in-flight forwardAsync is safe; the result is still right', async (t) => {
  using model = ViT.create(LARGE, { seed: 6 });
  const B = 16;
  const data = values(B * 3 * LARGE.imageSize! ** 2, 12);
  let expected: Float32Array;
  {
    using x = Tensor.from(data, [B, 3, LARGE.imageSize!, LARGE.imageSize!]);
    using y = model.forward(x);
    expected = y.toArray();
  }
  const x = Tensor.from(data, [B, 3, LARGE.imageSize!, LARGE.imageSize!]);
  const pending = model.forwardAsync(x);
  x.dispose();
  t.true(x.disposed);
  // Allocate and fill tensors of the same size, which would reuse freed memory.
  const junk = Array.from({ length: 4 }, (_, i) => Tensor.from(new Float32Array(data.length).fill(1e3 * (i + 1)), [data.length]));
  using y = await pending;
  t.deepEqual(y.toArray(), expected);
  for (const j of junk) j.dispose();
});

// The targets are copied at the call: changing the array after backwardAsync() returns must not
// change the loss. A long job of another model holds the compute thread, so the change always
// happens before the queued backward runs.
test.serial('backwardAsync uses the targets as they were at the call', async (t) => {
  using blocker = ViT.create(LARGE, { seed: 7 });
  using bx = images(32, LARGE.imageSize!, 3);
  using model = ViT.create({ ...TINY, adapter: { ...TINY.adapter, dropout: 0 } }, { seed: 1 }).train();
  using x = images(2, TINY.imageSize, 5);
  model.forward(x).dispose();
  const expected = model.backward({ labels: [0, 1] });
  t.not(model.backward({ labels: [2, 1] }), expected); // the change below would show

  for (const changed of [2, 1000]) {
    const labels = new Int32Array([0, 1]);
    const blocking = blocker.forwardAsync(bx);
    const loss = model.backwardAsync({ labels });
    labels[0] = changed;
    (await blocking).dispose();
    t.is(await loss, expected, `labels[0] changed to ${changed} after the call`);
  }
});
