/**
 * bf16 compute (ViT dtype 'bf16'): what it computes, and that its weight copies follow the
 * float32 masters through every way they change.
 *
 * The reference for one Linear is its definition: both operands rounded to bf16 (round to
 * nearest, ties to even — written again in test/util.ts, independently of the native code), products summed
 * in float64 here and in float32 there. On a CPU without bf16 dot products the native side
 * emulates exactly that; with them, oneDNN's bf16 matmul does; the tolerances hold for both.
 */
import test from 'ava';

import { ConfigError, Tensor, ViT, optim } from '../lib/index.js';
import { native } from '../lib/native.js';
import { images } from './helpers/tiny.js';
import { bf16Round as bf16, randn, randomise, relErr, rng } from './util.js';

/** y [M, O] = a [M, K] · bᵀ (b [O, K]) + bias, in float64. */
function matmulT(a: ArrayLike<number>, b: ArrayLike<number>, M: number, K: number, O: number, bias?: ArrayLike<number>): Float64Array {
  const y = new Float64Array(M * O);
  for (let m = 0; m < M; m++)
    for (let o = 0; o < O; o++) {
      let s = bias ? bias[o] : 0;
      for (let k = 0; k < K; k++) s += a[m * K + k] * b[o * K + k];
      y[m * O + o] = s;
    }
  return y;
}

function transpose(x: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const t = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = x[r * cols + c];
  return t;
}

test('the rounding this file uses: nearest, ties to even', (t) => {
  t.is(bf16(1), 1);
  t.is(bf16(1 + 2 ** -8), 1);               // a tie: stays on the even neighbour
  t.is(bf16(1 + 3 * 2 ** -8), 1 + 2 ** -6);  // a tie: goes up to the even neighbour
  t.is(bf16(1 + 2 ** -8 + 2 ** -20), 1 + 2 ** -7);
  t.is(bf16(-3.0000001), -3);
});

test('a bf16 Linear is the float32 product of bf16-rounded operands, forward and backward', (t) => {
  const random = rng(7);
  // Shapes on both sides of the kernels' blocking, and K long enough for rounding to show.
  for (const [M, K, O] of [[5, 37, 21], [64, 200, 96]] as const) {
    const x = randn(random, M * K), w = randn(random, O * K, 0.1), b = randn(random, O), dy = randn(random, M * O);
    const attrs = { M, in: K, out: O, bf16: 1 };
    const got = native.runOp('linear', attrs, { x, w, b }, { y: dy });
    const xr = x.map(bf16), wr = w.map(bf16), dyr = dy.map(bf16);
    t.true(relErr(got.y, matmulT(xr, wr, M, K, O, b)) < 2e-6, `y ${M}x${K}x${O}`);
    // dx = dy · W with dy rounded as well: both operands of every bf16 product are bf16.
    t.true(relErr(got.d_x, matmulT(dyr, transpose(wr, O, K), M, O, K)) < 2e-6, `d_x ${M}x${K}x${O}`);
    // The weight gradient is float32 (master weights train in float32).
    t.true(relErr(got.d_w, matmulT(transpose(dy, M, O), transpose(x, M, K), O, M, K)) < 2e-6, `d_w ${M}x${K}x${O}`);
    // And it is not the float32 product: the test would notice a path that ignored bf16.
    const plain = native.runOp('linear', { M, in: K, out: O }, { x, w, b });
    t.true(relErr(got.y, plain.y) > 1e-4, 'bf16 differs from float32');
  }
});

const CONFIG = {
  imageSize: 32, patchSize: 8, width: 64, depth: 2, heads: 4, numClasses: 5,
  adapter: { placement: 'block', hidden: 8, groups: 2, scale: 0.7 },
} as const;

function model(seed = 3): ViT {
  const vit = ViT.create(CONFIG, { seed });
  randomise(vit, seed);
  return vit.eval();
}

function logits(vit: ViT, x: Tensor): Float32Array {
  using y = vit.forward(x);
  return y.toArray();
}

test('dtype: float32 by default, bf16 on request, and a clear error for anything else', (t) => {
  using a = ViT.create(CONFIG);
  t.is(a.dtype, 'float32');
  using b = ViT.create(CONFIG, { dtype: 'bf16' });
  t.is(b.dtype, 'bf16');
  t.is(typeof b.bf16Native, 'boolean');
  t.throws(() => ViT.create(CONFIG, { dtype: 'float16' as never }), { instanceOf: ConfigError, message: /'float32' \| 'bf16'.*dtype.*float16/ });
  t.throws(() => { b.dtype = 'fp8' as never; }, { instanceOf: ConfigError });
  t.is(b.dtype, 'bf16', 'a refused dtype changes nothing');
});

