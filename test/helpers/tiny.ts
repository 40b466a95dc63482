/** Tiny model configs and deterministic inputs shared by the error, tensor and worker tests. */
import { Tensor, ViT } from '../../lib/index.js';
import type { ViTOptions } from '../../lib/index.js';

/** 16×16 images in 8×8 patches (5 tokens), width 16, one block, 2 heads, 3 classes. */
export const TINY = Object.freeze({
  imageSize: 16,
  patchSize: 8,
  width: 16,
  depth: 1,
  heads: 2,
  numClasses: 3,
  adapter: Object.freeze({ placement: 'attn' as const, hidden: 4, groups: 2 }),
}) satisfies ViTOptions;

/** Deterministic pseudo-random values in [-1, 1) (xorshift32). */
export function values(n: number, seed = 1): Float32Array {
  const out = new Float32Array(n);
  let s = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

/** A batch of B deterministic images [B, 3, S, S]. */
export function images(B: number, S: number, seed = 1): Tensor {
  return Tensor.from(values(B * 3 * S * S, seed), [B, 3, S, S]);
}

/** What {@link trainSteps} computed, as plain arrays and numbers (they cross thread boundaries). */
export interface TrainStepResults {
  logits: Float32Array;
  loss: number;
  grads: Record<string, Float32Array>;
  asyncLogits: Float32Array;
  asyncLoss: number;
  asyncGrads: Record<string, Float32Array>;
}

function trainableGrads(model: ViT): Record<string, Float32Array> {
  const out: Record<string, Float32Array> = {};
  for (const p of model.parameters()) if (p.trainable) out[p.name] = model.grad(p.name);
  return out;
}

/**
 * A fixed little training sequence: a sync forward + backward, then an async one. Run in the
 * main thread and in worker threads, so their results can be compared.
 */
export async function trainSteps(model: ViT, x: Tensor, labels: number[]): Promise<TrainStepResults> {
  model.train();
  model.zeroGrad();
  using logits = model.forward(x);
  const loss = model.backward({ labels });
  const grads = trainableGrads(model);
  model.zeroGrad();
  using asyncLogits = await model.forwardAsync(x);
  const asyncLoss = await model.backwardAsync({ labels });
  const asyncGrads = trainableGrads(model);
  return { logits: logits.toArray(), loss, grads, asyncLogits: asyncLogits.toArray(), asyncLoss, asyncGrads };
}

/** A model whose forward on 8 images takes milliseconds rather than microseconds. */
export const BIG = Object.freeze({
  imageSize: 32,
  patchSize: 4,
  width: 64,
  depth: 2,
  heads: 4,
  numClasses: 10,
  adapter: Object.freeze({ placement: 'block' as const, hidden: 8, groups: 2 }),
}) satisfies ViTOptions;
