/**
 * The bad-input catalogue: every way of misusing the public API that the package promises to
 * refuse, each with its typed error, a message that names what was wrong, the process still
 * alive, and (where there is state) nothing lost.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { mkdtemp, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  ArgumentError,
  BusyError,
  ConfigError,
  DisposedError,
  FormatError,
  OutOfRangeError,
  RepAdapterError,
  ShapeError,
  StateDictError,
  Tensor,
  ViT,
  resolveConfig,
  writeSafetensors,
} from '../lib/index.js';
import type { CreateOptions, ViTOptions } from '../lib/index.js';
import { TINY, images, values } from './helpers/tiny.js';

type Entries = Map<string, { shape: readonly number[]; data: Float32Array }>;

let dir = '';
test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'repadapter-errors-'));
});
test.after.always(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

function tiny(options: CreateOptions = {}): ViT {
  return ViT.create({ ...TINY }, options);
}

/** Every parameter's values, by name (copies). */
function snapshot(model: ViT): Map<string, Float32Array> {
  return new Map(model.parameters().map((p) => [p.name, model.param(p.name)]));
}

/** A state dict of `model` with every value changed, so a load that happened would show. */
function shiftedStateDict(model: ViT, by = 0.5): Entries {
  const out: Entries = new Map();
  for (const [name, { shape, data }] of model.stateDict()) out.set(name, { shape, data: data.map((v) => v + by) });
  return out;
}

/** Asserts that `fn` throws an error of class `type` whose message contains every fragment. */
function throwsNaming<E extends Error>(
  t: ExecutionContext,
  fn: () => unknown,
  type: abstract new (...args: never[]) => E,
  ...fragments: (string | RegExp)[]
): E {
  const error = t.throws(fn, { instanceOf: type as unknown as new (...args: unknown[]) => E });
  if (!error) return error as unknown as E;
  t.true(error instanceof RepAdapterError, `${error.name} should be a RepAdapterError`);
  t.is(error.name, type.name);
  for (const f of fragments) {
    if (typeof f === 'string') t.true(error.message.includes(f), `message ${JSON.stringify(error.message)} should mention ${JSON.stringify(f)}`);
    else t.regex(error.message, f);
  }
  return error;
}

async function rejectsNaming<E extends Error>(
  t: ExecutionContext,
  promise: Promise<unknown>,
  type: abstract new (...args: never[]) => E,
  ...fragments: (string | RegExp)[]
): Promise<E> {
  const error = await t.throwsAsync(promise, { instanceOf: type as unknown as new (...args: unknown[]) => E });
  if (!error) return error as unknown as E;
  t.is(error.name, type.name);
  for (const f of fragments) {
    if (typeof f === 'string') t.true(error.message.includes(f), `message ${JSON.stringify(error.message)} should mention ${JSON.stringify(f)}`);
    else t.regex(error.message, f);
  }
  return error;
}

/** The listed problems of a ConfigError (one per line after the heading). */
function problems(error: Error): string[] {
  return error.message.split('\n').slice(1).map((s) => s.trim());
}

/** A forward + backward on a fresh input, to show the model (and the process) still work. */
function stillWorks(t: ExecutionContext, model: ViT): void {
  model.train();
  using x = images(2, model.config.imageSize, 99);
  using logits = model.forward(x);
  t.deepEqual(logits.shape, [2, model.config.numClasses]);
  const loss = model.backward({ labels: [0, 1] });
  t.true(Number.isFinite(loss) && loss > 0, `loss ${loss}`);
}

// ---- invalid configs ----------------------------------------------------------------------------

