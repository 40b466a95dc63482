/**
 * Pretrained weights: our .npz reader, name maps and loader against timm. The fixtures
 * (test/fixtures/make_pretrained_fixtures.py) hold a tiny ViT in Google's original .npz layout,
 * big_vision's (scanned, linen numbering, `params/`, deflated) and Hugging Face's names, and
 * what timm computes after its own `_load_weights` / `checkpoint_filter_fn`, also at another image
 * size (position embedding resampled). Malformed archives are built here with a small zip writer.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as zlib from 'node:zlib';

import { FormatError, StateDictError, Tensor, ViT, readSafetensors, toFloat32, writeSafetensors } from '../lib/index.js';
import { parseNpy, readNpz, npyToFloat32, type NpyArray } from '../lib/io/npz.js';
import { loadPretrained } from '../lib/io/pretrained.js';
import { resamplePosEmbed } from '../lib/io/resample.js';
import { relErr } from './util.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const fixture = (name: string) => path.join(here, 'fixtures', 'pretrained', name);
const tmp = mkdtempSync(path.join(tmpdir(), 'repadapter-pretrained-'));
let tmpCount = 0;
const tmpFile = (ext: string) => path.join(tmp, `f${tmpCount++}${ext}`);

const ARCH = { patchSize: 8, width: 32, depth: 2, heads: 2, mlpRatio: 4 } as const;
const model = (imageSize = 32, numClasses = 10, extra: object = {}) =>
  ViT.create({ ...ARCH, imageSize, numClasses, adapter: { placement: 'block', hidden: 8, groups: 2, scale: 0.5 }, ...extra }, { seed: 7 });

const reference = readSafetensors(fixture('reference.safetensors'));
async function ref(key: string): Promise<Float32Array> {
  const entry = (await reference).tensors.get(key);
  if (!entry) throw new Error(`reference lacks ${key}`);
  return toFloat32(entry);
}

async function logits(vit: ViT): Promise<Float32Array> {
  const S = vit.config.imageSize;
  using images = Tensor.from(await ref(`input.images${S}`), [2, 3, S, S]);
  vit.eval();
  using out = vit.forward(images);
  return out.toArray();
}

function snapshot(vit: ViT): Map<string, Float32Array> {
  return new Map(vit.parameters().map((p) => [p.name, vit.param(p.name)]));
}

function sameParams(t: ExecutionContext, a: Map<string, Float32Array>, b: Map<string, Float32Array>) {
  t.deepEqual([...a.keys()], [...b.keys()]);
  for (const [k, v] of a) t.deepEqual(Buffer.from(v.buffer, v.byteOffset, v.byteLength), Buffer.from(b.get(k)!.buffer, b.get(k)!.byteOffset, b.get(k)!.byteLength), k);
}

// ---- a minimal .npy / zip writer for building archives ---------------------------------------

function npy(descr: string, shape: readonly number[], data: Uint8Array, opts: { fortran?: boolean; version?: 1 | 2; header?: string } = {}): Uint8Array {
  const version = opts.version ?? 1;
  const shapeText = `(${shape.join(', ')}${shape.length === 1 ? ',' : ''})`;
  let header = opts.header ?? `{'descr': '${descr}', 'fortran_order': ${opts.fortran ? 'True' : 'False'}, 'shape': ${shapeText}, }`;
  const pre = version === 1 ? 10 : 12;
  header = header.padEnd(Math.ceil((pre + header.length + 1) / 64) * 64 - pre - 1) + '\n';
  const out = new Uint8Array(pre + header.length + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, version, 0]);
  const dv = new DataView(out.buffer);
  if (version === 1) dv.setUint16(8, header.length, true);
  else dv.setUint32(8, header.length, true);
  out.set(Buffer.from(header, 'latin1'), pre);
  out.set(data, pre + header.length);
  return out;
}

const npyOf = (a: NpyArray) => npy(`${a.dtype === 'b1' || a.dtype.endsWith('1') ? '|' : '<'}${a.dtype}`, a.shape, a.data);
const f32 = (values: ArrayLike<number>) => new Uint8Array(Float32Array.from(values).buffer);

interface Member {
  name: string;
  data: Uint8Array;
  deflate?: boolean;
  /** Override what is stored (e.g. a truncated deflate stream). */
  stored?: Uint8Array;
  crc?: number;
}

