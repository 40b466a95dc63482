/**
 * ONNX export: a folded ViT exported with exportOnnx() and run by onnxruntime-node gives our
 * logits (dynamic and fixed batch, both adapter placements, several opsets); the protobuf is
 * well formed (checked by a small wire-format decoder, also without onnxruntime); unfolded
 * models, bad options and unwritable paths are refused without leaving files behind.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { mkdtemp, mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { ArgumentError, Tensor, ViT } from '../lib/index.js';
import { ONNX_INPUT, ONNX_OUTPUT, exportOnnx, toOnnx } from '../lib/io/onnx.js';
import { randn, randomise, relErr, rng } from './util.js';

// ---- onnxruntime-node, if installed (a devDependency of this repo) -----------------------------

/** The part of onnxruntime-node's API used here (typed locally: the package is optional). */
interface OrtTensor {
  readonly dims: readonly number[];
  readonly data: unknown;
}
interface OrtSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  run(feeds: Record<string, OrtTensor>): Promise<Record<string, OrtTensor>>;
  release(): Promise<void>;
}
interface Ort {
  Tensor: new (type: 'float32', data: Float32Array, dims: readonly number[]) => OrtTensor;
  InferenceSession: {
    create(model: string | Uint8Array, options?: { graphOptimizationLevel?: 'disabled' | 'basic' | 'extended' | 'all' }): Promise<OrtSession>;
  };
}

let ort: Ort | null = null;
let ortMissing = '';
try {
  const name = 'onnxruntime-node'; // not a literal import: type checking must not need the package
  ort = (await import(name)) as Ort;
} catch (e) {
  ortMissing = `onnxruntime-node is not installed (${(e as Error).message.split('\n')[0]}); install it with ` +
    '`ONNXRUNTIME_NODE_INSTALL=skip npm install` to run the ONNX Runtime comparisons';
}
const ortTest = ort ? test : test.skip;

test('onnxruntime-node: installed, or why its comparisons are skipped', (t) => {
  if (ort) t.pass();
  else {
    t.log(`SKIPPED the onnxruntime comparisons: ${ortMissing}`);
    t.pass();
  }
});

// ---- helpers -----------------------------------------------------------------------------------

const config = { imageSize: 32, patchSize: 8, width: 48, depth: 2, heads: 4, mlpRatio: 4, numClasses: 6 };
const adapter = (placement: 'attn' | 'block') => ({ placement, hidden: 8, groups: 2, scale: 0.8, dropout: 0.1 });

function images(batch: number, seed: number): Float32Array {
  return randn(rng(seed), batch * 3 * 32 * 32);
}

function ours(vit: ViT, x: Float32Array, batch: number): Float32Array {
  using input = Tensor.from(x, [batch, 3, 32, 32]);
  using logits = vit.forward(input);
  return logits.toArray();
}

async function theirs(session: OrtSession, x: Float32Array, batch: number): Promise<{ dims: readonly number[]; data: Float32Array }> {
  const out = await session.run({ [ONNX_INPUT]: new ort!.Tensor('float32', x, [batch, 3, 32, 32]) });
  const logits = out[ONNX_OUTPUT];
  return { dims: logits.dims, data: logits.data as Float32Array };
}

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'repadapter-onnx-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function adaptedFolded(placement: 'attn' | 'block', seed: number): { vit: ViT; adapted: (x: Float32Array, b: number) => Float32Array } {
  const vit = ViT.create(config, { adapter: adapter(placement) });
  randomise(vit, seed);
  vit.eval();
  // the adapters really matter here, so the comparisons below are not vacuous
  using backbone = ViT.create(config);
  backbone.loadStateDict(vit.stateDict(), { strict: false });
  backbone.eval();
  if (relErr(ours(backbone, images(3, 13), 3), ours(vit, images(3, 13), 3)) < 1e-2) throw new Error('adapters too weak');
  // the adapted model's logits, for a few inputs, before folding
  const before = new Map<string, Float32Array>();
  for (const b of [1, 2, 3]) before.set(String(b), ours(vit, images(b, 10 + b), b));
  vit.fold();
  return { vit, adapted: (_x, b) => before.get(String(b))! };
}

