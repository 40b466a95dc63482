/**
 * Tensor: copies in and out of native memory, shape checks, explicit and scoped disposal.
 */
import test from 'ava';

import { DisposedError, RepAdapterError, ShapeError, Tensor, ViT } from '../lib/index.js';
import { TINY, images, values } from './helpers/tiny.js';

/** The raw bit patterns, so NaN payloads and -0 compare exactly. */
function bits(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

test('from / toArray round-trips float32 values bit for bit', (t) => {
  const special = new Float32Array([
    0, -0, 1, -1, 0.1, Math.PI, 3.4028234663852886e38, -3.4028234663852886e38, 1.401298464324817e-45, 1.1754943508222875e-38,
    Infinity, -Infinity, NaN,
  ]);
  const data = new Float32Array([...special, ...values(1000, 7)]);
  using x = Tensor.from(data, [data.length]);
  const out = x.toArray();
  t.true(out instanceof Float32Array);
  t.is(out.length, data.length);
  t.deepEqual(bits(out), bits(data));
  t.true(Object.is(out[1], -0));
});

test('from copies: changing the source afterwards does not change the tensor', (t) => {
  const data = values(12, 3);
  const original = data.slice();
  using x = Tensor.from(data, [3, 4]);
  data.fill(42);
  t.deepEqual(x.toArray(), original);
});

test('toArray copies: changing a result does not change the tensor or later results', (t) => {
  const data = values(6, 5);
  using x = Tensor.from(data, [2, 3]);
  const a = x.toArray();
  a.fill(-7);
  const b = x.toArray();
  t.deepEqual(b, data);
  t.not(a.buffer, b.buffer);
  t.not(b.buffer, data.buffer);
});

test('from accepts plain arrays and other array-likes, rounding to float32', (t) => {
  using a = Tensor.from([1, 2.5, -3], [3]);
  t.deepEqual(a.toArray(), new Float32Array([1, 2.5, -3]));
  using b = Tensor.from(new Float64Array([0.1, 1 / 3]), [2]);
  t.deepEqual(b.toArray(), new Float32Array([Math.fround(0.1), Math.fround(1 / 3)]));
  using c = Tensor.from({ length: 2, 0: 4, 1: 5 }, [1, 2]);
  t.deepEqual(c.toArray(), new Float32Array([4, 5]));
});

test('shape, size, dtype and device describe the tensor; shape is a frozen copy', (t) => {
  const shape = [2, 3, 4];
  using x = Tensor.from(values(24), shape);
  t.deepEqual(x.shape, [2, 3, 4]);
  t.is(x.size, 24);
  t.is(x.dtype, 'float32');
  t.is(x.device, 'cpu');
  t.true(Object.isFrozen(x.shape));
  shape[0] = 100;
  t.deepEqual(x.shape, [2, 3, 4]);
  t.throws(() => {
    (x.shape as number[])[0] = 5;
  }, { instanceOf: TypeError });
  t.deepEqual(x.shape, [2, 3, 4]);
});

test('a scalar (shape []) holds one value; a shape with a zero holds none', (t) => {
  using scalar = Tensor.from([7], []);
  t.deepEqual(scalar.shape, []);
  t.is(scalar.size, 1);
  t.deepEqual(scalar.toArray(), new Float32Array([7]));
  using empty = Tensor.from(new Float32Array(0), [0, 3]);
  t.is(empty.size, 0);
  t.deepEqual(empty.toArray(), new Float32Array(0));
});

test('from: a value count that does not match the shape → ShapeError naming both', (t) => {
  const cases: [ArrayLike<number>, number[], string[]][] = [
    [new Float32Array(3), [2, 2], ['expected 4 values', '[2, 2]', 'got 3']],
    [new Float32Array(5), [2, 2], ['expected 4 values', 'got 5']],
    [[], [], ['expected 1 values', '[]', 'got 0']],
    [[1], [0], ['expected 0 values', 'got 1']],
  ];
  for (const [data, shape, fragments] of cases) {
    const error = t.throws(() => Tensor.from(data, shape), { instanceOf: ShapeError });
    t.true(error instanceof RepAdapterError);
    for (const f of fragments) t.true(error!.message.includes(f), `${JSON.stringify(error!.message)} should mention ${f}`);
  }
});

test('from / zeros: invalid shapes → ShapeError naming the shape', (t) => {
  const cases: [unknown, string][] = [
    [[-1], '[-1]'],
    [[2, 0.5], '[2, 0.5]'],
    [[2, NaN], '[2, NaN]'],
    [[Infinity], '[Infinity]'],
    [['2', 3], '["2", 3]'],
    [[2 ** 53], String(2 ** 53)],
    [4, 'got 4'],
    [null, 'got null'],
  ];
  for (const [shape, shown] of cases) {
    for (const make of [() => Tensor.zeros(shape as number[]), () => Tensor.from([], shape as number[])]) {
      const error = t.throws(make, { instanceOf: ShapeError }, String(shape));
      t.true(error!.message.includes('shape'), error!.message);
      t.true(error!.message.includes(shown), `${JSON.stringify(error!.message)} should show ${shown}`);
    }
  }
});

test('zeros makes a tensor of zeros of the given shape', (t) => {
  using z = Tensor.zeros([2, 3, 4]);
  t.deepEqual(z.shape, [2, 3, 4]);
  const a = z.toArray();
  t.is(a.length, 24);
  t.true(a.every((v) => Object.is(v, 0)));
});

test('dispose is idempotent and sets the disposed flag', (t) => {
  const x = Tensor.from([1, 2], [2]);
  t.false(x.disposed);
  x.dispose();
  t.true(x.disposed);
  t.notThrows(() => x.dispose());
  t.notThrows(() => x[Symbol.dispose]());
  t.true(x.disposed);
});

test('use after dispose → DisposedError naming the tensor; metadata stays readable', (t) => {
  const x = Tensor.from(values(6), [2, 3]);
  x.dispose();
  for (const use of [() => x.toArray(), () => x.device, () => x.handle()]) {
    const error = t.throws(use, { instanceOf: DisposedError });
    t.true(error!.message.includes('[2, 3]'), error!.message);
    t.true(error!.message.includes('disposed'), error!.message);
  }
  t.deepEqual(x.shape, [2, 3]);
  t.is(x.size, 6);
  t.is(x.dtype, 'float32');
});

test('`using` disposes at the end of the scope', (t) => {
  let escaped: Tensor | undefined;
  {
    using x = Tensor.from([1, 2, 3], [3]);
    escaped = x;
    t.false(x.disposed);
    t.deepEqual(x.toArray(), new Float32Array([1, 2, 3]));
  }
  t.true(escaped.disposed);
  t.throws(() => escaped!.toArray(), { instanceOf: DisposedError });
});

test('`using` disposes also when the scope is left by an exception, in reverse order', (t) => {
  const seen: Tensor[] = [];
  const order: string[] = [];
  const boom = new Error('boom');
  t.throws(
    () => {
      using a = Tensor.zeros([1]);
      using b = Tensor.zeros([2]);
      seen.push(a, b);
      const disposeA = a.dispose.bind(a);
      const disposeB = b.dispose.bind(b);
      a.dispose = () => {
        order.push('a');
        disposeA();
      };
      b.dispose = () => {
        order.push('b');
        disposeB();
      };
      throw boom;
    },
    { is: boom },
  );
  t.true(seen.every((x) => x.disposed));
  t.deepEqual(order, ['b', 'a']);
});

test('toString shows dtype, shape and whether the tensor was disposed', (t) => {
  const x = Tensor.zeros([2, 3]);
  t.is(x.toString(), 'Tensor(float32, [2, 3])');
  t.is(`${x}`, 'Tensor(float32, [2, 3])');
  x.dispose();
  t.is(String(x), 'Tensor(float32, [2, 3], disposed)');
  using s = Tensor.from([1], []);
  t.is(String(s), 'Tensor(float32, [])');
});

test('tensors returned by a model are ordinary tensors: copies out, dispose independently', (t) => {
  using model = ViT.create({ ...TINY });
  using x = images(2, TINY.imageSize, 11);
  const logits = model.forward(x);
  t.deepEqual(logits.shape, [2, TINY.numClasses]);
  t.is(String(logits), 'Tensor(float32, [2, 3])');
  const first = logits.toArray();
  first.fill(0);
  t.notDeepEqual(logits.toArray(), first);
  logits.dispose();
  t.throws(() => logits.toArray(), { instanceOf: DisposedError });
  // Disposing the result touches neither the input nor the model.
  t.false(x.disposed);
  using again = model.forward(x);
  t.false(again.toArray().every((v) => v === 0));
});

test('many tensors can be created and disposed (no leak of handles into later tensors)', (t) => {
  const reference = values(256, 21);
  for (let i = 0; i < 500; i++) {
    using x = Tensor.from(reference, [16, 16]);
    if (i % 100 === 0) t.deepEqual(x.toArray(), reference);
  }
  using big = Tensor.from(values(1 << 20, 2), [1024, 1024]);
  t.is(big.toArray().length, 1 << 20);
});