const invalidConfigs: { title: string; options: Record<string, unknown>; mentions: string[] }[] = [
  { title: 'heads not dividing width', options: { width: 16, heads: 3 }, mentions: ['heads 3 must divide width 16'] },
  {
    title: 'adapter groups not dividing the adapter hidden width',
    options: { width: 18, heads: 2, adapter: { hidden: 4, groups: 3 } },
    mentions: ['adapter.groups 3 must divide adapter.hidden 4'],
  },
  {
    title: 'adapter groups not dividing width',
    options: { adapter: { hidden: 6, groups: 3 } },
    mentions: ['adapter.groups 3 must divide width 16'],
  },
  { title: 'patchSize not dividing imageSize', options: { patchSize: 6 }, mentions: ['patchSize 6 must divide imageSize 16'] },
  { title: 'patchSize larger than imageSize', options: { patchSize: 32 }, mentions: ['patchSize 32 must divide imageSize 16'] },
  { title: 'a negative size', options: { depth: -1 }, mentions: ['depth', 'got -1'] },
  { title: 'a zero size', options: { numClasses: 0 }, mentions: ['numClasses', 'got 0'] },
  { title: 'a fractional size', options: { depth: 1.5 }, mentions: ['integer', 'depth', 'got 1.5'] },
  { title: 'a string size', options: { heads: '2' }, mentions: ['heads', 'got "2"'] },
  { title: 'a boolean size', options: { numClasses: true }, mentions: ['numClasses', 'got true'] },
  { title: 'a NaN size', options: { depth: NaN }, mentions: ['depth', 'got NaN'] },
  { title: 'an infinite size', options: { numClasses: Infinity }, mentions: ['numClasses', 'got Infinity'] },
  { title: 'a negative adapter width', options: { adapter: { hidden: -4, groups: 2 } }, mentions: ['adapter.hidden', 'got -4'] },
  { title: 'a fractional adapter groups', options: { adapter: { hidden: 4, groups: 0.5 } }, mentions: ['adapter.groups', 'got 0.5'] },
  { title: 'a zero mlpHidden', options: { mlpHidden: 0 }, mentions: ['mlpHidden', 'got 0'] },
  { title: 'a negative mlpRatio', options: { mlpRatio: -1 }, mentions: ['mlpRatio', 'got -1'] },
  { title: 'a zero layerNormEps', options: { layerNormEps: 0 }, mentions: ['layerNormEps', 'got 0'] },
  { title: 'an unknown option name', options: { widht: 16 }, mentions: ['unknown config option "widht"'] },
  { title: 'an unknown adapter option name', options: { adapter: { hidden: 4, groups: 2, grops: 2 } }, mentions: ['unknown adapter option "grops"'] },
  { title: 'a bad placement', options: { adapter: { placement: 'mlp', hidden: 4, groups: 2 } }, mentions: ['adapter.placement', '"mlp"'] },
  {
    title: "the native-only placement 'none'",
    options: { adapter: { placement: 'none', hidden: 4, groups: 2 } },
    mentions: ['adapter.placement', '"none"'],
  },
  { title: 'adapter dropout of 1', options: { adapter: { hidden: 4, groups: 2, dropout: 1 } }, mentions: ['adapter.dropout', 'got 1'] },
  { title: 'adapter dropout above 1', options: { adapter: { hidden: 4, groups: 2, dropout: 1.5 } }, mentions: ['adapter.dropout', 'got 1.5'] },
  { title: 'negative adapter dropout', options: { adapter: { hidden: 4, groups: 2, dropout: -0.1 } }, mentions: ['adapter.dropout', 'got -0.1'] },
  { title: 'dropPath of 1', options: { dropPath: 1 }, mentions: ['dropPath', 'got 1'] },
  { title: 'a non-finite adapter scale', options: { adapter: { hidden: 4, groups: 2, scale: NaN } }, mentions: ['adapter.scale', 'got NaN'] },
  { title: 'an adapter that is not an object', options: { adapter: 8 }, mentions: ['adapter', 'got 8'] },
  { title: 'an unknown trainable set', options: { trainable: 'backbone' }, mentions: ['trainable', '"backbone"'] },
];

for (const { title, options, mentions } of invalidConfigs) {
  test(`config: ${title} → ConfigError naming it`, (t) => {
    const config = { ...TINY, ...options } as ViTOptions;
    const error = throwsNaming(t, () => ViT.create(config), ConfigError, 'invalid ViT config', ...mentions);
    // resolveConfig is the same check, with the same message.
    t.is(t.throws(() => resolveConfig(config))?.message, error.message);
  });
}

test('config: a single bad divisibility is reported alone (no invented problems)', (t) => {
  const error = throwsNaming(t, () => ViT.create({ ...TINY, width: 18, heads: 2, adapter: { hidden: 4, groups: 3 } }), ConfigError);
  t.deepEqual(problems(error), ['adapter.groups 3 must divide adapter.hidden 4']);
});

// A size that fails its own check is not fed to the divisibility checks (no follow-on problems).
test('config: one bad size is reported once, without follow-on NaN problems', (t) => {
  const upper = { width: 262144, imageSize: 65536, patchSize: 65536, heads: 262144 };
  for (const key of ['width', 'imageSize', 'patchSize', 'heads'] as const) {
    const error = t.throws(() => ViT.create({ ...TINY, [key]: -16 }), { instanceOf: ConfigError });
    t.deepEqual(problems(error!), [`expected an integer in [1, ${upper[key]}] for ${key}, got -16`], key);
  }
});

// Sizes are bounded so that no product of them (tokens, parameter counts) can overflow.
test('config: sizes whose products overflow are refused', (t) => {
  const error = t.throws(() => ViT.create({ ...TINY, adapter: null, imageSize: 2 ** 40 }));
  t.true(error instanceof RepAdapterError, String(error));
});

test('config: every unknown option name is listed', (t) => {
  const error = throwsNaming(
    t,
    () => ViT.create({ ...TINY, colour: 'red', widht: 16 } as ViTOptions),
    ConfigError,
    '"colour"',
    '"widht"',
  );
  t.is(problems(error).length, 2);
});

test('config: several problems at once → ONE ConfigError listing all of them', (t) => {
  const config = {
    imageSize: 16,
    patchSize: 5,
    width: 18,
    depth: 0,
    heads: 4,
    numClasses: 3,
    bogus: true,
    adapter: { placement: 'x', hidden: 5, groups: 4, dropout: 1 },
  } as unknown as ViTOptions;
  const error = throwsNaming(
    t,
    () => ViT.create(config),
    ConfigError,
    'unknown config option "bogus"',
    'depth, got 0',
    'patchSize 5 must divide imageSize 16',
    'heads 4 must divide width 18',
    'adapter.placement, got "x"',
    'adapter.groups 4 must divide adapter.hidden 5',
    'adapter.groups 4 must divide width 18',
    'adapter.dropout, got 1',
  );
  t.is(problems(error).length, 8, error.message);
});