function zip(members: Member[]): Uint8Array {
  const chunks: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const m of members) {
    const name = Buffer.from(m.name, 'utf8');
    const body = Buffer.from(m.stored ?? (m.deflate ? zlib.deflateRawSync(m.data) : m.data));
    const crc = m.crc ?? zlib.crc32(m.data);
    const method = m.deflate ? 8 : 0;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(0x800, 6);
    local.writeUInt16LE(method, 8);
    local.writeUInt16LE(0x21, 12);
    local.writeUInt32LE(crc >>> 0, 14);
    local.writeUInt32LE(body.length, 18);
    local.writeUInt32LE(m.data.length, 22);
    local.writeUInt16LE(name.length, 26);
    const cd = Buffer.alloc(46);
    cd.writeUInt32LE(0x02014b50, 0);
    cd.writeUInt16LE(20, 4);
    cd.writeUInt16LE(20, 6);
    cd.writeUInt16LE(0x800, 8);
    cd.writeUInt16LE(method, 10);
    cd.writeUInt16LE(0x21, 14);
    cd.writeUInt32LE(crc >>> 0, 16);
    cd.writeUInt32LE(body.length, 20);
    cd.writeUInt32LE(m.data.length, 24);
    cd.writeUInt16LE(name.length, 28);
    cd.writeUInt32LE(offset, 42);
    chunks.push(local, name, body);
    central.push(cd, name);
    offset += local.length + name.length + body.length;
  }
  const cdBytes = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(members.length, 8);
  end.writeUInt16LE(members.length, 10);
  end.writeUInt32LE(cdBytes.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...chunks, cdBytes, end]);
}

function writeZip(members: Member[]): string {
  const file = tmpFile('.npz');
  writeFileSync(file, zip(members));
  return file;
}

const googleArrays = readNpz(fixture('google_vit.npz')).then((f) => f.arrays);

/** The google fixture's members, renamed / changed / extended. */
async function googleVariant(change: (arrays: Map<string, Uint8Array>) => void): Promise<string> {
  const members = new Map<string, Uint8Array>();
  for (const [k, a] of await googleArrays) members.set(k, npyOf(a));
  change(members);
  return writeZip([...members].map(([k, data]) => ({ name: `${k}.npy`, data })));
}

// ---- logits against timm ---------------------------------------------------------------------

const cases: { file: string; size: number; expect: string; layout: 'google' | 'huggingface'; pos?: string }[] = [
  { file: 'google_vit.npz', size: 32, expect: 'google.logits32', layout: 'google' },
  { file: 'google_vit.npz', size: 48, expect: 'google.logits48', layout: 'google', pos: 'google.pos_embed48' },
  { file: 'bigvision_vit.npz', size: 32, expect: 'bigvision.logits32', layout: 'google' },
  { file: 'bigvision_vit.npz', size: 48, expect: 'bigvision.logits48', layout: 'google' },
  { file: 'hf_vit.safetensors', size: 32, expect: 'google.logits32', layout: 'huggingface' },
  { file: 'hf_vit.safetensors', size: 48, expect: 'timm.logits48', layout: 'huggingface', pos: 'timm.pos_embed48' },
];

