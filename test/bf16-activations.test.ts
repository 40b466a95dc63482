/**
 * bf16 activations: in bf16 compute with fc2 frozen, the MLP runs as autocast runs it — fc1
 * writes bf16, GELU reads and writes bf16, fc2 reads bf16. Each op against its definition (the
 * float32 op, then rounding, with an independent rounding), and the model against float32.
 */
import test from 'ava';

import { Tensor, ViT } from '../lib/index.js';
import { native } from '../lib/native.js';
import { bf16Round, randn, randomise, relErr, rng } from './util.js';

/** One bf16 step at |v|: the spacing of bf16 values there. */
function ulp(v: number): number {
  return 2 ** (Math.floor(Math.log2(Math.max(Math.abs(v), 2 ** -126))) - 7);
}

test('a Linear with bf16 activations returns the bf16 Linear\'s float32 result, rounded once', (t) => {
  const random = rng(17);
  for (const [M, K, O] of [[5, 37, 21], [64, 200, 96]] as const) {
    const x = randn(random, M * K), w = randn(random, O * K, 0.1), b = randn(random, O);
    const wide = native.runOp('linear', { M, in: K, out: O, bf16: 1 }, { x, w, b }).y;
    const narrow = native.runOp('linear', { M, in: K, out: O, bf16: 2 }, { x, w, b }).y;
    let rounded = 0;
    for (let i = 0; i < wide.length; i++) {
      t.is(bf16Round(narrow[i]), narrow[i], `y[${i}] is a bf16 value`);
      // One rounding of (nearly) the same float32 sum: the same value, or its neighbour where
      // a different summation order put the sum across a rounding boundary.
      if (Math.abs(narrow[i] - bf16Round(wide[i])) > ulp(wide[i])) {
        t.fail(`y[${i}] = ${narrow[i]}, float32 ${wide[i]} rounds to ${bf16Round(wide[i])}`);
        return;
      }
      rounded += narrow[i] !== wide[i] ? 1 : 0;
    }
    t.true(rounded > wide.length / 2, 'the output is rounded, not the float32 result');
  }
});

test('GELU in bf16 is the float32 GELU of the bf16 input, rounded, bit for bit; its backward too', (t) => {
  const random = rng(3);
  const x = randn(random, 20000, 3), dy = randn(random, 20000);
  const got = native.runOp('gelu', { n: x.length, bf16: 2 }, { x }, { y: dy });
  const reference = native.runOp('gelu', { n: x.length }, { x: x.map(bf16Round) }).y.map(bf16Round);
  t.deepEqual(got.y, reference);
  // Backward with bf16 gradients: the float32 backward (from the rounded input) of the rounded
  // dy, rounded.
  const backward = native.runOp('gelu', { n: x.length, bf16: 1 }, { x }, { y: dy.map(bf16Round) }).d_x.map(bf16Round);
  t.deepEqual(got.d_x, backward);
  t.notDeepEqual(got.d_x, native.runOp('gelu', { n: x.length, bf16: 1 }, { x }, { y: dy }).d_x, 'rounded, not float32');
});

const CONFIG = {
  imageSize: 32, patchSize: 8, width: 64, depth: 2, heads: 4, mlpHidden: 256, numClasses: 5,
  adapter: { placement: 'attn', hidden: 8, groups: 2, scale: 0.7 },
} as const;

test('a model with bf16 MLP activations stays near float32, and the activations are really bf16', (t) => {
  using m = ViT.create(CONFIG, { seed: 1 });
  randomise(m, 5);
  using images = Tensor.from(randn(rng(9), 4 * 3 * 32 * 32), [4, 3, 32, 32]);
  m.eval();
  using f32 = m.forward(images);
  m.dtype = 'bf16';
  using bf16 = m.forward(images);
  // The same model with fc2 training keeps the MLP's activations in float32 (its weight gradient
  // reads GELU's output), rounding only the Linears' operands: close, but not the same numbers.
  m.setTrainable('all');
  using bf16Wide = m.forward(images);
  const err = relErr(bf16.toArray(), f32.toArray());
  t.true(err < 3e-2, `bf16 activations vs float32: ${err}`);
  t.true(err > 1e-5, 'bf16 is not float32');
  t.notDeepEqual(bf16.toArray(), bf16Wide.toArray(), 'rounding fc1\'s output changes the numbers');
  t.true(relErr(bf16.toArray(), bf16Wide.toArray()) < 3e-2);
});

test('attention can hand its output and its input gradient over in bf16: the float32 ones, rounded, bit for bit', (t) => {
  const random = rng(21);
  const [B, N, H, Dh] = [2, 70, 2, 8];
  const qkv = randn(random, B * N * 3 * H * Dh), dout = randn(random, B * N * H * Dh);
  const wide = native.runOp('attention', { B, N, H, Dh, dtype: 1 }, { qkv }, { out: dout });
  const narrow = native.runOp('attention', { B, N, H, Dh, dtype: 1, bf16_out: 1, bf16_grad: 1 }, { qkv }, { out: dout });
  t.deepEqual(narrow.out, wide.out.map(bf16Round));
  t.deepEqual(narrow.d_qkv, wide.d_qkv.map(bf16Round));
  t.notDeepEqual(narrow.out, wide.out);
  t.notDeepEqual(narrow.d_qkv, wide.d_qkv);
});

test('LayerNorm, and LayerNorm with the adapter, can hand their output over in bf16: the float32 one, rounded, bit for bit', (t) => {
  const random = rng(31);
  const [M, D, R, G] = [37, 48, 8, 2];
  const x = randn(random, M * D), w = randn(random, D), b = randn(random, D);
  const wide = native.runOp('layernorm', { M, D }, { x, w, b }).y;
  const narrow = native.runOp('layernorm', { M, D, bf16_out: 1 }, { x, w, b }).y;
  t.deepEqual(narrow, wide.map(bf16Round));
  t.notDeepEqual(narrow, wide);
  const adapter = { x, ln_w: w, ln_b: b, A: randn(random, R * D, 0.3), a: randn(random, R), Bw: randn(random, D * (R / G), 0.3), b: randn(random, D) };
  const attrs = { M, D, R, G, scale: 0.7, dropout: 0.2, train: 1, seed: 5 };
  const u = native.runOp('layernorm_adapter', attrs, adapter);
  const u16 = native.runOp('layernorm_adapter', { ...attrs, bf16_out: 1 }, adapter);
  t.deepEqual(u16.u, u.u.map(bf16Round));
  t.deepEqual(u16.z, u.z, 'z (what backward keeps) stays float32');
  t.notDeepEqual(u16.u, u.u);
});

test('the residual op can hand the branch gradient over in bf16: the float32 one, rounded, bit for bit', (t) => {
  const random = rng(41);
  const [B, row] = [3, 50];
  const inputs = { x: randn(random, B * row), branch: randn(random, B * row), keep: Float32Array.from([0, 1.25, 1.25]) };
  const dy = { y: randn(random, B * row) };
  const wide = native.runOp('residual', { B, row }, inputs, dy).d_branch;
  const narrow = native.runOp('residual', { B, row, bf16_grad: 1 }, inputs, dy).d_branch;
  t.deepEqual(narrow, wide.map(bf16Round));
  t.notDeepEqual(narrow, wide);
});