test('config: an unknown preset → ConfigError naming it and the known presets', (t) => {
  throwsNaming(t, () => ViT.create('vit_gigantic_patch16_224'), ConfigError, '"vit_gigantic_patch16_224"', 'vit_base_patch16_224');
  throwsNaming(t, () => ViT.create(42 as unknown as string), ConfigError, 'config', 'got 42');
  throwsNaming(t, () => ViT.create(null as unknown as string), ConfigError, 'config', 'got null');
});

test('config: overrides of a preset are checked too (before anything is allocated)', (t) => {
  throwsNaming(t, () => ViT.create('vit_base_patch16_224', { heads: 5 }), ConfigError, 'heads 5 must divide width 768');
  throwsNaming(t, () => ViT.create('vit_base_patch16_224', { imageSize: 100 }), ConfigError, 'patchSize 16 must divide imageSize 100');
});

test('config: a bad seed → ConfigError naming seed', (t) => {
  throwsNaming(t, () => tiny({ seed: -1 }), ConfigError, 'seed', 'got -1');
  throwsNaming(t, () => tiny({ seed: 0.5 }), ConfigError, 'seed', 'got 0.5');
  throwsNaming(t, () => tiny({ seed: '7' as unknown as number }), ConfigError, 'seed', 'got "7"');
  // seed belongs to the options, not the config object.
  throwsNaming(t, () => ViT.create({ ...TINY, seed: 1 } as ViTOptions), ConfigError, 'unknown config option "seed"');
});

test('config: after every refusal the process still builds and trains a model', (t) => {
  for (const { options } of invalidConfigs) t.throws(() => ViT.create({ ...TINY, ...options } as ViTOptions), { instanceOf: ConfigError });
  using model = tiny();
  stillWorks(t, model);
});

// ---- state dicts --------------------------------------------------------------------------------

test('loadStateDict: missing, unexpected and misshaped names are all reported at once, nothing changes', (t) => {
  using model = tiny({ seed: 1 });
  using source = tiny({ seed: 2 });
  const before = snapshot(model);
  const entries: Entries = source.stateDict();
  entries.delete('head.bias');
  entries.delete('norm.weight');
  entries.set('blocks.5.norm1.weight', { shape: [16], data: new Float32Array(16) });
  entries.set('fc_norm.bias', { shape: [16], data: new Float32Array(16) });
  entries.set('head.weight', { shape: [16, 3], data: new Float32Array(48) }); // transposed: same count
  entries.set('pos_embed', { shape: [1, 4, 16], data: new Float32Array(64) });

  const error = throwsNaming(
    t,
    () => model.loadStateDict(entries),
    StateDictError,
    '2 missing, 2 unexpected, 2 misshaped',
    '"head.bias"',
    '"norm.weight"',
    '"blocks.5.norm1.weight"',
    '"fc_norm.bias"',
    '"head.weight" expected [3, 16], got [16, 3]',
    '"pos_embed" expected [1, 5, 16], got [1, 4, 16]',
  );
  t.deepEqual([...error.missing].sort(), ['head.bias', 'norm.weight']);
  t.deepEqual([...error.unexpected].sort(), ['blocks.5.norm1.weight', 'fc_norm.bias']);
  t.deepEqual(
    [...error.misshaped].sort((a, b) => a.name.localeCompare(b.name)),
    [
      { name: 'head.weight', expected: [3, 16], got: [16, 3] },
      { name: 'pos_embed', expected: [1, 5, 16], got: [1, 4, 16] },
    ],
  );
  t.deepEqual(snapshot(model), before);
});

test('loadStateDict: only missing names (strict) → StateDictError with just .missing', (t) => {
  using model = tiny({ seed: 1 });
  const before = snapshot(model);
  const entries = shiftedStateDict(model);
  entries.delete('blocks.0.adapter_attn.conv_B.weight');
  const error = throwsNaming(t, () => model.loadStateDict(entries), StateDictError, '1 missing', '"blocks.0.adapter_attn.conv_B.weight"');
  t.deepEqual(error.missing, ['blocks.0.adapter_attn.conv_B.weight']);
  t.deepEqual(error.unexpected, []);
  t.deepEqual(error.misshaped, []);
  t.deepEqual(snapshot(model), before);
});

test('loadStateDict: strict:false allows missing and unexpected names and returns them', (t) => {
  using model = tiny({ seed: 1 });
  using source = tiny({ seed: 2 });
  const before = snapshot(model);
  const entries: Entries = source.stateDict();
  entries.delete('head.bias');
  entries.set('extra.weight', { shape: [2], data: new Float32Array(2) });
  const result = model.loadStateDict(entries, { strict: false });
  t.deepEqual(result, { missing: ['head.bias'], unexpected: ['extra.weight'] });
  const after = snapshot(model);
  t.deepEqual(after.get('head.bias'), before.get('head.bias')); // not in the dict: kept
  t.deepEqual(after.get('head.weight'), source.param('head.weight')); // the rest was loaded
  t.deepEqual(after.get('pos_embed'), source.param('pos_embed'));
});

