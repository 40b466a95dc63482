import test from 'ava';
import type { ExecutionContext } from 'ava';
import { mkdtemp, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { FormatError, RepAdapterError, ShapeError, StateDictError, expected } from '../lib/errors.js';
import {
  DTYPES,
  MAX_HEADER_SIZE,
  dtypeBits,
  parseSafetensors,
  readSafetensors,
  serializeSafetensors,
  toFloat32,
  toIntArray,
  writeSafetensors,
} from '../lib/io/safetensors.js';
import type { DType, TensorEntry, TensorInput, TensorSpec } from '../lib/io/safetensors.js';

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

const enc = new TextEncoder();
const FILE = 'model.safetensors';

function u64le(n: number | bigint): number[] {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
  return [...b];
}

/** A file image: u64 header length, header bytes (as given, no padding), data. */
function image(header: string | Uint8Array, data: number[] | Uint8Array = []): Uint8Array {
  const h = typeof header === 'string' ? enc.encode(header) : header;
  return Uint8Array.from([...u64le(h.length), ...h, ...data]);
}

function f32bytes(...xs: number[]): number[] {
  return [...new Uint8Array(Float32Array.from(xs).buffer)];
}

/** Header JSON for one entry. */
function entry(dtype: string, shape: unknown, offsets: unknown): string {
  return `{"dtype":${JSON.stringify(dtype)},"shape":${JSON.stringify(shape)},"data_offsets":${JSON.stringify(offsets)}}`;
}

/** Asserts parsing fails with a FormatError naming the file, the tensor and every fragment. */
function rejects(
  t: ExecutionContext,
  bytes: Uint8Array,
  fragments: (string | RegExp)[],
  tensor?: string,
): FormatError {
  const err = t.throws(() => parseSafetensors(bytes, FILE), { instanceOf: FormatError }) as FormatError;
  t.is(err.file, FILE);
  t.true(err.message.includes(FILE), `message names the file: ${err.message}`);
  for (const f of fragments) {
    if (typeof f === 'string') t.true(err.message.includes(f), `"${err.message}" should include "${f}"`);
    else t.regex(err.message, f);
  }
  if (tensor !== undefined) {
    t.is(err.tensor, tensor);
    t.true(err.message.includes(`tensor ${JSON.stringify(tensor)}`), `message names the tensor: ${err.message}`);
  }
  return err;
}

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'repadapter-st-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

// ---------------------------------------------------------------------------
// errors.ts
// ---------------------------------------------------------------------------

test('error classes carry names and a shared base class', (t) => {
  const f = new FormatError('bad', { file: 'a.bin', tensor: 'w' });
  t.true(f instanceof RepAdapterError);
  t.true(f instanceof Error);
  t.is(f.name, 'FormatError');
  t.is(f.file, 'a.bin');
  t.is(f.tensor, 'w');
  t.is(new ShapeError('x').name, 'ShapeError');

  const s = new StateDictError({
    missing: ['a', 'b'],
    unexpected: ['c'],
    misshaped: [{ name: 'd', expected: [2, 3], got: [3, 2] }],
  });
  t.is(s.name, 'StateDictError');
  t.deepEqual(s.missing, ['a', 'b']);
  t.deepEqual(s.unexpected, ['c']);
  for (const frag of ['2 missing', '1 unexpected', '1 misshaped', '"a"', '"b"', '"c"', '"d"', '[2, 3]', '[3, 2]']) {
    t.true(s.message.includes(frag), frag);
  }
});

test('expected() formats values compactly', (t) => {
  t.is(expected('a positive integer', 'batch', -3), 'expected a positive integer for batch, got -3');
  t.is(expected('a string', 'name', undefined), 'expected a string for name, got undefined');
  t.is(expected('x', 'y', new Float32Array(12)), 'expected x for y, got Float32Array(12)');
  t.is(expected('x', 'y', [1, 2, 3]), 'expected x for y, got [1, 2, 3]');
  t.is(expected('x', 'y', { a: 1, b: 'z' }), 'expected x for y, got {a: 1, b: "z"}');
  t.is(expected('x', 'y', 10n), 'expected x for y, got 10n');
  const long = expected('x', 'y', 'q'.repeat(1000));
  t.true(long.length < 140, long);
  t.true(expected('x', 'y', Array.from({ length: 100 }, (_, i) => i)).includes('100 items'));
});

// ---------------------------------------------------------------------------
// byte-exact format
// ---------------------------------------------------------------------------

test('serializes byte for byte like the reference writer (hand-built file)', (t) => {
  // Reference test vector: {"attn.0": F32 [1,2,3] = 0..5}; the header is exactly 64 bytes, no padding.
  const header = '{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}';
  const expectedBytes = Uint8Array.from([
    64, 0, 0, 0, 0, 0, 0, 0,
    ...enc.encode(header),
    0, 0, 0, 0, /* 0.0 */ 0, 0, 128, 63, /* 1.0 */ 0, 0, 0, 64, /* 2.0 */
    0, 0, 64, 64, /* 3.0 */ 0, 0, 128, 64, /* 4.0 */ 0, 0, 160, 64, /* 5.0 */
  ]);
  t.is(expectedBytes.length, 8 + 64 + 24);
  const out = serializeSafetensors([
    { name: 'attn.0', dtype: 'F32', shape: [1, 2, 3], data: Float32Array.from([0, 1, 2, 3, 4, 5]) },
  ]);
  t.deepEqual(out, expectedBytes);

  const parsed = parseSafetensors(expectedBytes);
  const e = parsed.tensors.get('attn.0')!;
  t.is(e.dtype, 'F32');
  t.deepEqual(e.shape, [1, 2, 3]);
  t.is(e.data.byteOffset, 72);
  t.is(e.data.buffer, expectedBytes.buffer, 'data is a view into the file buffer');
  t.deepEqual([...toFloat32(e)], [0, 1, 2, 3, 4, 5]);
  t.deepEqual(parsed.metadata, {});
});

test('pads the header with spaces to a multiple of 8 (reference vectors)', (t) => {
  // 65-byte header -> 7 spaces.
  const out = serializeSafetensors([
    { name: 'attn0', dtype: 'F32', shape: [1, 1, 2, 3], data: Float32Array.from([0, 1, 2, 3, 4, 5]) },
  ]);
  const header = '{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}' + ' '.repeat(7);
  t.deepEqual(out, Uint8Array.from([72, 0, 0, 0, 0, 0, 0, 0, ...enc.encode(header), ...f32bytes(0, 1, 2, 3, 4, 5)]));

  // No tensors at all.
  t.deepEqual(serializeSafetensors([]), Uint8Array.from([8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]));
  // Only metadata.
  t.deepEqual(
    serializeSafetensors([], { framework: 'pt' }),
    Uint8Array.from([40, 0, 0, 0, 0, 0, 0, 0, ...enc.encode('{"__metadata__":{"framework":"pt"}}     ')]),
  );
  t.deepEqual(parseSafetensors(serializeSafetensors([], { framework: 'pt' })).metadata, { framework: 'pt' });
});

test('orders tensors by dtype alignment then name, every tensor aligned', (t) => {
  const out = serializeSafetensors([
    { name: 'b', dtype: 'U8', shape: [3], data: Uint8Array.from([1, 2, 3]) },
    { name: 'z', dtype: 'F64', shape: [1], data: Float64Array.from([1]) },
    { name: 'a', dtype: 'F32', shape: [1], data: Float32Array.from([1]) },
    { name: 'c', dtype: 'F16', shape: [1], data: Uint16Array.from([0x3c00]) },
    { name: 'é', dtype: 'F32', shape: [1], data: Float32Array.from([2]) },
    { name: '😀', dtype: 'F32', shape: [1], data: Float32Array.from([3]) },
    { name: '\uffff', dtype: 'F32', shape: [1], data: Float32Array.from([4]) },
    { name: 'x', dtype: 'I64', shape: [2], data: BigInt64Array.from([1n, 2n]) },
  ]);
  const { tensors } = parseSafetensors(out);
  // Names in UTF-8 byte order: U+FFFF (EF BF BF) sorts before U+1F600 (F0 ...).
  t.deepEqual([...tensors.keys()], ['x', 'z', 'a', 'é', '\uffff', '😀', 'c', 'b']);
  for (const e of tensors.values()) {
    t.is(e.data.byteOffset % (dtypeBits(e.dtype) / 8), 0, `${e.name} aligned`);
  }
  t.is(new TextDecoder().decode(out.subarray(8, 8 + 2)), '{"');
});

// ---------------------------------------------------------------------------
// round trips
// ---------------------------------------------------------------------------

const ROUND_TRIP: { dtype: DType; data: TensorInput['data']; floats: number[] }[] = [
  { dtype: 'F64', data: Float64Array.from([1.5, -2, 1e300, 0]), floats: [1.5, -2, Infinity, 0] },
  { dtype: 'F32', data: Float32Array.from([1.5, -2, 3.25, -0]), floats: [1.5, -2, 3.25, -0] },
  { dtype: 'F16', data: Uint16Array.from([0x3c00, 0xc000, 0x7bff, 0x0001]), floats: [1, -2, 65504, 2 ** -24] },
  { dtype: 'BF16', data: Uint16Array.from([0x3f80, 0xc000, 0x4049, 0x0000]), floats: [1, -2, 3.140625, 0] },
  { dtype: 'I64', data: BigInt64Array.from([1n, -2n, 3n, 9007199254740993n]), floats: [1, -2, 3, 9007199254740992] },
  { dtype: 'U64', data: BigUint64Array.from([1n, 2n, 3n, 4n]), floats: [1, 2, 3, 4] },
  { dtype: 'I32', data: Int32Array.from([1, -2, 3, 2147483647]), floats: [1, -2, 3, 2147483648] },
  { dtype: 'U32', data: Uint32Array.from([1, 2, 3, 4294967295]), floats: [1, 2, 3, 4294967296] },
  { dtype: 'I16', data: Int16Array.from([1, -2, 3, -32768]), floats: [1, -2, 3, -32768] },
  { dtype: 'U16', data: Uint16Array.from([1, 2, 3, 65535]), floats: [1, 2, 3, 65535] },
  { dtype: 'I8', data: Int8Array.from([1, -2, 3, -128]), floats: [1, -2, 3, -128] },
  { dtype: 'U8', data: Uint8Array.from([1, 2, 3, 255]), floats: [1, 2, 3, 255] },
  { dtype: 'BOOL', data: Uint8Array.from([1, 0, 0, 1]), floats: [1, 0, 0, 1] },
  { dtype: 'F8_E4M3', data: Uint8Array.from([0x38, 0xc0, 0x7e, 0x01]), floats: [1, -2, 448, 2 ** -9] },
  { dtype: 'F8_E5M2', data: Uint8Array.from([0x3c, 0xc0, 0x7c, 0x01]), floats: [1, -2, Infinity, 2 ** -16] },
  { dtype: 'F8_E4M3FNUZ', data: Uint8Array.from([0x40, 0xc8, 0x7f, 0x00]), floats: [1, -2, 240, 0] },
  { dtype: 'F8_E5M2FNUZ', data: Uint8Array.from([0x40, 0xc4, 0x7f, 0x00]), floats: [1, -2, 57344, 0] },
  { dtype: 'F8_E8M0', data: Uint8Array.from([127, 128, 0, 254]), floats: [1, 2, 2 ** -127, 2 ** 127] },
];

for (const { dtype, data, floats } of ROUND_TRIP) {
  test(`round trip ${dtype}`, (t) => {
    const file = serializeSafetensors([{ name: `t.${dtype}`, dtype, shape: [2, 2], data }]);
    const { tensors } = parseSafetensors(file);
    const e = tensors.get(`t.${dtype}`)!;
    t.is(e.dtype, dtype);
    t.deepEqual(e.shape, [2, 2]);
    t.deepEqual(e.data, bytesOf(data), 'exact bytes');
    t.deepEqual([...toFloat32(e)], floats.map(Math.fround));
    // Re-serializing a parsed entry (raw bytes) reproduces the file exactly.
    t.deepEqual(serializeSafetensors(tensors), file);
  });
}

test('round trip of scalars, empty tensors, many tensors and odd names', (t) => {
  const inputs: TensorInput[] = [
    { name: 'scalar', dtype: 'F32', shape: [], data: Float32Array.from([7]) },
    { name: 'empty', dtype: 'F32', shape: [0, 3], data: new Float32Array(0) },
    { name: 'empty64', dtype: 'I64', shape: [0], data: new BigInt64Array(0) },
    { name: 'with "quotes" and \\ and \n newline', dtype: 'U8', shape: [1], data: Uint8Array.from([9]) },
    { name: 'ünïcødé 😀', dtype: 'I32', shape: [1], data: Int32Array.from([-5]) },
    { name: '', dtype: 'U8', shape: [1], data: Uint8Array.from([1]) },
  ];
  for (let i = 0; i < 50; i++) {
    inputs.push({ name: `blocks.${i}.w`, dtype: 'F32', shape: [3], data: Float32Array.from([i, i + 1, i + 2]) });
  }
  const { tensors } = parseSafetensors(serializeSafetensors(inputs));
  t.is(tensors.size, inputs.length);
  for (const inp of inputs) {
    const e = tensors.get(inp.name)!;
    t.truthy(e, inp.name);
    t.deepEqual(e.shape, [...inp.shape]);
    t.deepEqual(e.data, bytesOf(inp.data));
  }
  t.deepEqual([...toFloat32(tensors.get('scalar')!)], [7]);
  t.is(toFloat32(tensors.get('empty')!).length, 0);
});

test('Map input and metadata round trip', (t) => {
  const metadata = {
    format: 'pt',
    config: JSON.stringify({ width: 32, nested: { a: [1, 2] } }),
    'ключ 😀': 'значение\n"quoted"\ttab\\',
    empty: '',
  };
  // A "__proto__" key must survive as an own key (an object literal cannot create it).
  const md: Record<string, string> = { ...metadata };
  Object.defineProperty(md, '__proto__', { value: 'own key', enumerable: true, writable: true, configurable: true });
  const file = serializeSafetensors(
    new Map<string, TensorSpec>([['w', { dtype: 'F32', shape: [2], data: Float32Array.from([1, 2]) }]]),
    md,
  );
  const parsed = parseSafetensors(file);
  t.deepEqual(Object.keys(parsed.metadata).sort(), Object.keys(md).sort());
  for (const k of Object.keys(md)) t.is(parsed.metadata[k], md[k], k);
  t.is(Object.getPrototypeOf(parsed.metadata), Object.prototype);
  t.deepEqual([...toFloat32(parsed.tensors.get('w')!)], [1, 2]);
  // Empty metadata object is written (as the reference does) and read back.
  t.deepEqual(parseSafetensors(serializeSafetensors([], {})).metadata, {});
});

test('accepts valid files the reference accepts: any entry order, padding, zero-size tensors', (t) => {
  const header =
    `{"b":${entry('F32', [1], [4, 8])},"__metadata__":{"k":"v"},"a":${entry('F32', [1], [0, 4])},` +
    `"z":${entry('F32', [0], [8, 8])},"e":${entry('U8', [0, 5], [0, 0])}}   \n\t `;
  const { tensors, metadata } = parseSafetensors(image(header, f32bytes(1, 2)), FILE);
  t.deepEqual(metadata, { k: 'v' });
  t.deepEqual([...tensors.keys()], ['e', 'a', 'b', 'z'], 'file order');
  t.deepEqual([...toFloat32(tensors.get('b')!)], [2]);
  // A Buffer input works and yields plain Uint8Array views.
  const buf = Buffer.from(serializeSafetensors([{ name: 'w', dtype: 'F32', shape: [1], data: Float32Array.from([3]) }]));
  const w = parseSafetensors(buf).tensors.get('w')!;
  t.is(Object.getPrototypeOf(w.data), Uint8Array.prototype);
  t.deepEqual([...toFloat32(w)], [3]);
});

test('reads the committed fixture files', async (t) => {
  const dir = fileURLToPath(new URL('./fixtures/', import.meta.url));
  const files = (await readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith('.safetensors'));
  if (files.length === 0) {
    t.pass('no fixtures present');
    return;
  }
  for (const f of files) {
    const { tensors, metadata } = await readSafetensors(join(dir, f));
    t.true(tensors.size > 0, f);
    t.is(typeof metadata, 'object');
    const labels = tensors.get('input.labels');
    if (labels && (labels.dtype === 'I64' || labels.dtype === 'I32')) t.is(toIntArray(labels).length, labels.shape[0]);
  }
});

// ---------------------------------------------------------------------------
// conversion
// ---------------------------------------------------------------------------

test('toFloat32 handles unaligned data and returns a copy', (t) => {
  const file = serializeSafetensors([
    { name: 'f', dtype: 'F32', shape: [3], data: Float32Array.from([1.5, -2.5, 3]) },
    { name: 'd', dtype: 'F64', shape: [2], data: Float64Array.from([0.1, -1e-50]) },
    { name: 'h', dtype: 'F16', shape: [2], data: Uint16Array.from([0x3555, 0x8000]) },
    { name: 'i', dtype: 'I64', shape: [2], data: BigInt64Array.from([-7n, 7n]) },
  ]);
  // Shift the whole file by one byte: every tensor view is misaligned.
  const shifted = new Uint8Array(file.length + 1);
  shifted.set(file, 1);
  const { tensors } = parseSafetensors(shifted.subarray(1));
  const f = tensors.get('f')!;
  t.is(f.data.byteOffset % 4, 1);
  const out = toFloat32(f);
  t.deepEqual([...out], [1.5, -2.5, 3]);
  out[0] = 99;
  t.deepEqual([...toFloat32(f)], [1.5, -2.5, 3], 'result does not alias the file');
  t.deepEqual([...toFloat32(tensors.get('d')!)], [Math.fround(0.1), -0]);
  const h = toFloat32(tensors.get('h')!);
  t.is(h[0], 0.333251953125); // 0x3555 = (1 + 341/1024) * 2^-2
  t.true(Object.is(h[1], -0));
  t.deepEqual([...toIntArray(tensors.get('i')!)], [-7, 7]);

  // Aligned F32 also yields a copy.
  const aligned = parseSafetensors(file).tensors.get('f')!;
  const copy = toFloat32(aligned);
  copy[0] = 42;
  t.deepEqual([...toFloat32(aligned)], [1.5, -2.5, 3]);
});

test('F16/BF16 special values decode exactly', (t) => {
  const f16 = Uint16Array.from([0x7c00, 0xfc00, 0x7e00, 0x0400, 0x03ff, 0x8001]);
  const bf16 = Uint16Array.from([0x7f80, 0xff80, 0x7fc0, 0x0080, 0x7f7f, 0x8001]);
  const { tensors } = parseSafetensors(
    serializeSafetensors([
      { name: 'h', dtype: 'F16', shape: [6], data: f16 },
      { name: 'b', dtype: 'BF16', shape: [6], data: bf16 },
    ]),
  );
  const h = toFloat32(tensors.get('h')!);
  t.deepEqual([h[0], h[1]], [Infinity, -Infinity]);
  t.true(Number.isNaN(h[2]));
  t.is(h[3], 2 ** -14);
  t.is(h[4], 1023 * 2 ** -24);
  t.is(h[5], -(2 ** -24));
  const b = toFloat32(tensors.get('b')!);
  t.deepEqual([b[0], b[1]], [Infinity, -Infinity]);
  t.true(Number.isNaN(b[2]));
  t.is(b[3], 2 ** -126);
  t.is(b[4], Math.fround(3.3895313892515355e38));
  t.is(b[5], -(2 ** -133));
});

test('Float32Array is narrowed to F16/BF16 with round-to-nearest-even', (t) => {
  const src = Float32Array.from([
    1 + 2 ** -11, // tie -> 1 (even) in F16
    1 + 3 * 2 ** -11, // tie -> 1 + 2^-9 in F16
    65520, // rounds to infinity in F16
    2 ** -25, // tie -> 0 in F16
    1.5 * 2 ** -25, // -> smallest subnormal in F16
    -0,
    NaN,
    1e-10,
  ]);
  const file = serializeSafetensors([
    { name: 'h', dtype: 'F16', shape: [8], data: src },
    { name: 'b', dtype: 'BF16', shape: [3], data: Float32Array.from([1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.39e38]) },
  ]);
  const { tensors } = parseSafetensors(file);
  const h = tensors.get('h')!;
  t.deepEqual([...new Uint16Array(h.data.slice().buffer)].slice(0, 6), [0x3c00, 0x3c01 + 1, 0x7c00, 0x0000, 0x0001, 0x8000]);
  const hf = toFloat32(h);
  t.true(Number.isNaN(hf[6]));
  t.is(hf[7], 0);
  const b = toFloat32(tensors.get('b')!);
  t.deepEqual([...b], [1, 1 + 2 ** -6, Math.fround(3.3895313892515355e38)]);
});

test('F16/BF16 narrowing is exact on every representable value and rounds midpoints to even', (t) => {
  for (const dtype of ['F16', 'BF16'] as const) {
    const all = new Uint16Array(65536).map((_, i) => i);
    const decoded = toFloat32(parseSafetensors(serializeSafetensors([{ name: 'x', dtype, shape: [65536], data: all }])).tensors.get('x')!);
    // Every non-NaN pattern survives decode -> encode unchanged.
    const back = parseSafetensors(serializeSafetensors([{ name: 'x', dtype, shape: [65536], data: decoded }])).tensors.get('x')!;
    const bits = new Uint16Array(back.data.slice().buffer);
    let mismatches = 0;
    for (let i = 0; i < 65536; i++) if (!Number.isNaN(decoded[i]) && bits[i] !== i) mismatches++;
    t.is(mismatches, 0, `${dtype} exact values`);
    // Midpoints between consecutive positive finite values (exact in float32) go to the even pattern.
    const mids: number[] = [];
    const want: number[] = [];
    for (let i = 0; i < 0x7fff; i++) {
      const lo = decoded[i]!;
      const hi = decoded[i + 1]!;
      if (!Number.isFinite(hi)) break;
      const mid = Math.fround((lo + hi) / 2);
      if (mid === (lo + hi) / 2 && mid !== lo && mid !== hi) {
        mids.push(mid);
        want.push(i % 2 === 0 ? i : i + 1);
      }
    }
    t.true(mids.length > 1000, `${dtype}: ${mids.length} midpoints`);
    const rounded = parseSafetensors(
      serializeSafetensors([{ name: 'm', dtype, shape: [mids.length], data: Float32Array.from(mids) }]),
    ).tensors.get('m')!;
    t.deepEqual([...new Uint16Array(rounded.data.slice().buffer)], want, `${dtype} ties to even`);
  }
});

test('toIntArray converts labels and checks the int32 range', (t) => {
  const { tensors } = parseSafetensors(
    serializeSafetensors([
      { name: 'labels', dtype: 'I64', shape: [3], data: BigInt64Array.from([0n, 4n, -1n]) },
      { name: 'big', dtype: 'I64', shape: [2], data: BigInt64Array.from([0n, 2n ** 31n]) },
      { name: 'u32', dtype: 'U32', shape: [1], data: Uint32Array.from([2 ** 31]) },
      { name: 'u8', dtype: 'U8', shape: [2], data: Uint8Array.from([3, 255]) },
      { name: 'w', dtype: 'F32', shape: [1], data: Float32Array.from([1]) },
      { name: 'q', dtype: 'F4', shape: [2], data: Uint8Array.from([0x21]) },
    ]),
  );
  t.deepEqual([...toIntArray(tensors.get('labels')!)], [0, 4, -1]);
  t.deepEqual([...toIntArray(tensors.get('u8')!)], [3, 255]);
  const big = t.throws(() => toIntArray(tensors.get('big')!), { instanceOf: FormatError })!;
  t.regex(big.message, /"big".*2147483648 at index 1 does not fit in int32/);
  t.throws(() => toIntArray(tensors.get('u32')!), { message: /"u32".*does not fit in int32/ });
  t.throws(() => toIntArray(tensors.get('w')!), { instanceOf: FormatError, message: /unsupported dtype F32.*"w"/ });
  t.throws(() => toFloat32(tensors.get('q')!), { instanceOf: FormatError, message: /unsupported dtype F4.*"q"/ });
});

test('conversion validates hand-made entries', (t) => {
  const bad: TensorEntry = { name: 'x', dtype: 'F32', shape: [3], data: new Uint8Array(8) };
  t.throws(() => toFloat32(bad), { instanceOf: ShapeError, message: /expected 12 bytes .* for tensor "x" data, got Uint8Array\(8\)/ });
  t.throws(() => toFloat32({ ...bad, dtype: 'F128' as DType }), { instanceOf: FormatError, message: /dtype/ });
});

// ---------------------------------------------------------------------------
// malformed files: one test per rule
// ---------------------------------------------------------------------------

const ok = (name = 'w') => `{"${name}":${entry('F32', [2], [0, 8])}}`;

test('rejects a file shorter than 8 bytes', (t) => {
  rejects(t, new Uint8Array(0), ['0 bytes', 'shorter than the 8-byte']);
  rejects(t, Uint8Array.from([8, 0, 0, 0, 0]), ['5 bytes', 'shorter than the 8-byte']);
});

test('rejects a header length larger than the file (truncated header)', (t) => {
  const full = image(ok(), f32bytes(1, 2));
  rejects(t, full.subarray(0, 20), ['header length 54', 'runs past the end of the file', 'only 12 bytes']);
  rejects(t, Uint8Array.from([...u64le(2n ** 64n - 1n), 123, 125]), ['larger than the 100000000-byte limit']);
});

test('rejects a header longer than 100 MB', (t) => {
  rejects(t, Uint8Array.from([...u64le(MAX_HEADER_SIZE + 1), 123, 125]), [
    `header length ${MAX_HEADER_SIZE + 1} is larger than the ${MAX_HEADER_SIZE}-byte limit`,
  ]);
});

test('rejects a header that does not start with {', (t) => {
  rejects(t, image(` ${ok()}`, f32bytes(1, 2)), ["starting with '{'", 'byte 0x20']);
  rejects(t, image(''), ["starting with '{'", 'empty header']);
  rejects(t, image('\ufeff{}'), ["starting with '{'", 'byte 0xef']);
});

test('rejects a header that is not a JSON object', (t) => {
  rejects(t, image('[1,2]'), ['JSON object', 'byte 0x5b']);
  rejects(t, image('"{}"'), ['JSON object']);
  rejects(t, image('null'), ['JSON object']);
});

test('rejects a header that is not valid UTF-8', (t) => {
  const h = Uint8Array.from([...enc.encode('{"a'), 0xff, 0xfe, ...enc.encode('":{}}')]);
  rejects(t, image(h), ['not valid UTF-8']);
  // Overlong encoding of '"'.
  rejects(t, image(Uint8Array.from([...enc.encode('{'), 0xc0, 0xa2, ...enc.encode('}')])), ['not valid UTF-8']);
});

test('rejects a header that is not valid JSON', (t) => {
  for (const h of [
    '{"a":}',
    '{"a":1,}',
    '{}x',
    '{} {}',
    '{"a":1',
    "{'a':1}",
    '{"a":01}',
    '{"a":NaN}',
    '{"a":"\u0001"}',
    '{"a":"\\x"}',
    '{"a":"\\ud800"}',
    '{"a":tru}',
    '{"a" 1}',
    `{"a":${'['.repeat(100000)}`,
  ]) {
    rejects(t, image(h), ['header is not valid JSON', /at header offset \d+/]);
  }
});

test('rejects duplicate tensor names (JSON.parse would keep the last)', (t) => {
  const h = `{"w":${entry('F32', [1], [0, 4])},"w":${entry('F32', [1], [4, 8])}}`;
  t.notThrows(() => JSON.parse(h));
  rejects(t, image(h, f32bytes(1, 2)), ['duplicate tensor name "w"'], 'w');
});

test('rejects duplicate keys inside an entry and in __metadata__', (t) => {
  const h = `{"w":{"dtype":"F32","shape":[1],"dtype":"F64","data_offsets":[0,4]}}`;
  rejects(t, image(h, f32bytes(1)), ['duplicate key "dtype"'], 'w');
  rejects(t, image(`{"__metadata__":{"a":"1","a":"2"}}`), ['duplicate key "a" in "__metadata__"']);
  rejects(t, image(`{"__metadata__":{},"__metadata__":{}}`), ['duplicate "__metadata__"']);
});

test('rejects __metadata__ that is not an object of strings', (t) => {
  rejects(t, image(`{"__metadata__":["a"]}`), ['"__metadata__" must be an object of string values', '["a"]']);
  rejects(t, image(`{"__metadata__":null}`), ['"__metadata__" must be an object', 'got null']);
  rejects(t, image(`{"__metadata__":{"epoch":3}}`), ['"__metadata__" value for key "epoch" must be a string, got 3']);
  rejects(t, image(`{"__metadata__":{"x":{"y":"z"}}}`), ['key "x" must be a string']);
});

test('rejects an entry that is not an object', (t) => {
  rejects(t, image(`{"w":[0,8]}`), ['entry must be an object', '[0, 8]'], 'w');
  rejects(t, image(`{"w":"F32"}`), ['entry must be an object'], 'w');
});

test('rejects unknown keys in an entry', (t) => {
  const h = `{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"offset":0}}`;
  rejects(t, image(h, f32bytes(1)), ['unknown key "offset"'], 'w');
});

test('rejects missing entry keys', (t) => {
  rejects(t, image(`{"w":{"shape":[1],"data_offsets":[0,4]}}`, f32bytes(1)), ['missing "dtype"'], 'w');
  rejects(t, image(`{"w":{"dtype":"F32","data_offsets":[0,4]}}`, f32bytes(1)), ['missing "shape"'], 'w');
  rejects(t, image(`{"w":{"dtype":"F32","shape":[1]}}`, f32bytes(1)), ['missing "data_offsets"'], 'w');
});

test('rejects an unknown or non-string dtype', (t) => {
  rejects(t, image(`{"w":${entry('F128', [1], [0, 16])}}`, new Uint8Array(16)), ['unknown dtype "F128"'], 'w');
  rejects(t, image(`{"w":${entry('f32', [1], [0, 4])}}`, f32bytes(1)), ['unknown dtype "f32"'], 'w');
  rejects(t, image(`{"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}`, f32bytes(1)), ['dtype must be a string, got 4'], 'w');
});

test('rejects negative, fractional, non-numeric or huge shape dimensions', (t) => {
  const data = f32bytes(1, 2);
  rejects(t, image(`{"w":${entry('F32', [-2], [0, 8])}}`, data), ['shape[0] must be a non-negative integer', '-2', 'negative'], 'w');
  rejects(t, image(`{"w":${entry('F32', [1, 2.5], [0, 8])}}`, data), ['shape[1]', '2.5', 'not an integer'], 'w');
  rejects(t, image(`{"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}`, data), ['shape[0]', '2.0', 'not an integer'], 'w');
  rejects(t, image(`{"w":{"dtype":"F32","shape":[2e0],"data_offsets":[0,8]}}`, data), ['shape[0]', 'not an integer'], 'w');
  rejects(t, image(`{"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}`, data), ['shape[0]', '"2"'], 'w');
  rejects(t, image(`{"w":{"dtype":"F32","shape":[9007199254740993],"data_offsets":[0,8]}}`, data), ['too large'], 'w');
  rejects(t, image(`{"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}}`, data), ['shape must be an array'], 'w');
});

test('rejects shapes whose element count overflows or is not whole bytes', (t) => {
  const big = 2 ** 30;
  rejects(t, image(`{"w":${entry('F32', [big, big, big], [0, 8])}}`, f32bytes(1, 2)), ['too many elements'], 'w');
  rejects(t, image(`{"w":${entry('F4', [3], [0, 2])}}`, [0, 0]), ['F4', '12 bits', 'not a whole number of bytes'], 'w');
});

test('rejects malformed data_offsets', (t) => {
  const data = f32bytes(1, 2);
  rejects(t, image(`{"w":${entry('F32', [2], [0])}}`, data), ['data_offsets must be a pair [begin, end]', '[0]'], 'w');
  rejects(t, image(`{"w":${entry('F32', [2], [0, 8, 8])}}`, data), ['data_offsets must be a pair'], 'w');
  rejects(t, image(`{"w":${entry('F32', [2], { begin: 0 })}}`, data), ['data_offsets must be a pair'], 'w');
  rejects(t, image(`{"w":${entry('F32', [0], [-4, -4])}}`, data), ['data_offsets[0] (begin)', 'negative'], 'w');
  rejects(t, image(`{"w":${entry('F32', [2], [0, 8.5])}}`, data), ['data_offsets[1] (end)', 'not an integer'], 'w');
  rejects(t, image(`{"w":${entry('F32', [0], [8, 0])}}`, data), ['data_offsets [8, 0] are reversed'], 'w');
});

test('rejects a byte length that does not match shape and dtype', (t) => {
  rejects(t, image(`{"w":${entry('F32', [2, 2], [0, 8])}}`, f32bytes(1, 2)), [
    'byte length mismatch',
    'span 8 bytes',
    'F32 with shape [2, 2] needs 16 bytes',
  ], 'w');
  rejects(t, image(`{"w":${entry('F64', [2], [0, 8])}}`, f32bytes(1, 2)), ['needs 16 bytes'], 'w');
});

test('rejects offsets out of the data section (truncated data)', (t) => {
  const full = image(ok(), f32bytes(1, 2));
  rejects(t, full.subarray(0, full.length - 1), ['data_offsets [0, 8] are out of range', 'only 7 bytes', 'truncated'], 'w');
  rejects(t, image(`{"w":${entry('F32', [0], [100, 100])}}`), ['out of range'], 'w');
});

test('rejects overlapping tensors', (t) => {
  const h = `{"a":${entry('F32', [2], [0, 8])},"b":${entry('F32', [2], [4, 12])}}`;
  rejects(t, image(h, f32bytes(1, 2, 3)), ['overlap tensor "a"', '[4, 12]', '[0, 8]'], 'b');
  const same = `{"a":${entry('F32', [1], [0, 4])},"b":${entry('F32', [1], [0, 4])}}`;
  rejects(t, image(same, f32bytes(1)), ['overlap tensor "a"'], 'b');
  const inside = `{"a":${entry('F32', [2], [0, 8])},"z":${entry('F32', [0], [4, 4])}}`;
  rejects(t, image(inside, f32bytes(1, 2)), ['overlap'], 'z');
});

test('rejects holes in the data section', (t) => {
  const h = `{"a":${entry('F32', [1], [0, 4])},"b":${entry('F32', [1], [8, 12])}}`;
  rejects(t, image(h, f32bytes(1, 2, 3)), ['hole in the data section', 'bytes [4, 8)'], 'b');
  const leading = `{"b":${entry('F32', [1], [4, 8])}}`;
  rejects(t, image(leading, f32bytes(1, 2)), ['hole', 'bytes [0, 4)'], 'b');
});

test('rejects trailing bytes not covered by any tensor', (t) => {
  rejects(t, image(ok(), [...f32bytes(1, 2), 0]), ['1 trailing bytes [8, 9) not covered']);
  rejects(t, image('{}', [1, 2, 3]), ['3 trailing bytes']);
});

test('rejects lone surrogates and control characters in names', (t) => {
  rejects(t, image(`{"\\udc00":${entry('U8', [0], [0, 0])}}`), ['lone surrogate']);
  rejects(t, image(`{"a\tb":${entry('U8', [0], [0, 0])}}`), ['control character']);
});

test('parse errors without a file name still describe the problem', (t) => {
  const err = t.throws(() => parseSafetensors(image(`{"w":${entry('F32', [3], [0, 8])}}`, f32bytes(1, 2))), {
    instanceOf: FormatError,
  })!;
  t.is((err as FormatError).file, undefined);
  t.regex(err.message, /^invalid safetensors data: tensor "w": byte length mismatch/);
  t.throws(() => parseSafetensors('abc' as unknown as Uint8Array), { instanceOf: FormatError, message: /expected a Uint8Array for bytes, got "abc"/ });
});

// ---------------------------------------------------------------------------
// serializer input validation
// ---------------------------------------------------------------------------

test('serialize validates its input', (t) => {
  const w = (over: Partial<TensorInput>): TensorInput[] => [
    { name: 'w', dtype: 'F32', shape: [2, 3], data: new Float32Array(6), ...over },
  ];
  t.throws(() => serializeSafetensors(w({ data: new Float32Array(5) })), {
    instanceOf: ShapeError,
    message: 'expected 6 elements (shape [2, 3]) for tensor "w" data, got Float32Array(5)',
  });
  t.throws(() => serializeSafetensors(w({ shape: [2, -3] })), {
    instanceOf: ShapeError,
    message: 'expected an array of non-negative integers for tensor "w" shape, got [2, -3]',
  });
  t.throws(() => serializeSafetensors(w({ shape: [2.5] })), { instanceOf: ShapeError });
  t.throws(() => serializeSafetensors(w({ data: new Float64Array(6) })), {
    instanceOf: FormatError,
    message: /expected Float32Array or Uint8Array of raw bytes for tensor "w" data \(dtype F32\), got Float64Array\(6\)/,
  });
  t.throws(() => serializeSafetensors(w({ data: new Uint8Array(23) })), {
    instanceOf: ShapeError,
    message: /expected 24 raw bytes .* got Uint8Array\(23\)/,
  });
  t.throws(() => serializeSafetensors(w({ dtype: 'F128' as DType })), { instanceOf: FormatError, message: /dtype/ });
  t.throws(() => serializeSafetensors(w({ name: '__metadata__' })), { instanceOf: FormatError, message: /reserved/ });
  t.throws(() => serializeSafetensors(w({ name: '\ud800' })), { instanceOf: FormatError, message: /lone surrogates/ });
  t.throws(() => serializeSafetensors([...w({}), ...w({})]), { instanceOf: FormatError, message: 'duplicate tensor name "w"' });
  t.throws(() => serializeSafetensors(w({}), { epoch: 3 } as unknown as Record<string, string>), {
    instanceOf: FormatError,
    message: 'expected a string for metadata["epoch"], got 3',
  });
  t.throws(() => serializeSafetensors(42 as unknown as TensorInput[]), { instanceOf: FormatError, message: /for tensors, got 42/ });
  t.throws(() => serializeSafetensors([{ name: 'q', dtype: 'F4', shape: [3], data: new Uint8Array(2) }]), {
    instanceOf: ShapeError,
    message: /not a whole number of bytes/,
  });
});

// ---------------------------------------------------------------------------
// files
// ---------------------------------------------------------------------------

const TENSORS: TensorInput[] = [
  { name: 'w', dtype: 'F32', shape: [2, 2], data: Float32Array.from([1, 2, 3, 4]) },
  { name: 'labels', dtype: 'I64', shape: [2], data: BigInt64Array.from([3n, 1n]) },
];

test('writeSafetensors + readSafetensors round trip', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'model.safetensors');
  await writeSafetensors(path, TENSORS, { format: 'pt' });
  const bytes = await readFile(path);
  t.deepEqual(new Uint8Array(bytes), serializeSafetensors(TENSORS, { format: 'pt' }));
  const { tensors, metadata } = await readSafetensors(path);
  t.deepEqual(metadata, { format: 'pt' });
  t.deepEqual([...toFloat32(tensors.get('w')!)], [1, 2, 3, 4]);
  t.deepEqual([...toIntArray(tensors.get('labels')!)], [3, 1]);
  t.deepEqual(await readdir(dir), ['model.safetensors']);
});