for (const c of cases) {
  test(`${c.file} at ${c.size}px: logits match timm's`, async (t) => {
    using vit = model(c.size);
    const report = await loadPretrained(vit, fixture(c.file));
    t.is(report.layout, c.layout);
    t.deepEqual(report.reinitialised, []);
    t.deepEqual(report.missing, []);
    t.deepEqual(report.unexpected, []);
    t.is(report.loaded.length, 4 + 2 * 12 + 2 + 2, 'cls, pos, patch w/b; 12 per block; norm; head');
    t.true(report.kept.every((n) => n.includes('.adapter_')) && report.kept.length === 2 * 2 * 4, 'adapters are new');
    t.deepEqual(report.resampled.map((r) => [r.name, r.from, r.to]), c.size === 32 ? [] : [['pos_embed', [4, 4], [6, 6]]]);
    const err = relErr(await logits(vit), await ref(c.expect));
    t.log(`max error ${err.toExponential(2)} relative`);
    t.true(err <= 1e-4);
    if (c.pos) t.true(relErr(vit.param('pos_embed'), await ref(c.pos)) <= 1e-5);
  });
}

test('timm safetensors (module. prefix) at another size: bicubic antialiased resampling, logits match timm', async (t) => {
  using base = model(32);
  await loadPretrained(base, fixture('google_vit.npz'));
  const file = tmpFile('.safetensors');
  await writeSafetensors(
    file,
    [...base.stateDict()].filter(([n]) => !n.includes('adapter_')).map(([name, { shape, data }]) => ({ name: `module.${name}`, dtype: 'F32' as const, shape, data })),
  );
  using vit = model(48);
  const report = await loadPretrained(vit, file);
  t.is(report.layout, 'timm');
  t.is(report.description, 'timm ViT under module.');
  t.deepEqual(report.resampled, [{ name: 'pos_embed', from: [4, 4], to: [6, 6], interpolation: 'bicubic', antialias: true }]);
  t.true(relErr(vit.param('pos_embed'), await ref('timm.pos_embed48')) <= 1e-5);
  t.true(relErr(await logits(vit), await ref('timm.logits48')) <= 1e-4);
});

test('the position embedding resampler matches timm.layers.resample_abs_pos_embed', async (t) => {
  const src = await ref('resample.source');
  for (const interpolation of ['bicubic', 'bilinear'] as const)
    for (const antialias of [false, true])
      for (const n of [3, 6, 7]) {
        const ours = resamplePosEmbed(src, 32, [4, 4], [n, n], { interpolation, antialias, prefixTokens: 1 });
        const theirs = await ref(`resample.${interpolation}${antialias ? '_aa' : ''}.g${n}`);
        const err = relErr(ours, theirs);
        t.true(err <= 1e-5, `${interpolation} antialias=${antialias} 4→${n}: ${err}`);
        t.deepEqual(ours.subarray(0, 32), src.subarray(0, 32), 'the class-token row is kept aside');
      }
});

// ---- layout variants --------------------------------------------------------------------------

test('opt/target/ prefix, optimizer state and a pre_logits layer: backbone loads, head is re-initialised', async (t) => {
  const file = await googleVariant((m) => {
    const entries = [...m];
    m.clear();
    for (const [k, v] of entries) m.set(`opt/target/${k}`, v);
    m.set('opt/target/pre_logits/kernel', npy('<f4', [32, 32], f32(new Float32Array(1024).fill(0.01))));
    m.set('opt/target/pre_logits/bias', npy('<f4', [32], f32(new Float32Array(32))));
    m.set('opt/state/step', npy('<i8', [], new Uint8Array(8)));
  });
  using plain = model(32);
  await loadPretrained(plain, fixture('google_vit.npz'));
  using vit = model(32);
  const fresh = snapshot(vit);
  const report = await loadPretrained(vit, file);
  t.is(report.description, 'Google ViT .npz under opt/target/');
  t.deepEqual(report.reinitialised, ['head.weight', 'head.bias']);
  t.true(report.notes.some((n) => n.includes('pre_logits')));
  t.deepEqual(new Set(report.unexpected), new Set(['opt/target/pre_logits/kernel', 'opt/target/pre_logits/bias', 'opt/state/step', 'opt/target/head/kernel', 'opt/target/head/bias']));
  for (const p of vit.parameters()) {
    const expected = p.role === 'head' ? fresh.get(p.name)! : plain.param(p.name);
    t.deepEqual(vit.param(p.name), expected, p.name);
  }
});