test('loadStateDict: strict:false still refuses misshaped tensors, and changes nothing', (t) => {
  using model = tiny({ seed: 1 });
  const before = snapshot(model);
  const entries = shiftedStateDict(model);
  entries.delete('head.bias');
  entries.set('unknown', { shape: [1], data: new Float32Array(1) });
  entries.set('blocks.0.attn.qkv.bias', { shape: [47], data: new Float32Array(47) });
  const error = throwsNaming(
    t,
    () => model.loadStateDict(entries, { strict: false }),
    StateDictError,
    '1 misshaped',
    '"blocks.0.attn.qkv.bias" expected [48], got [47]',
  );
  t.deepEqual(error.misshaped, [{ name: 'blocks.0.attn.qkv.bias', expected: [48], got: [47] }]);
  t.deepEqual(error.missing, []);
  t.deepEqual(error.unexpected, []);
  t.deepEqual(snapshot(model), before);
});

test('loadStateDict: data whose length does not match its declared shape is refused, nothing changes', (t) => {
  using model = tiny({ seed: 1 });
  const before = snapshot(model);
  const entries = shiftedStateDict(model);
  entries.set('head.bias', { shape: [3], data: new Float32Array(2) });
  const error = throwsNaming(t, () => model.loadStateDict(entries), StateDictError, '"head.bias"');
  t.deepEqual(error.misshaped.map((m) => m.name), ['head.bias']);
  t.deepEqual(snapshot(model), before);
});

// A data-length mismatch under a correct shape reports the count of values given.
test('loadStateDict: a data-length mismatch says how many values were given', (t) => {
  using model = tiny({ seed: 1 });
  const entries = shiftedStateDict(model);
  entries.set('head.bias', { shape: [3], data: new Float32Array(2) });
  const error = t.throws(() => model.loadStateDict(entries), { instanceOf: StateDictError });
  t.notRegex(error!.message, /expected \[3\], got \[3\]/);
  t.regex(error!.message, /\b2\b/);
});

// Data of the wrong array type (a Float64Array, as a JavaScript caller may pass) is refused
// by the checks before the copy loop, so no tensor is overwritten.
test('loadStateDict: data of the wrong array type is refused before anything changes', (t) => {
  using model = tiny({ seed: 1 });
  const before = snapshot(model);
  const entries = shiftedStateDict(model);
  entries.set('head.bias', { shape: [3], data: new Float64Array(3) as unknown as Float32Array });
  t.throws(() => model.loadStateDict(entries), { instanceOf: RepAdapterError });
  t.deepEqual(snapshot(model), before);
});

test('loadStateDict: after a failure a correct state dict still loads completely', (t) => {
  using model = tiny({ seed: 1 });
  using source = tiny({ seed: 2 });
  const entries: Entries = source.stateDict();
  t.throws(() => model.loadStateDict(new Map([...entries].slice(1))), { instanceOf: StateDictError });
  t.deepEqual(model.loadStateDict(entries), { missing: [], unexpected: [] });
  t.deepEqual(snapshot(model), snapshot(source));
});

test('load(): a file with missing, unexpected and misshaped tensors → one StateDictError naming the file', async (t) => {
  using model = tiny({ seed: 1 });
  using source = tiny({ seed: 2 });
  const before = snapshot(model);
  const tensors = [...source.stateDict()]
    .filter(([name]) => name !== 'cls_token')
    .map(([name, { shape, data }]) =>
      name === 'head.bias'
        ? { name, dtype: 'F32' as const, shape: [1, 3], data }
        : { name, dtype: 'F32' as const, shape, data },
    );
  tensors.push({ name: 'dist_token', dtype: 'F32', shape: [1, 1, 16], data: new Float32Array(16) });
  const path = join(dir, 'mismatch.safetensors');
  await writeSafetensors(path, tensors);

  const error = await rejectsNaming(t, model.load(path), StateDictError, path, '"cls_token"', '"dist_token"', '"head.bias" expected [3], got [1, 3]');
  t.deepEqual(error.missing, ['cls_token']);
  t.deepEqual(error.unexpected, ['dist_token']);
  t.deepEqual(error.misshaped, [{ name: 'head.bias', expected: [3], got: [1, 3] }]);
  t.deepEqual(snapshot(model), before);

  // strict:false: the misshaped tensor is still refused.
  const lenient = await rejectsNaming(t, model.load(path, { strict: false }), StateDictError, path, '"head.bias"');
  t.deepEqual(lenient.missing, []);
  t.deepEqual(lenient.unexpected, []);
  t.deepEqual(snapshot(model), before);
});

test('load(): strict:false loads what fits and reports the rest', async (t) => {
  using model = tiny({ seed: 1 });
  using source = tiny({ seed: 2 });
  const before = snapshot(model);
  const tensors = [...source.stateDict({ trainableOnly: true })].map(([name, { shape, data }]) => ({
    name,
    dtype: 'F32' as const,
    shape,
    data,
  }));
  tensors.push({ name: 'optimizer.step', dtype: 'F32', shape: [1], data: new Float32Array([7]) });
  const path = join(dir, 'partial.safetensors');
  await writeSafetensors(path, tensors);
  await rejectsNaming(t, model.load(path), StateDictError, 'missing', '"optimizer.step"');
  t.deepEqual(snapshot(model), before);

  const result = await model.load(path, { strict: false });
  t.deepEqual(result.unexpected, ['optimizer.step']);
  const trainable = model.parameters().filter((p) => p.trainable).map((p) => p.name);
  t.deepEqual(
    result.missing,
    model.parameters().filter((p) => !p.trainable).map((p) => p.name),
  );
  for (const name of trainable) t.deepEqual(model.param(name), source.param(name), name);
  t.deepEqual(model.param('pos_embed'), before.get('pos_embed'));
});