// ---- a minimal protobuf wire-format decoder (to check the encoding without onnxruntime) --------

type Field = { field: number; wire: number; value: bigint | Uint8Array | number };

function decode(buf: Uint8Array): Field[] {
  const out: Field[] = [];
  let pos = 0;
  const varint = (): bigint => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      const byte = buf[pos++];
      if (byte === undefined) throw new Error('truncated varint');
      result |= BigInt(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return result;
      shift += 7n;
    }
  };
  while (pos < buf.length) {
    const key = Number(varint());
    const field = key >>> 3;
    const wire = key & 7;
    if (wire === 0) out.push({ field, wire, value: varint() });
    else if (wire === 2) {
      const len = Number(varint());
      if (pos + len > buf.length) throw new Error('truncated bytes');
      out.push({ field, wire, value: buf.subarray(pos, pos + len) });
      pos += len;
    } else if (wire === 5) {
      out.push({ field, wire, value: new DataView(buf.buffer, buf.byteOffset + pos, 4).getFloat32(0, true) });
      pos += 4;
    } else throw new Error(`unexpected wire type ${wire}`);
  }
  return out;
}
const get = (fs: Field[], n: number) => fs.filter((f) => f.field === n).map((f) => f.value);
const str = (v: unknown) => new TextDecoder().decode(v as Uint8Array);

// ---- tests -------------------------------------------------------------------------------------

test('the ONNX protobuf is well formed: IR / opset, timm-named float32 initializers, dynamic batch', (t) => {
  using vit = ViT.create(config, { adapter: adapter('block') });
  randomise(vit, 3);
  vit.fold();
  const bytes = toOnnx(vit);
  const model = decode(bytes);
  t.is(get(model, 1)[0], 8n, 'ir_version 8 for opset 17');
  const opset = decode(get(model, 8)[0] as Uint8Array);
  t.is(str(get(opset, 1)[0]), '');
  t.is(get(opset, 2)[0], 17n);
  t.is(str(get(model, 2)[0]), 'repadapter');
  const meta = get(model, 14).map((m) => decode(m as Uint8Array));
  t.deepEqual(JSON.parse(str(get(meta[0], 2)[0])), JSON.parse(JSON.stringify(vit.config)));

  const graph = decode(get(model, 7)[0] as Uint8Array);
  const inits = new Map(
    get(graph, 5).map((m) => {
      const f = decode(m as Uint8Array);
      return [str(get(f, 8)[0]), { dims: get(f, 1).map(Number), type: Number(get(f, 2)[0]), raw: get(f, 9)[0] as Uint8Array }];
    }),
  );
  // every parameter is there with its timm name (Linear weights transposed, as "<name>.T")
  for (const p of vit.parameters()) {
    const linear = p.shape.length === 2 && p.name !== 'head.weight';
    const init = inits.get(linear ? `${p.name}.T` : p.name);
    if (!init) {
      t.fail(`missing initializer for ${p.name}`);
      continue;
    }
    t.is(init.type, 1, `${p.name} is FLOAT`);
    t.deepEqual(init.dims, linear ? [p.shape[1], p.shape[0]] : [...p.shape], p.name);
    const values = new Float32Array(init.raw.slice().buffer);
    const expected = vit.param(p.name);
    if (linear) {
      const [rows, cols] = p.shape;
      t.is(values[3 * rows + 1], expected[1 * cols + 3], `${p.name} is stored transposed`);
    } else t.deepEqual(values, expected, `${p.name} raw little-endian float32`);
  }
  const nodes = get(graph, 1).map((m) => decode(m as Uint8Array));
  const ops = nodes.map((n) => str(get(n, 4)[0]));
  t.is(ops.filter((o) => o === 'LayerNormalization').length, 2 * config.depth + 1);
  t.is(ops.filter((o) => o === 'Erf').length, config.depth);
  t.is(ops.filter((o) => o === 'Softmax').length, config.depth);
  t.is(ops.at(-1), 'Gemm');
  for (const n of nodes.filter((n) => str(get(n, 4)[0]) === 'LayerNormalization')) {
    const attrs = get(n, 5).map((a) => decode(a as Uint8Array));
    const eps = attrs.find((a) => str(get(a, 1)[0]) === 'epsilon')!;
    t.is(get(eps, 2)[0], Math.fround(1e-6));
  }
  // input [batch, 3, 32, 32] with a symbolic batch; output [batch, 6]
  const dims = (vi: Uint8Array) => {
    const tensorType = decode(get(decode(get(decode(vi), 2)[0] as Uint8Array), 1)[0] as Uint8Array);
    return get(decode(get(tensorType, 2)[0] as Uint8Array), 1).map((d) => {
      const f = decode(d as Uint8Array);
      return f[0].field === 1 ? Number(f[0].value) : str(f[0].value);
    });
  };
  t.deepEqual(dims(get(graph, 11)[0] as Uint8Array), ['batch', 3, 32, 32]);
  t.deepEqual(dims(get(graph, 12)[0] as Uint8Array), ['batch', 6]);
  const fixed = decode(get(decode(toOnnx(vit, { batch: 4, opset: 21 })), 7)[0] as Uint8Array);
  t.deepEqual(dims(get(fixed, 11)[0] as Uint8Array), [4, 3, 32, 32]);
  t.is(get(decode(toOnnx(vit, { opset: 21 })), 1)[0], 10n, 'ir_version 10 for opset 21');
});