test('flax linen sub-module numbering without big_vision markers is recognised', async (t) => {
  const file = await googleVariant((m) => {
    for (const [k, v] of [...m]) {
      const renamed = k.replace('MultiHeadDotProductAttention_1', 'MultiHeadDotProductAttention_0').replace('LayerNorm_2', 'LayerNorm_1').replace('MlpBlock_3', 'MlpBlock_0');
      m.delete(k);
      m.set(renamed, v);
    }
  });
  using vit = model(32);
  const report = await loadPretrained(vit, file);
  t.true(report.notes.some((n) => n.includes('linen')));
  t.true(relErr(await logits(vit), await ref('google.logits32')) <= 1e-4);
});

test('Hugging Face ViTModel names (no vit. prefix, pooler, no classifier): pooler ignored, head re-initialised', async (t) => {
  const hf = await readSafetensors(fixture('hf_vit.safetensors'));
  const file = tmpFile('.safetensors');
  const tensors = [...hf.tensors.values()]
    .filter((e) => !e.name.startsWith('classifier.'))
    .map((e) => ({ name: e.name.replace(/^vit\./, ''), dtype: e.dtype, shape: e.shape, data: e.data }));
  tensors.push({ name: 'pooler.dense.weight', dtype: 'F32', shape: [32, 32], data: f32(new Float32Array(1024)) });
  tensors.push({ name: 'pooler.dense.bias', dtype: 'F32', shape: [32], data: f32(new Float32Array(32)) });
  await writeSafetensors(file, tensors);
  using vit = model(32);
  const head = vit.param('head.weight');
  const report = await loadPretrained(vit, file);
  t.is(report.layout, 'huggingface');
  t.deepEqual(report.reinitialised, ['head.weight', 'head.bias']);
  t.deepEqual(report.unexpected.sort(), ['pooler.dense.bias', 'pooler.dense.weight']);
  t.deepEqual(vit.param('head.weight'), head);
});

test('another class count or newHead: the model keeps its fresh head, the backbone loads', async (t) => {
  using five = model(32, 5);
  const head5 = five.param('head.weight');
  const r5 = await loadPretrained(five, fixture('google_vit.npz'));
  t.deepEqual(r5.reinitialised, ['head.weight', 'head.bias']);
  t.true(r5.notes.some((n) => n.includes('10 classes, the model 5')));
  t.deepEqual(five.param('head.weight'), head5);
  t.deepEqual(r5.unexpected.sort(), ['head/bias', 'head/kernel']);

  using ten = model(32, 10);
  const head10 = ten.param('head.bias');
  const r10 = await loadPretrained(ten, fixture('google_vit.npz'), { newHead: true });
  t.deepEqual(r10.reinitialised, ['head.weight', 'head.bias']);
  t.deepEqual(ten.param('head.bias'), head10);
  t.deepEqual(ten.param('cls_token'), five.param('cls_token'));
});

// ---- problems, all at once, and nothing changed ---------------------------------------------------