/** A directory of its own, for a test that checks which files a directory holds. */
function ownDir(): Promise<string> {
  return mkdtemp(join(dir, 'own-'));
}

async function savedBytes(model: ViT, name: string, where = dir): Promise<{ path: string; bytes: Uint8Array }> {
  const path = join(where, name);
  await model.save(path);
  return { path, bytes: new Uint8Array(await readFile(path)) };
}

test('load(): a truncated safetensors file → FormatError naming the file, nothing changes', async (t) => {
  using model = tiny({ seed: 1 });
  using source = tiny({ seed: 2 });
  const before = snapshot(model);
  const { bytes } = await savedBytes(source, 'whole.safetensors');
  const cuts = [bytes.length - 4, Math.floor(bytes.length / 2), 20, 5, 0];
  for (const cut of cuts) {
    const path = join(dir, `truncated-${cut}.safetensors`);
    await writeFile(path, bytes.subarray(0, cut));
    const error = await rejectsNaming(t, model.load(path), FormatError, path);
    t.is(error.file, path, `cut at ${cut}`);
  }
  t.deepEqual(snapshot(model), before);
});

test('load(): a malformed safetensors file → FormatError naming the file, nothing changes', async (t) => {
  using model = tiny({ seed: 1 });
  using source = tiny({ seed: 2 });
  const before = snapshot(model);
  const { bytes } = await savedBytes(source, 'good.safetensors');
  const headerLength = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));

  const cases: [string, Uint8Array][] = [];
  // The header claims more bytes than the file has.
  const longHeader = bytes.slice();
  new DataView(longHeader.buffer).setBigUint64(0, BigInt(bytes.length), true);
  cases.push(['header-too-long', longHeader]);
  // The JSON header is broken.
  const brokenJson = bytes.slice();
  brokenJson[8] = '['.charCodeAt(0);
  cases.push(['broken-json', brokenJson]);
  // One byte too many after the data.
  cases.push(['trailing-byte', Uint8Array.from([...bytes, 0])]);
  // Not a safetensors file at all.
  cases.push(['text', new TextEncoder().encode('this is not a safetensors file, just some text\n')]);
  t.true(headerLength > 0 && headerLength < bytes.length);

  for (const [name, data] of cases) {
    const path = join(dir, `${name}.safetensors`);
    await writeFile(path, data);
    const error = await rejectsNaming(t, model.load(path), FormatError, path);
    t.is(error.file, path, name);
  }
  t.deepEqual(snapshot(model), before);
});

test('load(): a file that does not exist rejects with ENOENT and changes nothing', async (t) => {
  using model = tiny({ seed: 1 });
  const before = snapshot(model);
  const path = join(dir, 'no-such-file.safetensors');
  const error = await t.throwsAsync(model.load(path));
  t.is((error as NodeJS.ErrnoException).code, 'ENOENT');
  t.true(error!.message.includes(path));
  t.deepEqual(snapshot(model), before);
});

async function tempFiles(where: string): Promise<string[]> {
  return (await readdir(where)).filter((f) => f.endsWith('.tmp'));
}

test('save(): a failed save leaves the previous file byte-identical and no temporary file', async (t) => {
  using model = tiny({ seed: 1 });
  const here = await ownDir();
  const { path, bytes } = await savedBytes(model, 'kept.safetensors', here);
  model.setParam('head.bias', new Float32Array([1, 2, 3]));

  // Invalid metadata is refused before the disk is touched.
  await rejectsNaming(t, model.save(path, { metadata: { epoch: 3 as unknown as string } }), FormatError, 'metadata', '"epoch"', 'got 3');
  t.deepEqual(new Uint8Array(await readFile(path)), bytes);
  t.deepEqual(await tempFiles(here), []);

  // A disposed model cannot save, and the file stays.
  const other = tiny({ seed: 5 });
  other.dispose();
  await rejectsNaming(t, other.save(path), DisposedError, 'disposed');
  t.deepEqual(new Uint8Array(await readFile(path)), bytes);

  // A target that is a (non-empty) directory: the temporary file is written, then the rename
  // fails; the directory and its content stay, and the temporary file is removed.
  const target = join(here, 'a-directory.safetensors');
  await mkdir(target);
  await writeFile(join(target, 'inside'), 'x');
  const error = await t.throwsAsync(model.save(target));
  t.truthy((error as NodeJS.ErrnoException).code, String(error));
  t.deepEqual(await readdir(target), ['inside']);
  t.deepEqual(await tempFiles(here), []);

  // The model itself is unaffected: a good save now writes the new value.
  await model.save(path);
  using reloaded = tiny({ seed: 9 });
  await reloaded.load(path);
  t.deepEqual(reloaded.param('head.bias'), new Float32Array([1, 2, 3]));
});