test('bf16 logits are near the float32 ones, and float32 comes back bit for bit', (t) => {
  using vit = model();
  using x = images(3, 32, 5);
  const full = logits(vit, x);
  vit.dtype = 'bf16';
  const half = logits(vit, x);
  const err = relErr(half, full);
  // bf16 keeps 8 bits of mantissa: ~4e-3 per rounding, averaged down over the sums.
  t.true(err > 1e-5 && err < 3e-2, `bf16 vs float32 logits: ${err.toExponential(2)}`);
  t.deepEqual(logits(vit, x), half, 'bf16 is deterministic');
  vit.dtype = 'float32';
  t.deepEqual(logits(vit, x), full, 'float32 masters untouched');
});

test('the bf16 copies follow the masters: setParam, load of a state dict, an optimizer step, fold', (t) => {
  using x = images(2, 32, 9);
  // Reference: a fresh bf16 model given the same float32 values (its copies are made once).
  const freshBf16Logits = (source: ViT): Float32Array => {
    using fresh = ViT.create(source.config, { dtype: 'bf16' }).eval();
    for (const [name, { data }] of source.stateDict()) fresh.setParam(name, data);
    return logits(fresh, x);
  };

  using vit = model(11);
  vit.dtype = 'bf16';
  logits(vit, x);  // copies made
  const qkv = vit.param('blocks.0.attn.qkv.weight');
  vit.setParam('blocks.0.attn.qkv.weight', qkv.map((v) => v * 1.5));
  t.deepEqual(logits(vit, x), freshBf16Logits(vit), 'after setParam');

  // Full fine-tuning: the backbone's masters change at every step.
  vit.setTrainable('all').train();
  const opt = optim.adamw({ lr: 1e-2 }).attach(vit);
  const before = vit.param('blocks.1.mlp.fc1.weight');
  vit.forward(x).dispose();
  vit.backward({ labels: [1, 3] });
  opt.step();
  t.notDeepEqual(vit.param('blocks.1.mlp.fc1.weight'), before);
  vit.eval();
  t.deepEqual(logits(vit, x), freshBf16Logits(vit), 'after an AdamW step on the backbone');

  // Fold works on the float32 masters; the folded model's bf16 copies are made from them.
  vit.fold();
  t.is(vit.config.adapter, null);
  t.deepEqual(logits(vit, x), freshBf16Logits(vit), 'after fold');
});

test('fold in bf16: the folded model matches the unfolded one to bf16 rounding, and the masters exactly', (t) => {
  using x = images(4, 32, 2);
  using a = model(21);
  using b = model(21);
  a.dtype = 'bf16';
  const unfolded = logits(a, x);
  a.fold();
  const folded = logits(a, x);
  const err = relErr(folded, unfolded);
  t.true(err < 3e-2, `bf16 fold error ${err.toExponential(2)}`);
  // The fold itself ran on float32 masters: a float32 fold gives the same weights.
  b.fold();
  for (const [name, { data }] of b.stateDict()) t.deepEqual(a.param(name), data, name);
});

test('GELU backward from the bf16 copy of its input equals the float32 backward of the rounded input', (t) => {
  const random = rng(23);
  const n = 9001;  // not a multiple of the kernel's chunk
  const x = randn(random, n, 2), dy = randn(random, n);
  const got = native.runOp('gelu', { n, bf16: 1 }, { x }, { y: dy });
  const rounded = native.runOp('gelu', { n }, { x: x.map(bf16) }, { y: dy });
  t.deepEqual(got.d_x, rounded.d_x);
  t.true(relErr(got.d_x, native.runOp('gelu', { n }, { x }, { y: dy }).d_x) > 1e-5, 'and it is not the unrounded one');
});

test('a bf16 training step: loss and adapter gradients near float32 ones (GELU input kept in bf16)', (t) => {
  const grads = (dtype: 'float32' | 'bf16') => {
    using vit = model(31);
    vit.dtype = dtype;
    vit.train();
    using x = images(4, 32, 8);
    vit.forward(x).dispose();
    const loss = vit.backward({ labels: [0, 1, 2, 4] });
    const g = vit.grad('blocks.1.adapter_mlp.conv_A.weight');
    const h = vit.grad('blocks.0.adapter_attn.conv_B.weight');
    return { loss, g, h };
  };
  const full = grads('float32'), half = grads('bf16');
  t.true(Math.abs(half.loss - full.loss) / Math.abs(full.loss) < 2e-2, `loss ${half.loss} vs ${full.loss}`);
  for (const key of ['g', 'h'] as const) {
    const e = relErr(half[key], full[key]);
    t.true(e > 1e-6 && e < 5e-2, `${key}: bf16 vs float32 gradient ${e.toExponential(2)}`);
  }
});