for (const placement of ['attn', 'block'] as const) {
  ortTest(`onnxruntime ≡ ours: folded ViT, placement ${placement}, dynamic batch 1 / 2 / 3`, async (t) => {
    const { vit, adapted } = adaptedFolded(placement, placement === 'attn' ? 21 : 22);
    using _ = vit;
    const dir = await tempDir(t);
    const path = join(dir, 'vit.onnx');
    await exportOnnx(vit, path);
    t.deepEqual(await readdir(dir), ['vit.onnx'], 'only the model, no temporary file');
    t.deepEqual(new Uint8Array(await readFile(path)), toOnnx(vit), 'the file is toOnnx()');

    const session = await ort!.InferenceSession.create(path);
    t.teardown(() => session.release());
    t.deepEqual(session.inputNames, [ONNX_INPUT]);
    t.deepEqual(session.outputNames, [ONNX_OUTPUT]);
    for (const batch of [1, 2, 3]) {
      const x = images(batch, 10 + batch);
      const ref = ours(vit, x, batch);
      const got = await theirs(session, x, batch);
      t.deepEqual(got.dims, [batch, config.numClasses]);
      const err = relErr(got.data, ref);
      const errAdapted = relErr(got.data, adapted(x, batch));
      t.log(`batch ${batch}: max rel err vs folded ${err.toExponential(2)}, vs adapted (unfolded) ${errAdapted.toExponential(2)}`);
      t.true(err <= 1e-5, `onnxruntime vs ours: ${err}`);
      t.true(errAdapted <= 1e-5, `onnxruntime vs the unfolded adapted model: ${errAdapted}`);
    }

    // the graph as written (no onnxruntime fusions) computes the same
    const plain = await ort!.InferenceSession.create(path, { graphOptimizationLevel: 'disabled' });
    t.teardown(() => plain.release());
    const x = images(3, 13);
    const err = relErr((await theirs(plain, x, 3)).data, ours(vit, x, 3));
    t.log(`batch 3, onnxruntime optimisations off: max rel err ${err.toExponential(2)}`);
    t.true(err <= 1e-5, `unoptimised graph: ${err}`);
  });
}