// ---- forward / backward -------------------------------------------------------------------------

test('forward: images of the wrong shape → ShapeError naming the expected and the given shape', (t) => {
  using model = tiny();
  const bad: number[][] = [
    [2, 3, 8, 8],
    [2, 1, 16, 16],
    [2, 3, 16, 15],
    [3, 16, 16],
    [1, 2, 3, 16, 16],
    [0, 3, 16, 16],
  ];
  for (const shape of bad) {
    using x = Tensor.zeros(shape);
    throwsNaming(t, () => model.forward(x), ShapeError, 'images', '[B, 3, 16, 16]', `[${shape.join(', ')}]`);
  }
  stillWorks(t, model);
});

test('forward: images that are not a Tensor → ArgumentError naming what was given', (t) => {
  using model = tiny();
  throwsNaming(t, () => model.forward(new Float32Array(768) as unknown as Tensor), ArgumentError, 'Tensor', 'images', 'Float32Array(768)');
  throwsNaming(t, () => model.forward(null as unknown as Tensor), ArgumentError, 'Tensor', 'images', 'got null');
  throwsNaming(t, () => model.forward({ shape: [1, 3, 16, 16] } as unknown as Tensor), ArgumentError, 'Tensor', 'images');
});

test('forwardAsync: the same argument errors arrive as typed rejections', async (t) => {
  using model = tiny();
  using small = Tensor.zeros([1, 3, 8, 8]);
  await rejectsNaming(t, model.forwardAsync(small), ShapeError, '[1, 3, 8, 8]');
  await rejectsNaming(t, model.forwardAsync([] as unknown as Tensor), ArgumentError, 'images');
  // The model is not left busy by a refused call.
  using x = images(1, 16);
  using y = model.forward(x);
  t.deepEqual(y.shape, [1, 3]);
});

test('backward before a training forward → ArgumentError saying to train() and forward()', (t) => {
  using model = tiny();
  throwsNaming(t, () => model.backward({ labels: [0] }), ArgumentError, 'train()', 'forward');
  model.train();
  throwsNaming(t, () => model.backward({ labels: [0] }), ArgumentError, 'forward in training mode');
});

test('backward in eval mode → ArgumentError', (t) => {
  using model = tiny();
  using x = images(2, 16);
  model.train();
  using logits = model.forward(x);
  model.eval();
  throwsNaming(t, () => model.backward({ labels: [0, 1] }), ArgumentError, 'training mode');
  // A forward made in eval mode cannot be backpropagated either, even after train().
  using evalLogits = model.forward(x);
  model.train();
  throwsNaming(t, () => model.backward({ labels: [0, 1] }), ArgumentError, 'training-mode forward');
  t.deepEqual(logits.shape, evalLogits.shape);
});

test('backwardAsync after an eval forward → typed rejection from the compute thread, model not left busy', async (t) => {
  using model = tiny();
  using x = images(2, 16);
  using y = model.forward(x); // eval
  model.train();
  await rejectsNaming(t, model.backwardAsync({ labels: [0, 1] }), ArgumentError, 'training-mode forward');
  t.notThrows(() => model.param('head.bias'));
  stillWorks(t, model);
  t.deepEqual(y.shape, [2, 3]);
});

/** A model after a training forward on 2 images, with zeroed gradients. */
function afterForward(options: CreateOptions = {}): { model: ViT; x: Tensor } {
  const model = tiny(options).train();
  const x = images(2, 16, 4);
  model.forward(x).dispose();
  model.zeroGrad();
  return { model, x };
}

function gradients(model: ViT): Map<string, Float32Array> {
  return new Map(model.parameters().filter((p) => p.trainable).map((p) => [p.name, model.grad(p.name)]));
}

function allZero(grads: Map<string, Float32Array>): boolean {
  return [...grads.values()].every((g) => g.every((v) => v === 0));
}

test('labels out of range → OutOfRangeError naming the label and the sample; no gradient is touched', (t) => {
  const { model, x } = afterForward();
  throwsNaming(t, () => model.backward({ labels: [0, 3] }), OutOfRangeError, 'label 3', 'sample 1', '[0, 3)');
  throwsNaming(t, () => model.backward({ labels: [-1, 0] }), OutOfRangeError, 'label -1', 'sample 0');
  throwsNaming(t, () => model.backward({ labels: new Int32Array([1, 1000]) }), OutOfRangeError, 'label 1000', 'sample 1');
  t.true(allZero(gradients(model)));
  // The forward is still there: a correct backward works afterwards.
  const loss = model.backward({ labels: [0, 2] });
  t.true(Number.isFinite(loss));
  t.false(allZero(gradients(model)));
  x.dispose();
  model.dispose();
});

test('the wrong number of labels → ShapeError naming both counts', (t) => {
  const { model, x } = afterForward();
  throwsNaming(t, () => model.backward({ labels: [0] }), ShapeError, 'expected 2 labels', 'got 1');
  throwsNaming(t, () => model.backward({ labels: new Int32Array(3) }), ShapeError, 'expected 2 labels', 'got 3');
  t.true(allZero(gradients(model)));
  x.dispose();
  model.dispose();
});