test('writeSafetensors with an invalid tensor list leaves the old file byte-identical', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'model.safetensors');
  await writeSafetensors(path, TENSORS);
  const before = await readFile(path);
  const bad: TensorInput[] = [...TENSORS, { name: 'bad', dtype: 'F32', shape: [3], data: new Float32Array(2) }];
  await t.throwsAsync(writeSafetensors(path, bad), { instanceOf: ShapeError, message: /tensor "bad"/ });
  await t.throwsAsync(writeSafetensors(path, TENSORS, { n: 1 } as unknown as Record<string, string>), {
    instanceOf: FormatError,
  });
  t.deepEqual(await readFile(path), before);
  t.deepEqual(await readdir(dir), ['model.safetensors'], 'no temp files left behind');
});

test('writeSafetensors cleans up its temp file when the final rename fails', async (t) => {
  const dir = await tempDir(t);
  const target = join(dir, 'occupied');
  await mkdir(target);
  await writeFile(join(target, 'keep.txt'), 'keep');
  await t.throwsAsync(writeSafetensors(target, TENSORS));
  t.deepEqual((await readdir(dir)).sort(), ['occupied']);
  t.deepEqual(await readdir(target), ['keep.txt']);
  // A missing directory fails without creating anything.
  await t.throwsAsync(writeSafetensors(join(dir, 'missing', 'x.safetensors'), TENSORS), { code: 'ENOENT' });
  t.deepEqual((await readdir(dir)).sort(), ['occupied']);
});

