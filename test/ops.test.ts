/**
 * Every op's backward against central finite differences of its forward, on tiny shapes.
 *
 * For random upstream gradients dy, L(inputs) = Σ y·dy; backward must give dL/d input. The
 * forward runs in float32, so the step is 1e-2 and the tolerance 2e-3 of the gradient's scale:
 * a wrong backward is off by O(1), rounding by ~1e-4.
 */
import test from 'ava';

import { native } from '../lib/native.js';
import { randn, relErr, rng } from './util.js';

type Tensors = Record<string, Float32Array>;

interface OpCase {
  op: string;
  attrs: Record<string, number>;
  inputs: Tensors;
  /** Inputs that are not differentiable (labels, masks). */
  constant?: string[];
}

function loss(outputs: Tensors, dy: Tensors): number {
  let sum = 0;
  for (const [name, g] of Object.entries(dy)) {
    const y = outputs[name];
    for (let i = 0; i < g.length; i++) sum += y[i] * g[i];
  }
  return sum;
}

function checkOp(t: import('ava').ExecutionContext, c: OpCase, seed: number): void {
  const random = rng(seed);
  const outputs = native.runOp(c.op, c.attrs, c.inputs);
  const dy: Tensors = {};
  for (const [name, y] of Object.entries(outputs)) if (name !== 'z') dy[name] = randn(random, y.length);
  const grads = native.runOp(c.op, c.attrs, c.inputs, dy);
  const eps = 1e-2;
  for (const [name, x] of Object.entries(c.inputs)) {
    if (c.constant?.includes(name)) continue;
    const analytic = grads[`d_${name}`];
    t.truthy(analytic, `${c.op} gives a gradient for ${name}`);
    const numeric = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const saved = x[i];
      x[i] = saved + eps;
      const plus = loss(native.runOp(c.op, c.attrs, c.inputs), dy);
      x[i] = saved - eps;
      const minus = loss(native.runOp(c.op, c.attrs, c.inputs), dy);
      x[i] = saved;
      numeric[i] = (plus - minus) / (2 * eps);
    }
    const err = relErr(analytic, numeric);
    t.true(err <= 2e-3, `${c.op}: d${name} relative error ${err.toExponential(2)}`);
  }
}

const r = rng(42);
const cases: OpCase[] = [
  // out ≤ 16 takes the skinny dot-product kernel, wider outputs oneDNN's matmul.
  { op: 'linear', attrs: { M: 3, in: 5, out: 4 }, inputs: { x: randn(r, 15), w: randn(r, 20, 0.5), b: randn(r, 4) } },
  { op: 'linear', attrs: { M: 4, in: 6, out: 20 }, inputs: { x: randn(r, 24), w: randn(r, 120, 0.5), b: randn(r, 20) } },
  { op: 'layernorm', attrs: { M: 3, D: 6, eps: 1e-6 }, inputs: { x: randn(r, 18), w: randn(r, 6), b: randn(r, 6) } },
  { op: 'gelu', attrs: { n: 24 }, inputs: { x: randn(r, 24, 1.5) } },
  // Up to 64 tokens a head runs as plain loops, beyond that as oneDNN gemms: one case each.
  { op: 'attention', attrs: { B: 2, N: 3, H: 2, Dh: 2 }, inputs: { qkv: randn(r, 2 * 3 * 12) } },
  { op: 'attention', attrs: { B: 1, N: 70, H: 2, Dh: 2 }, inputs: { qkv: randn(r, 70 * 12) } },
  {
    op: 'adapter',
    attrs: { M: 3, D: 8, R: 4, G: 2, scale: 0.7, dropout: 0.3, train: 1, seed: 5 },
    inputs: { x: randn(r, 24), A: randn(r, 32, 0.5), a: randn(r, 4, 0.3), Bw: randn(r, 16, 0.5), b: randn(r, 8, 0.3) },
  },
  {
    op: 'adapter',
    attrs: { M: 2, D: 12, R: 8, G: 4, scale: 1.3, dropout: 0, train: 0, seed: 0 },
    inputs: { x: randn(r, 24), A: randn(r, 96, 0.5), a: randn(r, 8, 0.3), Bw: randn(r, 24, 0.5), b: randn(r, 12, 0.3) },
  },
  { op: 'patch_embed', attrs: { B: 2, S: 4, p: 2, D: 3 }, inputs: { images: randn(r, 96), w: randn(r, 36, 0.3), b: randn(r, 3) } },
  { op: 'tokens', attrs: { B: 2, P: 3, D: 2 }, inputs: { embedded: randn(r, 12), cls: randn(r, 2), pos: randn(r, 8) } },
  {
    op: 'residual',
    attrs: { B: 3, row: 4 },
    inputs: { x: randn(r, 12), branch: randn(r, 12), keep: Float32Array.from([0, 1.25, 1.25]) },
    constant: ['keep'],
  },
  {
    op: 'residual',
    attrs: { B: 3, row: 4, in_place: 1 },
    inputs: { x: randn(r, 12), branch: randn(r, 12), keep: Float32Array.from([1.25, 0, 1.25]) },
    constant: ['keep'],
  },
  {
    op: 'cross_entropy',
    attrs: { B: 3, C: 4, smoothing: 0.1 },
    inputs: { logits: randn(r, 12, 2), labels: Float32Array.from([0, 3, 1]) },
    constant: ['labels'],
  },
  {
    op: 'cross_entropy',
    attrs: { B: 2, C: 3, smoothing: 0 },
    inputs: { logits: randn(r, 6, 2), soft: Float32Array.from([0.2, 0.5, 0.3, 1, 0, 0]) },
    constant: ['soft'],
  },
];