test('non-integer labels → ArgumentError naming the element', (t) => {
  const { model, x } = afterForward();
  throwsNaming(t, () => model.backward({ labels: [0, 1.5] }), ArgumentError, 'labels[1]', 'got 1.5');
  throwsNaming(t, () => model.backward({ labels: [NaN, 1] }), ArgumentError, 'labels[0]', 'got NaN');
  throwsNaming(t, () => model.backward({ labels: ['0', 1] as unknown as number[] }), ArgumentError, 'labels[0]', 'got "0"');
  throwsNaming(t, () => model.backward({ labels: new Float32Array(2) as unknown as Int32Array }), ArgumentError, 'labels', 'Float32Array(2)');
  throwsNaming(t, () => model.backward({ labels: 1 as unknown as number[] }), ArgumentError, 'labels', 'got 1');
  throwsNaming(t, () => model.backward({} as never), ArgumentError, '{ labels } or { softTargets }');
  throwsNaming(t, () => model.backward(null as never), ArgumentError, 'target', 'got null');
  t.true(allZero(gradients(model)));
  x.dispose();
  model.dispose();
});

test('soft targets of the wrong size or with bad values → typed errors naming them', (t) => {
  const { model, x } = afterForward();
  throwsNaming(t, () => model.backward({ softTargets: new Float32Array(5) }), ShapeError, 'softTargets', '[2, 3]', 'got 5');
  using small = Tensor.zeros([2, 2]);
  throwsNaming(t, () => model.backward({ softTargets: small }), ShapeError, 'softTargets', 'got 4');
  throwsNaming(t, () => model.backward({ softTargets: [0.5, 0.5, 0, 0, 0, 1] as unknown as Float32Array }), ArgumentError, 'softTargets');
  // Checked by the native layer: negative / non-finite probabilities.
  throwsNaming(t, () => model.backward({ softTargets: new Float32Array([1, 0, 0, 0, -1, 2]) }), ArgumentError, 'soft targets', 'index 4');
  throwsNaming(t, () => model.backward({ softTargets: new Float32Array([1, 0, 0, 0, NaN, 1]) }), ArgumentError, 'soft targets', 'index 4');
  t.true(allZero(gradients(model)));
  const loss = model.backward({ softTargets: new Float32Array([1, 0, 0, 0, 0.5, 0.5]) });
  t.true(Number.isFinite(loss));
  x.dispose();
  model.dispose();
});

test('labelSmoothing outside [0, 1) → ArgumentError naming labelSmoothing and the value', (t) => {
  const { model, x } = afterForward();
  for (const s of [1, 1.5, -0.1, NaN, Infinity]) {
    throwsNaming(t, () => model.backward({ labels: [0, 1], labelSmoothing: s }), ArgumentError, 'labelSmoothing', '[0, 1)', `got ${s}`);
  }
  throwsNaming(t, () => model.backward({ labels: [0, 1], labelSmoothing: '0.1' as unknown as number }), ArgumentError, 'labelSmoothing', 'got "0.1"');
  t.true(allZero(gradients(model)));
  t.true(Number.isFinite(model.backward({ labels: [0, 1], labelSmoothing: 0.999 })));
  x.dispose();
  model.dispose();
});

test('grad() of a frozen parameter → ArgumentError naming the parameter', (t) => {
  using model = tiny();
  throwsNaming(t, () => model.grad('blocks.0.attn.qkv.weight'), ArgumentError, "'blocks.0.attn.qkv.weight'", 'frozen');
  throwsNaming(t, () => model.grad('pos_embed'), ArgumentError, "'pos_embed'", 'frozen');
  t.notThrows(() => model.grad('blocks.0.adapter_attn.conv_A.weight'));
  // A linear probe freezes the adapters too.
  model.setTrainable('head');
  throwsNaming(t, () => model.grad('blocks.0.adapter_attn.conv_A.weight'), ArgumentError, 'conv_A.weight', 'frozen');
  t.notThrows(() => model.grad('head.weight'));
});

test('param() / setParam() / grad() of an unknown name → ArgumentError naming it', (t) => {
  using model = tiny();
  throwsNaming(t, () => model.param('blocks.1.norm1.weight'), ArgumentError, "'blocks.1.norm1.weight'");
  throwsNaming(t, () => model.param('fc_norm.weight'), ArgumentError, "'fc_norm.weight'");
  throwsNaming(t, () => model.setParam('nope', new Float32Array(3)), ArgumentError, "'nope'");
  throwsNaming(t, () => model.grad('head.wieght'), ArgumentError, "'head.wieght'");
  throwsNaming(t, () => model.param(3 as unknown as string), ArgumentError, 'name');
});

test('setParam() with the wrong length or type → ArgumentError naming the parameter; value kept', (t) => {
  using model = tiny();
  const before = model.param('head.bias');
  throwsNaming(t, () => model.setParam('head.bias', new Float32Array(2)), ArgumentError, 'head.bias', 'expected 3 values', 'got 2');
  throwsNaming(t, () => model.setParam('head.bias', new Float32Array(4)), ArgumentError, 'head.bias', 'got 4');
  throwsNaming(t, () => model.setParam('head.bias', [1, 2, 3] as unknown as Float32Array), ArgumentError, 'Float32Array', 'head.bias');
  throwsNaming(t, () => model.setParam('head.bias', new Float64Array(3) as unknown as Float32Array), ArgumentError, 'Float32Array');
  t.deepEqual(model.param('head.bias'), before);
});