test('readSafetensors errors name the file', async (t) => {
  const dir = await tempDir(t);
  const good = serializeSafetensors(TENSORS);
  const truncated = join(dir, 'truncated.safetensors');
  await writeFile(truncated, good.subarray(0, good.length - 3));
  const e1 = await t.throwsAsync(readSafetensors(truncated), { instanceOf: FormatError });
  t.is((e1 as FormatError).file, truncated);
  t.true(e1!.message.includes(truncated));
  t.regex(e1!.message, /tensor "w".*out of range/);

  const tiny = join(dir, 'tiny.safetensors');
  await writeFile(tiny, Uint8Array.from([1, 2, 3]));
  await t.throwsAsync(readSafetensors(tiny), { instanceOf: FormatError, message: /tiny\.safetensors: file is 3 bytes/ });

  const shortHeader = join(dir, 'short-header.safetensors');
  await writeFile(shortHeader, good.subarray(0, 20));
  await t.throwsAsync(readSafetensors(shortHeader), { instanceOf: FormatError, message: /runs past the end of the file/ });

  await t.throwsAsync(readSafetensors(join(dir, 'absent.safetensors')), { code: 'ENOENT' });
});

test('every dtype has a size', (t) => {
  for (const d of DTYPES) t.true([4, 6, 8, 16, 32, 64].includes(dtypeBits(d)), d);
  t.is(DTYPES.length, 22);
});
