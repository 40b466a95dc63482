/**
 * Adapter files: a round trip restores the task exactly, the file is kilobytes, and a file that
 * does not fit the model — another base, another scale, another config — is refused with a
 * message that names every mismatch, before anything changes.
 */
import test from 'ava';
import { mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { ArgumentError, ConfigError, FormatError, Tensor, ViT, type ViTOptions } from '../lib/index.js';
import { fingerprint, loadAdapters, modelConfigFromAdapters, readAdapters, saveAdapters } from '../lib/io/adapters.js';
import { randn, rng } from './util.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'repadapter-adapters-'));
let count = 0;
const tmpFile = () => path.join(tmp, `a${count++}.adapters.safetensors`);

const CONFIG = {
  imageSize: 16, patchSize: 8, width: 16, depth: 2, heads: 2, numClasses: 3,
  adapter: { placement: 'block', hidden: 4, groups: 2, scale: 0.5, dropout: 0.1 },
} satisfies ViTOptions;
const CLASSES = ['cat', 'dog', 'bird'];

function create(overrides: Partial<ViTOptions> = {}, seed = 11): ViT {
  return ViT.create({ ...CONFIG, ...overrides }, { seed });
}

/** A "trained" model: random non-zero adapters and head. */
function trained(overrides: Partial<ViTOptions> = {}, seed = 11): ViT {
  const vit = create(overrides, seed);
  const random = rng(99);
  for (const p of vit.parameters())
    if (p.role === 'adapter' || p.role === 'head') vit.setParam(p.name, randn(random, p.shape.reduce((a, b) => a * b, 1), 0.3));
  return vit;
}

function logits(vit: ViT): Float32Array {
  using images = Tensor.from(randn(rng(5), 2 * 3 * 16 * 16), [2, 3, 16, 16]);
  vit.eval();
  using out = vit.forward(images);
  return out.toArray();
}

function snapshot(vit: ViT): Map<string, Float32Array> {
  return new Map(vit.parameters().map((p) => [p.name, vit.param(p.name)]));
}

test('round trip: adapters, head, class names and metadata come back exactly', async (t) => {
  using source = trained();
  const file = tmpFile();
  await saveAdapters(source, file, { classNames: CLASSES, metadata: { task: 'pets' } });

  const info = await readAdapters(file);
  t.deepEqual(info.config, source.config);
  t.deepEqual(info.adapter, source.config.adapter);
  t.is(info.adapter!.scale, Math.fround(0.5));
  t.deepEqual(info.classNames, CLASSES);
  t.is(info.baseFingerprint, fingerprint(source));
  t.regex(info.version, /^\d+\.\d+\.\d+/);
  t.is(info.metadata.task, 'pets');
  t.deepEqual(
    [...info.tensors.keys()].sort(),
    source.parameters().filter((p) => p.role === 'adapter' || p.role === 'head').map((p) => p.name).sort(),
  );

  using target = create();
  const result = await loadAdapters(target, file);
  t.deepEqual(result.classNames, CLASSES);
  t.is(result.loaded.length, 2 * 2 * 4 + 2);
  for (const p of source.parameters()) t.deepEqual(target.param(p.name), source.param(p.name), p.name);
  t.deepEqual(logits(target), logits(source));
});

test('a file is kilobytes: adapters and head only', async (t) => {
  using vit = ViT.create('vit_tiny_patch16_224', { numClasses: 10, adapter: { hidden: 8, groups: 2, scale: 0.1 } });
  const file = tmpFile();
  await saveAdapters(vit, file);
  const size = statSync(file).size;
  const values = vit.parameters().filter((p) => p.role === 'adapter' || p.role === 'head').reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0);
  t.log(`${(size / 1024).toFixed(1)} KiB for ${values} values; the whole model has ${vit.countParameters().total}`);
  t.true(size < 4 * values + 16 * 1024, 'tensor bytes plus a small header');
  t.true(size < 200 * 1024);
  t.true(size < 0.03 * 4 * vit.countParameters().total);
});

test('fingerprint: stable, covers the frozen backbone only', (t) => {
  using a = create();
  using b = create();
  const fa = fingerprint(a);
  t.regex(fa, /^sha256:[0-9a-f]{64}$/);
  t.is(fingerprint(b), fa, 'same weights, same fingerprint');
  a.setParam('head.bias', new Float32Array([1, 2, 3]));
  a.setParam('blocks.0.adapter_attn.conv_B.bias', new Float32Array(16).fill(1));
  t.is(fingerprint(a), fa, 'adapters and head are not part of it');
  const w = a.param('blocks.1.norm2.bias');
  w[3] += 1e-6;
  a.setParam('blocks.1.norm2.bias', w);
  t.not(fingerprint(a), fa, 'one backbone value changes it');
  using other = create({}, 12);
  t.not(fingerprint(other), fa);
});