ortTest('onnxruntime: fixed batch, and every supported opset', async (t) => {
  const { vit } = adaptedFolded('block', 23);
  using _ = vit;
  const fixed = await ort!.InferenceSession.create(toOnnx(vit, { batch: 2 }));
  t.teardown(() => fixed.release());
  const x2 = images(2, 12);
  const err = relErr((await theirs(fixed, x2, 2)).data, ours(vit, x2, 2));
  t.true(err <= 1e-5, `fixed batch 2: ${err}`);
  await t.throwsAsync(theirs(fixed, images(3, 13), 3), undefined, 'a fixed-batch model refuses another batch');

  const x = images(3, 13);
  const ref = ours(vit, x, 3);
  const errs: string[] = [];
  for (let opset = 17; opset <= 23; opset++) {
    const session = await ort!.InferenceSession.create(toOnnx(vit, { opset }));
    const e = relErr((await theirs(session, x, 3)).data, ref);
    await session.release();
    errs.push(`${opset}: ${e.toExponential(2)}`);
    t.true(e <= 1e-5, `opset ${opset}: ${e}`);
  }
  t.log(`max rel err by opset: ${errs.join(', ')}`);
});

test('an unfolded model is refused with a clear error, and nothing is written', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'vit.onnx');
  using vit = ViT.create(config, { adapter: adapter('attn') });
  const e = await t.throwsAsync(exportOnnx(vit, path), { instanceOf: ArgumentError });
  t.regex(e!.message, /still has adapters/);
  t.regex(e!.message, /fold\(\) first/);
  t.throws(() => toOnnx(vit), { instanceOf: ArgumentError, message: /fold\(\) first/ });
  t.deepEqual(await readdir(dir), []);

  // an existing file is left untouched by a refused export
  await writeFile(path, 'old');
  await t.throwsAsync(exportOnnx(vit, path), { instanceOf: ArgumentError });
  t.is(await readFile(path, 'utf8'), 'old');
  t.deepEqual(await readdir(dir), ['vit.onnx']);
});

test('bad options are refused', (t) => {
  using vit = ViT.create(config);
  t.throws(() => toOnnx(vit, { opset: 16 }), { instanceOf: ArgumentError, message: /opset/ });
  t.throws(() => toOnnx(vit, { opset: 24 }), { instanceOf: ArgumentError, message: /opset/ });
  t.throws(() => toOnnx(vit, { opset: 17.5 }), { instanceOf: ArgumentError, message: /opset/ });
  t.throws(() => toOnnx(vit, { batch: 0 }), { instanceOf: ArgumentError, message: /batch/ });
  t.throws(() => toOnnx(vit, { batch: 'auto' as never }), { instanceOf: ArgumentError, message: /batch/ });
  t.throws(() => toOnnx(vit, { dynamic: true } as never), { instanceOf: ArgumentError, message: /unknown ONNX export option/ });
  t.throws(() => toOnnx({} as never), { instanceOf: ArgumentError, message: /a ViT/ });
  vit.dispose();
  t.throws(() => toOnnx(vit), { message: /disposed/ });
});

test('an unwritable path is an error and leaves no partial file', async (t) => {
  const dir = await tempDir(t);
  using vit = ViT.create(config);
  // a directory that does not exist
  await t.throwsAsync(exportOnnx(vit, join(dir, 'missing', 'vit.onnx')), { code: 'ENOENT' });
  t.deepEqual(await readdir(dir), []);
  // the target is a directory: the temporary file is written, the rename fails, it is removed
  const target = join(dir, 'taken');
  await mkdir(target);
  await t.throwsAsync(exportOnnx(vit, target));
  t.deepEqual(await readdir(dir), ['taken']);
  t.true((await stat(target)).isDirectory());
  t.deepEqual(await readdir(target), []);
  // an empty path
  await t.throwsAsync(exportOnnx(vit, ''), { instanceOf: ArgumentError });
});