cases.forEach((c, index) => {
  test(`${c.op} (${Object.entries(c.attrs).map(([k, v]) => `${k}=${v}`).join(' ')}): backward = finite differences`, (t) => {
    checkOp(t, c, 1000 + index);
  });
});

test('dropout keeps the same mask for forward and backward, drops about p, and scales by 1/(1-p)', (t) => {
  const M = 64, D = 8, R = 8, G = 1;
  const identity = new Float32Array(R * D);
  for (let i = 0; i < R; i++) identity[i * D + i] = 1;
  const inputs = { x: new Float32Array(M * D).fill(1), A: identity, a: new Float32Array(R), Bw: identity.slice(), b: new Float32Array(D) };
  const attrs = { M, D, R, G, scale: 1, dropout: 0.25, train: 1, seed: 9 };
  // With A = B̂ = I, y = x + dropout(x): each entry is 1 (dropped) or 1 + 4/3 (kept).
  const y = native.runOp('adapter', attrs, inputs).y;
  let dropped = 0;
  for (const v of y) {
    t.true(Math.abs(v - 1) < 1e-6 || Math.abs(v - (1 + 1 / 0.75)) < 1e-5);
    if (Math.abs(v - 1) < 1e-6) dropped++;
  }
  const rate = dropped / y.length;
  t.true(rate > 0.17 && rate < 0.33, `drop rate ${rate}`);
  t.deepEqual(native.runOp('adapter', attrs, inputs).y, y, 'a given seed gives the same mask');
  t.notDeepEqual(native.runOp('adapter', { ...attrs, seed: 10 }, inputs).y, y, 'another seed, another mask');
  t.deepEqual(native.runOp('adapter', { ...attrs, train: 0 }, inputs).y, new Float32Array(M * D).fill(2), 'no dropout in eval');
});

test('the fold op equals the adapter followed by the Linear', (t) => {
  const random = rng(3);
  const M = 4, D = 8, R = 4, G = 2, O = 6, scale = 0.9;
  const adapter = { A: randn(random, R * D), a: randn(random, R), Bw: randn(random, D * (R / G)), b: randn(random, D) };
  const W = randn(random, O * D), c = randn(random, O), x = randn(random, M * D);
  const y = native.runOp('adapter', { M, D, R, G, scale, dropout: 0, train: 0, seed: 0 }, { x, ...adapter }).y;
  const viaAdapter = native.runOp('linear', { M, in: D, out: O }, { x: y, w: W, b: c }).y;
  const folded = native.runOp('fold', { O, D, R, G, scale }, { W, c, ...adapter });
  const viaFold = native.runOp('linear', { M, in: D, out: O }, { x, w: folded.W, b: folded.c }).y;
  t.true(relErr(viaFold, viaAdapter) < 1e-6);
});

test('layernorm_adapter (forward only) equals layernorm then adapter: dropout on and off, groups 1/2/4, strided rows', (t) => {
  const random = rng(17);
  const M = 9, D = 16, R = 8, eps = 1e-6, scale = 0.8, dropout = 0.3, seed = 21;
  for (const G of [1, 2, 4])
    for (const ldx of [D, D + 5])
      for (const [train, keep] of [[1, 1], [1, 0], [0, 0]]) {
        const label = `G=${G} ldx=${ldx} train=${train} keep=${keep}`;
        const strided = randn(random, M * ldx, 2);
        for (let i = 0; i < strided.length; i++) strided[i] += 1.5;  // a mean to remove
        const x = new Float32Array(M * D);
        for (let m = 0; m < M; m++) x.set(strided.subarray(m * ldx, m * ldx + D), m * D);
        const norm = { ln_w: randn(random, D, 0.3).map((v) => v + 1), ln_b: randn(random, D, 0.3) };
        const adapter = { A: randn(random, R * D, 0.5), a: randn(random, R, 0.3), Bw: randn(random, D * (R / G), 0.5), b: randn(random, D, 0.3) };
        const fused = native.runOp(
          'layernorm_adapter',
          { M, D, R, G, ldx, eps, scale, dropout, train, seed, keep },
          { x: strided, ...norm, ...adapter },
        );
        const a = native.runOp('layernorm', { M, D, eps }, { x, w: norm.ln_w, b: norm.ln_b }).y;
        const composed = native.runOp('adapter', { M, D, R, G, scale, dropout, train, seed }, { x: a, ...adapter });
        t.true(relErr(fused.u, composed.y) <= 1e-6, `${label}: u ${relErr(fused.u, composed.y)}`);
        t.true(relErr(fused.z, composed.z) <= 1e-6, `${label}: z ${relErr(fused.z, composed.z)}`);
        const dropped = fused.z.filter((v) => v === 0).length;
        t.true(train ? dropped > 0 && dropped < M * R : dropped === 0, `${label}: ${dropped} of z dropped`);
        if (!keep) {
          t.deepEqual(Object.keys(fused).sort(), ['u', 'z'], `${label}: nothing kept for backward`);
          continue;
        }
        t.true(relErr(fused.a_out, a) <= 1e-6, `${label}: a ${relErr(fused.a_out, a)}`);
        const mean = new Float32Array(M), rstd = new Float32Array(M);
        for (let m = 0; m < M; m++) {
          let s = 0, q = 0;
          for (let d = 0; d < D; d++) s += x[m * D + d];
          const mu = s / D;
          for (let d = 0; d < D; d++) q += (x[m * D + d] - mu) ** 2;
          mean[m] = mu;
          rstd[m] = 1 / Math.sqrt(q / D + eps);
        }
        t.true(relErr(fused.mean, mean) <= 1e-6, `${label}: mean ${relErr(fused.mean, mean)}`);
        t.true(relErr(fused.rstd, rstd) <= 1e-6, `${label}: rstd ${relErr(fused.rstd, rstd)}`);
      }
});
