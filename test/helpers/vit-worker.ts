/**
 * Worker-thread body for test/worker.test.ts (started through vit-worker.mjs). It loads the
 * package, and so the native addon, in its own environment and then, by workerData.mode:
 *
 *   'train'       runs trainSteps() on a tiny model, posts the results and returns: the thread
 *                 must then exit on its own (an idle compute queue keeps nothing alive);
 *   'loop-sync'   posts 'running', then calls forward() until terminate();
 *   'loop-async'  the same with forwardAsync(), so that a job is queued or running on the
 *                 addon's compute thread when the worker is terminated.
 *
 * With size 'big' the loops use a larger model, so that each call takes several milliseconds.
 */
import { parentPort, workerData } from 'node:worker_threads';

import { ViT } from '../../lib/index.js';
import { BIG, TINY, images, trainSteps } from './tiny.js';

export interface WorkerInput {
  mode: 'train' | 'loop-sync' | 'loop-async';
  seed: number;
  size?: 'tiny' | 'big';
}

const { mode, seed, size = 'tiny' } = workerData as WorkerInput;
const port = parentPort!;

if (mode === 'train') {
  using model = ViT.create({ ...TINY }, { seed });
  using x = images(2, TINY.imageSize, seed);
  const results = await trainSteps(model, x, [0, 2]);
  port.postMessage({ kind: 'done', results });
} else {
  const config = size === 'big' ? BIG : TINY;
  const model = ViT.create({ ...config }, { seed });
  const x = images(size === 'big' ? 8 : 2, config.imageSize, seed);
  port.postMessage({ kind: 'running' });
  for (let calls = 1; ; calls++) {
    using y = mode === 'loop-sync' ? model.forward(x) : await model.forwardAsync(x);
    if (calls === 3) port.postMessage({ kind: 'busy', shape: [...y.shape] });
  }
}
