/**
 * The fold (structural re-parameterisation): after folding every adapter into its qkv / fc1,
 * the plain ViT must give the same logits as the adapted one, for every groups value and both
 * placements, with random non-zero adapters.
 */
import test from 'ava';

import { Tensor, ViT } from '../lib/index.js';
import { randn, randomise, relErr, rng } from './util.js';

const cases = [];
for (const placement of ['attn', 'block'] as const)
  for (const groups of [1, 2, 4]) cases.push({ placement, groups });

for (const { placement, groups } of cases) {
  test(`fold ≡ unfolded: placement ${placement}, groups ${groups}`, (t) => {
    const config = { imageSize: 32, patchSize: 8, width: 48, depth: 2, heads: 4, mlpRatio: 3, numClasses: 6 };
    using vit = ViT.create(config, { adapter: { placement, hidden: 8, groups, scale: 0.8, dropout: 0.1 } });
    randomise(vit, 100 + groups);
    vit.eval();
    const batch = 3;
    using images = Tensor.from(randn(rng(7), batch * 3 * 32 * 32), [batch, 3, 32, 32]);
    const before = vit.forward(images).toArray();

    // The adapters really matter here, so agreement is not vacuous.
    using plain = ViT.create(config);
    plain.loadStateDict(vit.stateDict(), { strict: false });
    plain.eval();
    t.true(relErr(plain.forward(images).toArray(), before) > 1e-2, 'adapters change the logits');

    vit.fold();
    t.is(vit.config.adapter, null);
    t.false(vit.parameters().some((p) => p.role === 'adapter'), 'no adapter parameters remain');
    t.deepEqual(
      vit.parameters().map((p) => [p.name, p.shape]),
      plain.parameters().map((p) => [p.name, p.shape]),
      'the folded model is a plain ViT with timm names',
    );
    const after = vit.forward(images).toArray();
    const err = relErr(after, before);
    t.true(err <= 1e-5, `max |Δlogit| / max |logit| = ${err}`);

    // A fresh plain ViT loaded with the folded weights gives the same logits: nothing is hidden.
    plain.loadStateDict(vit.stateDict());
    t.true(relErr(plain.forward(images).toArray(), after) === 0);
  });
}

test('fold of a plain ViT changes nothing, and folding twice is harmless', (t) => {
  using vit = ViT.create({ imageSize: 16, patchSize: 8, width: 16, depth: 1, heads: 2, numClasses: 3 });
  randomise(vit, 3);
  vit.eval();
  using images = Tensor.from(randn(rng(1), 2 * 3 * 16 * 16), [2, 3, 16, 16]);
  const before = vit.forward(images).toArray();
  vit.fold().fold();
  t.deepEqual(vit.forward(images).toArray(), before);
});

test('a new adapter is the identity (A xavier-uniform, a, B, b zero)', (t) => {
  const config = { imageSize: 16, patchSize: 8, width: 32, depth: 2, heads: 2, numClasses: 3 };
  using adapted = ViT.create(config, { adapter: { placement: 'block', hidden: 8, groups: 2 }, seed: 5 });
  using plain = ViT.create(config, { seed: 5 });
  randomise(plain, 9);
  adapted.loadStateDict(plain.stateDict(), { strict: false });
  const A = adapted.param('blocks.0.adapter_attn.conv_A.weight');
  const bound = Math.sqrt(6 / (32 + 8));
  t.true(A.some((v) => v !== 0) && A.every((v) => Math.abs(v) <= bound));
  t.true(adapted.param('blocks.1.adapter_mlp.conv_B.weight').every((v) => v === 0));
  using images = Tensor.from(randn(rng(2), 2 * 3 * 16 * 16), [2, 3, 16, 16]);
  t.deepEqual(adapted.eval().forward(images).toArray(), plain.eval().forward(images).toArray());
});
