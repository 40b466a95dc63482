/**
 * The model against PyTorch: timm's VisionTransformer with the official RepAdapter modules, on
 * the same weights and inputs, computed in float64 by test/fixtures/make_fixtures.py. Logits and
 * loss must agree to 1e-4 and every gradient to 1e-3 relative (we see about 1e-6: float32
 * rounding).
 */
import test from 'ava';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Tensor, ViT, readSafetensors, toFloat32, toIntArray, type SafetensorsContents, type Target } from '../lib/index.js';
import { relErr } from './util.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const fixtures = ['attn_g2', 'block_g4', 'attn_g1'];

interface FixtureConfig {
  imageSize: number; patchSize: number; width: number; depth: number; heads: number; mlpRatio: number;
  numClasses: number; adapter: { placement: 'attn' | 'block'; hidden: number; groups: number; scale: number; dropout: number };
  labelSmoothing: number; target: 'labels' | 'soft'; batch: number; torch: string; timm: string; seed: number;
}

async function open(name: string) {
  const file = await readSafetensors(path.join(here, 'fixtures', `vit_${name}.safetensors`));
  const config = JSON.parse(file.metadata.config) as FixtureConfig;
  const get = (key: string) => {
    const entry = file.tensors.get(key);
    if (!entry) throw new Error(`fixture ${name} lacks ${key}`);
    return toFloat32(entry);
  };
  return { file, config, get };
}

function model(config: FixtureConfig, file: SafetensorsContents, trainable: 'adapters' | 'head' | 'all'): ViT {
  const { imageSize, patchSize, width, depth, heads, mlpRatio, numClasses, adapter } = config;
  const vit = ViT.create({ imageSize, patchSize, width, depth, heads, mlpRatio, numClasses, adapter }, { trainable });
  const params = new Map<string, { shape: readonly number[]; data: Float32Array }>();
  for (const p of vit.parameters()) {
    const entry = file.tensors.get(p.name)!;
    params.set(p.name, { shape: entry.shape, data: toFloat32(entry) });
  }
  vit.loadStateDict(params);
  return vit;
}

function targetOf(config: FixtureConfig, file: SafetensorsContents): Target {
  return config.target === 'labels'
    ? { labels: toIntArray(file.tensors.get('input.labels')!), labelSmoothing: config.labelSmoothing }
    : { softTargets: toFloat32(file.tensors.get('input.soft_targets')!) };
}

for (const name of fixtures) {
  test(`${name}: logits in eval mode match timm`, async (t) => {
    const { file, config, get } = await open(name);
    using vit = model(config, file, 'adapters').eval();
    using images = Tensor.from(get('input.images'), [config.batch, 3, config.imageSize, config.imageSize]);
    using logits = vit.forward(images);
    t.deepEqual(logits.shape, [config.batch, config.numClasses]);
    t.true(relErr(logits.toArray(), get('output.logits_eval')) <= 1e-4);
  });

  for (const trainable of ['adapters', 'all', 'head'] as const) {
    test(`${name}: loss and ${trainable} gradients match PyTorch`, async (t) => {
      const { file, config, get } = await open(name);
      using vit = model(config, file, trainable).train();
      using images = Tensor.from(get('input.images'), [config.batch, 3, config.imageSize, config.imageSize]);
      using logits = vit.forward(images, { inputGrad: true });
      t.true(relErr(logits.toArray(), get('output.logits')) <= 1e-4, 'training-mode logits');
      const loss = vit.backward(targetOf(config, file));
      t.true(Math.abs(loss - get('output.loss')[0]) <= 1e-4 * Math.abs(get('output.loss')[0]), `loss ${loss}`);
      let checked = 0;
      for (const p of vit.parameters()) {
        if (!p.trainable) continue;
        const err = relErr(vit.grad(p.name), get(`grad.${p.name}`));
        t.true(err <= 1e-3, `gradient of ${p.name}: relative error ${err}`);
        checked++;
      }
      const expectedCount = vit.parameters().filter((p) =>
        trainable === 'all' ? true : trainable === 'head' ? p.role === 'head' : p.role === 'head' || p.role === 'adapter',
      ).length;
      t.is(checked, expectedCount);
      using dImages = vit.inputGrad();
      const err = relErr(dImages.toArray(), get('grad.input.images'));
      t.true(err <= 1e-3, `input gradient: relative error ${err}`);
    });
  }

  test(`${name}: gradients accumulate until zeroGrad`, async (t) => {
    const { file, config, get } = await open(name);
    using vit = model(config, file, 'adapters').train();
    using images = Tensor.from(get('input.images'), [config.batch, 3, config.imageSize, config.imageSize]);
    for (let i = 0; i < 2; i++) {
      vit.forward(images).dispose();
      vit.backward(targetOf(config, file));
    }
    t.true(relErr(vit.grad('head.weight'), get('grad.head.weight').map((v) => 2 * v)) <= 1e-3);
    vit.zeroGrad();
    t.true(vit.grad('head.weight').every((v) => v === 0));
  });
}