test('another base model is refused, and nothing changes', async (t) => {
  using source = trained();
  const file = tmpFile();
  await saveAdapters(source, file);
  using target = create({}, 12); // another backbone
  const before = snapshot(target);
  const error = await t.throwsAsync(loadAdapters(target, file), { instanceOf: ConfigError });
  t.regex(error.message, /does not fit this model/);
  t.regex(error.message, /base model: the adapters were trained on backbone sha256:[0-9a-f]{12}…, this model's backbone is sha256:/);
  t.deepEqual(snapshot(target), before);
  // …unless told to skip the check.
  await loadAdapters(target, file, { ignoreFingerprint: true });
  t.deepEqual(target.param('head.weight'), source.param('head.weight'));
});

test('another adapter scale is refused (the official code silently folds with the wrong one)', async (t) => {
  using source = trained();
  const file = tmpFile();
  await saveAdapters(source, file);
  using target = create({ adapter: { ...CONFIG.adapter, scale: 1 } });
  const before = snapshot(target);
  const error = await t.throwsAsync(loadAdapters(target, file), { instanceOf: ConfigError });
  t.regex(error.message, /adapter\.scale: the adapters were trained with scale 0\.5, the model has 1/);
  t.notRegex(error.message, /base model/, 'the backbone is the same');
  t.deepEqual(snapshot(target), before);
  // A model made from the file's config fits.
  using fits = ViT.create(await modelConfigFromAdapters(file), { seed: 11 });
  t.is(fits.config.adapter!.scale, Math.fround(0.5));
  await loadAdapters(fits, file);
  t.deepEqual(logits(fits), logits(source));
});

test('another config: every mismatch named in one message', async (t) => {
  using source = trained();
  const file = tmpFile();
  await saveAdapters(source, file);
  using target = create({
    imageSize: 32, depth: 3, numClasses: 4,
    adapter: { placement: 'attn', hidden: 8, groups: 4, scale: 0.5 },
  });
  const error = await t.throwsAsync(loadAdapters(target, file), { instanceOf: ConfigError });
  for (const what of [
    /imageSize: the file was trained with 16, the model has 32/,
    /depth: the file was trained with 2, the model has 3/,
    /numClasses: the file's head has 3 classes, the model 4/,
    /adapter\.placement: the file has 'block', the model 'attn'/,
    /adapter\.hidden: the file has 4, the model 8/,
    /adapter\.groups: the file has 2, the model 4/,
    /base model/,
    /modelConfigFromAdapters/,
  ])
    t.regex(error.message, what);
  t.notRegex(error.message, /scale/);
});

test('a folded model, or a plain one, has no adapters to load into', async (t) => {
  using source = trained();
  const file = tmpFile();
  await saveAdapters(source, file);
  using folded = trained(); // non-identity adapters: folding changes qkv / fc1
  folded.fold();
  const error = await t.throwsAsync(loadAdapters(folded, file), { instanceOf: ConfigError });
  t.regex(error.message, /adapter: the file has 'block' adapters, the model has none/);
  t.regex(error.message, /base model/);

  // A plain model's file (a linear probe) holds the head only, and loads into a plain model.
  using probe = trained({ adapter: null });
  const headOnly = tmpFile();
  await saveAdapters(probe, headOnly);
  t.deepEqual([...(await readAdapters(headOnly)).tensors.keys()].sort(), ['head.bias', 'head.weight']);
  using plain = create({ adapter: null });
  await loadAdapters(plain, headOnly);
  t.deepEqual(plain.param('head.weight'), probe.param('head.weight'));
  using adapted = create();
  await t.throwsAsync(loadAdapters(adapted, headOnly), { instanceOf: ConfigError, message: /the file has no adapters \(head only\)/ });
});

test('bad arguments and files that are not adapter files', async (t) => {
  using vit = create();
  await t.throwsAsync(saveAdapters(vit, tmpFile(), { classNames: ['a', 'b'] }), { instanceOf: ArgumentError, message: /3 class names/ });
  await t.throwsAsync(saveAdapters(vit, tmpFile(), { baseFingerprint: 'abc' }), { instanceOf: ArgumentError });
  await t.throwsAsync(saveAdapters(vit, tmpFile(), { metadata: { 'repadapter.scale': '2' } }), { instanceOf: ArgumentError });
  const full = tmpFile();
  await vit.save(full);
  await t.throwsAsync(loadAdapters(vit, full), { instanceOf: FormatError, message: /not written by saveAdapters/ });
  await t.throwsAsync(modelConfigFromAdapters(full), { instanceOf: FormatError });
});