test('setTrainable() with an unknown set → ArgumentError naming it', (t) => {
  using model = tiny();
  throwsNaming(t, () => model.setTrainable('backbone' as never), ArgumentError, "'backbone'", "'adapters' | 'head' | 'all'");
  t.is(model.config.trainable, 'adapters');
});

test('inputGrad() when it was not requested → ArgumentError saying how to request it', (t) => {
  using model = tiny();
  throwsNaming(t, () => model.inputGrad(), ArgumentError, 'inputGrad');
  model.train();
  using x = images(2, 16);
  model.forward(x).dispose();
  model.backward({ labels: [0, 1] });
  throwsNaming(t, () => model.inputGrad(), ArgumentError, 'no input gradient', 'inputGrad');
  // Requested, but the backward has not run yet.
  model.forward(x, { inputGrad: true }).dispose();
  throwsNaming(t, () => model.inputGrad(), ArgumentError, 'no input gradient');
  model.backward({ labels: [0, 1] });
  using dx = model.inputGrad();
  t.deepEqual(dx.shape, [2, 3, 16, 16]);
  // A new forward without the request forgets the old one.
  model.forward(x).dispose();
  throwsNaming(t, () => model.inputGrad(), ArgumentError, 'no input gradient');
});

// ---- use after dispose --------------------------------------------------------------------------

test('a disposed model → DisposedError from every method (sync and async)', async (t) => {
  const model = tiny();
  using x = images(1, 16);
  model.dispose();
  t.true(model.disposed);
  t.notThrows(() => model.dispose()); // idempotent
  const calls: [string, () => unknown][] = [
    ['forward', () => model.forward(x)],
    ['backward', () => model.train().backward({ labels: [0] })],
    ['param', () => model.param('head.bias')],
    ['setParam', () => model.setParam('head.bias', new Float32Array(3))],
    ['grad', () => model.grad('head.bias')],
    ['zeroGrad', () => model.zeroGrad()],
    ['parameters', () => model.parameters()],
    ['countParameters', () => model.countParameters()],
    ['stateDict', () => model.stateDict()],
    ['loadStateDict', () => model.loadStateDict(new Map())],
    ['config', () => model.config],
    ['setTrainable', () => model.setTrainable('all')],
    ['fold', () => model.fold()],
    ['inputGrad', () => model.inputGrad()],
  ];
  for (const [name, call] of calls) {
    const error = t.throws(call, { instanceOf: DisposedError }, name);
    t.regex(error?.message ?? '', /model has been disposed/, name);
  }
  await rejectsNaming(t, model.forwardAsync(x), DisposedError, 'model');
  await rejectsNaming(t, model.backwardAsync({ labels: [0] }), DisposedError, 'model');
  const here = await ownDir();
  await rejectsNaming(t, model.save(join(here, 'disposed.safetensors')), DisposedError, 'model');
  // load() reads the file first, then refuses to put it into the disposed model.
  using source = tiny();
  const { path } = await savedBytes(source, 'for-disposed.safetensors', here);
  await rejectsNaming(t, model.load(path), DisposedError, 'model');
  t.deepEqual(await tempFiles(here), []);
});

test('`using` disposes a model at the end of its scope', (t) => {
  let escaped: ViT | undefined;
  {
    using model = tiny();
    escaped = model;
    t.false(model.disposed);
  }
  t.true(escaped.disposed);
  throwsNaming(t, () => escaped!.param('head.bias'), DisposedError, 'disposed');
});

test('a disposed tensor → DisposedError when passed to forward or as soft targets', (t) => {
  const { model, x } = afterForward();
  const images2 = images(2, 16);
  images2.dispose();
  throwsNaming(t, () => model.forward(images2), DisposedError, 'Tensor', '[2, 3, 16, 16]', 'disposed');
  const soft = Tensor.from(new Float32Array([1, 0, 0, 0, 1, 0]), [2, 3]);
  soft.dispose();
  throwsNaming(t, () => model.backward({ softTargets: soft }), DisposedError, '[2, 3]', 'disposed');
  // Nothing of the model was affected.
  t.true(allZero(gradients(model)));
  t.true(Number.isFinite(model.backward({ labels: [1, 2] })));
  x.dispose();
  model.dispose();
});

test('a disposed tensor → DisposedError from toArray() and device; shape stays readable', (t) => {
  const x = Tensor.from(values(6), [2, 3]);
  x.dispose();
  throwsNaming(t, () => x.toArray(), DisposedError, '[2, 3]', 'disposed');
  throwsNaming(t, () => x.device, DisposedError, 'disposed');
  t.deepEqual(x.shape, [2, 3]);
  t.true(x.disposed);
});

test('dispose() of a model with an async call in flight → BusyError, and the model survives', async (t) => {
  using model = tiny();
  using x = images(2, 16);
  const pending = model.forwardAsync(x);
  throwsNaming(t, () => model.dispose(), BusyError, 'async call');
  t.false(model.disposed);
  using y = await pending;
  t.deepEqual(y.shape, [2, 3]);
  model.dispose();
  t.true(model.disposed);
});