test('missing, unknown and misshaped keys are reported at once, and the model is unchanged', async (t) => {
  const file = await googleVariant((m) => {
    m.delete('Transformer/encoderblock_1/LayerNorm_2/scale');
    m.delete('Transformer/encoder_norm/bias');
    m.set('Transformer/encoderblock_1/Foo_9/kernel', npy('<f4', [2], f32([1, 2])));
    m.set('something/else', npy('<f4', [1], f32([1])));
    m.set('cls', npy('<f4', [1, 1, 31], f32(new Float32Array(31))));
    m.set('Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/kernel', npy('<f4', [32, 4, 8], f32(new Float32Array(1024))));
  });
  using vit = model(32);
  const before = snapshot(vit);
  const error = await t.throwsAsync(loadPretrained(vit, file), { instanceOf: StateDictError });
  t.deepEqual(error.missing, [
    'Transformer/encoder_norm/bias (for norm.bias)',
    'Transformer/encoderblock_1/LayerNorm_2/scale (for blocks.1.norm2.weight)',
  ]);
  t.deepEqual(error.unexpected.sort(), ['Transformer/encoderblock_1/Foo_9/kernel', 'something/else']);
  t.deepEqual(error.misshaped, [
    { name: 'cls', expected: [1, 1, 32], got: [1, 1, 31] },
    { name: 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/kernel', expected: [32, 2, 16], got: [32, 4, 8] },
  ]);
  t.regex(error.message, /2 missing, 2 unexpected, 2 misshaped/);
  t.regex(error.message, new RegExp(`for ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(Google ViT \\.npz\\)`));
  sameParams(t, snapshot(vit), before);

  // strict: false takes what fits, reports the rest, still refuses wrong shapes.
  const lenient = await googleVariant((m) => {
    m.delete('Transformer/encoder_norm/bias');
    m.set('something/else', npy('<f4', [1], f32([1])));
  });
  const report = await loadPretrained(vit, lenient, { strict: false });
  t.deepEqual(report.missing, ['Transformer/encoder_norm/bias (for norm.bias)']);
  t.deepEqual(report.unexpected, ['something/else']);
  t.deepEqual(vit.param('norm.bias'), before.get('norm.bias')!);
  await t.throwsAsync(loadPretrained(vit, file, { strict: false }), { instanceOf: StateDictError });
});

test('a model of another patch size or depth: every mismatch in one error', async (t) => {
  using vit = ViT.create({ imageSize: 32, patchSize: 16, width: 32, depth: 3, heads: 2, numClasses: 10 });
  const before = snapshot(vit);
  const error = await t.throwsAsync(loadPretrained(vit, fixture('bigvision_vit.npz')), { instanceOf: StateDictError });
  t.deepEqual(error.misshaped.map((m) => m.name).slice(0, 2), ['params/embedding/kernel', 'params/Transformer/encoderblock/LayerNorm_0/scale']);
  t.deepEqual(error.misshaped[0], { name: 'params/embedding/kernel', expected: [16, 16, 3, 32], got: [8, 8, 3, 32] });
  t.true(error.misshaped.every((m) => m.name === 'params/embedding/kernel' || m.got[0] === 2), 'stacked blocks: depth 2, not 3');
  sameParams(t, snapshot(vit), before);
});

test('a timm file of a global-pool model: fc_norm is unexpected, norm is missing', async (t) => {
  using base = model(32);
  await loadPretrained(base, fixture('google_vit.npz'));
  const file = tmpFile('.safetensors');
  const tensors = [...base.stateDict()]
    .filter(([n]) => !n.includes('adapter_'))
    .map(([name, { shape, data }]) => ({ name: name.replace(/^norm\./, 'fc_norm.'), dtype: 'F32' as const, shape, data }));
  await writeSafetensors(file, tensors);
  using vit = model(32);
  const error = await t.throwsAsync(loadPretrained(vit, file), { instanceOf: StateDictError });
  t.deepEqual(error.missing, ['norm.weight', 'norm.bias']);
  t.deepEqual(error.unexpected, ['fc_norm.bias', 'fc_norm.weight']);
});

test('dryRun plans and reports but changes nothing', async (t) => {
  using vit = model(48);
  const before = snapshot(vit);
  const report = await loadPretrained(vit, fixture('google_vit.npz'), { dryRun: true });
  t.is(report.resampled.length, 1);
  sameParams(t, snapshot(vit), before);
});

test('an unknown layout or a file that is not weights: a clear FormatError', async (t) => {
  const file = tmpFile('.safetensors');
  await writeSafetensors(file, [{ name: 'foo.bar', dtype: 'F32', shape: [1], data: new Float32Array(1) }]);
  using vit = model(32);
  const e1 = await t.throwsAsync(loadPretrained(vit, file), { instanceOf: FormatError });
  t.regex(e1.message, /cannot tell which layout .* "foo.bar"/);
  const pickle = tmpFile('.pth');
  writeFileSync(pickle, Buffer.from([0x80, 0x02, 0x7d, 0x71, 0x00]));
  const e2 = await t.throwsAsync(loadPretrained(vit, pickle), { instanceOf: FormatError });
  t.regex(e2.message, /pickled PyTorch checkpoint/);
  const torchZip = writeZip([{ name: 'archive/data.pkl', data: new Uint8Array([0x80, 2]) }]);
  const e3 = await t.throwsAsync(loadPretrained(vit, torchZip), { instanceOf: FormatError });
  t.regex(e3.message, /PyTorch checkpoint \(torch\.save\)/);
});

// ---- malformed archives -------------------------------------------------------------------------

async function badNpz(t: ExecutionContext, members: Member[], member: string, pattern: RegExp) {
  const file = writeZip(members);
  using vit = model(32);
  const before = snapshot(vit);
  const error = await t.throwsAsync(loadPretrained(vit, file), { instanceOf: FormatError });
  if (!error) return;
  t.log(error.message);
  t.is(error.file, file);
  t.is(error.tensor, member);
  t.regex(error.message, new RegExp(`member "${member.replace(/[./]/g, '\\$&')}"`));
  t.regex(error.message, pattern);
  sameParams(t, snapshot(vit), before);
}

const good = npy('<f4', [1, 1, 32], f32(new Float32Array(32).fill(1)));

test('malformed npz: a truncated (deflated) member', async (t) => {
  const full = zlib.deflateRawSync(good);
  await badNpz(t, [{ name: 'embedding/bias.npy', data: npy('<f4', [32], f32(new Float32Array(32))) }, { name: 'cls.npy', data: good, deflate: true, stored: full.subarray(0, full.length >> 1) }],
    'cls.npy', /cannot be read, its stored data is damaged or truncated/);
});

test('malformed npz: .npy data shorter or longer than its shape says', async (t) => {
  await badNpz(t, [{ name: 'cls.npy', data: good.subarray(0, good.length - 20) }], 'cls.npy', /truncated: holds 108 bytes of data, but shape \(1, 1, 32\) of dtype '<f4' needs 128/);
  const longer = new Uint8Array(good.length + 8);
  longer.set(good);
  await badNpz(t, [{ name: 'cls.npy', data: longer }], 'cls.npy', /holds 136 bytes of data, but shape \(1, 1, 32\) of dtype '<f4' needs 128/);
});

test('malformed npz: a pickled object array (as numpy writes it) is refused', async (t) => {
  using vit = model(32);
  const error = await t.throwsAsync(loadPretrained(vit, fixture('object_array.npz')), { instanceOf: FormatError });
  t.is(error.tensor, 'cls.npy');
  t.regex(error.message, /member "cls\.npy": holds Python objects \(dtype '\|O'\).*refusing/);
});

test('malformed npz: bad headers, dtypes, CRC and archives', async (t) => {
  await badNpz(t, [{ name: 'cls.npy', data: npy('<f4', [1], f32([0]), { header: "{'descr': '<f4', 'fortran_order': False, 'shape': (1, -1, 32), }" }) }],
    'cls.npy', /expected a tuple of non-negative integers for shape, got \(1, -1, 32\)/);
  await badNpz(t, [{ name: 'cls.npy', data: npy('<f4', [1], f32([0]), { header: "{'descr': '<f4', 'shape': (1,), }" }) }], 'cls.npy', /exactly the keys/);
  await badNpz(t, [{ name: 'cls.npy', data: npy('<f4', [1], f32([0]), { header: "{'descr': '<f4', 'fortran_order': False, 'shape': (1,}" }) }], 'cls.npy', /cannot parse the \.npy header/);
  await badNpz(t, [{ name: 'cls.npy', data: npy('<c8', [1], new Uint8Array(8)) }], 'cls.npy', /unsupported dtype '<c8'/);
  await badNpz(t, [{ name: 'cls.npy', data: npy('<V2', [4], new Uint8Array(8)) }], 'cls.npy', /void dtype '<V2'.*bfloat16/);
  await badNpz(t, [{ name: 'cls.npy', data: Buffer.from('not an array at all') }], 'cls.npy', /no \\x93NUMPY magic/);
  await badNpz(t, [{ name: 'cls.npy', data: good, crc: 1234 }], 'cls.npy', /CRC-32 mismatch/);
  await badNpz(t, [{ name: 'cls.npy', data: good }, { name: 'cls.npy', data: good }], 'cls.npy', /appears twice/);
  await badNpz(t, [{ name: 'notes.txt', data: Buffer.from('hi') }], 'notes.txt', /not an \.npy array/);

  const whole = zip([{ name: 'cls.npy', data: good }]);
  const cut = tmpFile('.npz');
  writeFileSync(cut, whole.subarray(0, whole.length - 10));
  using vit = model(32);
  const error = await t.throwsAsync(loadPretrained(vit, cut), { instanceOf: FormatError });
  t.regex(error.message, /invalid npz file .*: not a zip archive, or a damaged one/);
});

// ---- the .npy reader itself -------------------------------------------------------------------------

test('.npy: Fortran order, big-endian, version 2, integer and half dtypes', (t) => {
  const values = Array.from({ length: 24 }, (_, i) => i * 0.5 - 3);
  // Fortran order of a C array [2,3,4]: element (i,j,k) at i + 2j + 6k.
  const fortran = new Float32Array(24);
  for (let i = 0; i < 2; i++) for (let j = 0; j < 3; j++) for (let k = 0; k < 4; k++) fortran[i + 2 * j + 6 * k] = values[i * 12 + j * 4 + k];
  const a = parseNpy(npy('<f4', [2, 3, 4], new Uint8Array(fortran.buffer), { fortran: true }));
  t.deepEqual(a.shape, [2, 3, 4]);
  t.deepEqual([...npyToFloat32(a)], values);

  const be = Buffer.alloc(24 * 8);
  values.forEach((v, i) => be.writeDoubleBE(v, i * 8));
  t.deepEqual([...npyToFloat32(parseNpy(npy('>f8', [24], be, { version: 2 })))], values);

  const i8 = Buffer.alloc(16);
  i8.writeBigInt64LE(-5n, 0);
  i8.writeBigInt64LE(7n, 8);
  t.deepEqual([...npyToFloat32(parseNpy(npy('<i8', [2], i8)))], [-5, 7]);
  t.deepEqual([...npyToFloat32(parseNpy(npy('<f2', [3], new Uint8Array(new Uint16Array([0x3c00, 0xc000, 0x3555]).buffer))))], [1, -2, 0.333251953125]);
  t.deepEqual([...npyToFloat32(parseNpy(npy('|b1', [3], new Uint8Array([1, 0, 1]))))], [1, 0, 1]);
  t.deepEqual(parseNpy(npy('<f4', [], f32([2.5]))).shape, []);
});

test('readNpz reads numpy-written archives: stored, deflated, mixed dtypes', async (t) => {
  const google = await readNpz(fixture('google_vit.npz'));
  t.is(google.arrays.get('cls')!.dtype, 'f8');
  t.is(google.arrays.get('embedding/bias')!.dtype, 'f2');
  t.deepEqual(google.arrays.get('embedding/kernel')!.shape, [8, 8, 3, 32]);
  const bv = await readNpz(fixture('bigvision_vit.npz'), { filter: (k) => k.endsWith('/cls') });
  t.deepEqual([...bv.arrays.keys()], ['params/cls']);
  t.is(bv.keys.length, 24);
  t.deepEqual(npyToFloat32(bv.arrays.get('params/cls')!), npyToFloat32(google.arrays.get('cls')!));
  t.deepEqual(readFileSync(fixture('google_vit.npz')).subarray(0, 2).toString(), 'PK');
});
