/**
 * Official VTAB-1k adapter scales: values exactly as in luogen1996/RepAdapter's
 * configs/repattn/*.yaml and configs/repblock/*.yaml, class counts, and the refusals for unknown
 * tasks and for placements the official repository has no file for.
 */
import test from 'ava';

import { ArgumentError, ConfigError } from '../lib/errors.js';
import { VTAB_TASK_SCALES, officialScale, type AdapterPlacement } from '../lib/train/vtab-scales.js';

const TASKS = [
  'cifar', 'caltech101', 'dtd', 'oxford_flowers102', 'oxford_iiit_pet', 'svhn', 'sun397',
  'patch_camelyon', 'eurosat', 'resisc45', 'diabetic_retinopathy',
  'clevr_count', 'clevr_dist', 'dmlab', 'kitti', 'dsprites_loc', 'dsprites_ori', 'smallnorb_azi', 'smallnorb_ele',
];

test('the table holds exactly the 19 VTAB-1k tasks in the official order', (t) => {
  t.deepEqual(Object.keys(VTAB_TASK_SCALES), TASKS);
});

test('attn scales as in configs/repattn/<task>.yaml', (t) => {
  t.is(officialScale('cifar', 'attn'), 0.1);
  t.is(officialScale('caltech101', 'attn'), 10);
  t.is(officialScale('oxford_flowers102', 'attn'), 0.5);
  t.is(officialScale('eurosat', 'attn'), 5);
  t.is(officialScale('clevr_count', 'attn'), 1);
  t.is(officialScale('dmlab', 'attn'), 5);
  t.is(officialScale('smallnorb_azi', 'attn'), 10);
  t.is(officialScale('smallnorb_ele', 'attn'), 1);
});

test('block scales as in configs/repblock/<task>.yaml', (t) => {
  t.is(officialScale('caltech101', 'block'), 5);
  t.is(officialScale('dtd', 'block'), 1);
  t.is(officialScale('oxford_iiit_pet', 'block'), 0.1);
  t.is(officialScale('svhn', 'block'), 10);
  t.is(officialScale('clevr_count', 'block'), 0.5);
  t.is(officialScale('kitti', 'block'), 5);
  t.is(officialScale('dsprites_ori', 'block'), 0.1);
});

test('class counts as in class_num', (t) => {
  const classes = Object.fromEntries(Object.entries(VTAB_TASK_SCALES).map(([k, v]) => [k, v.classes]));
  t.deepEqual(classes, {
    cifar: 100, caltech101: 102, dtd: 47, oxford_flowers102: 102, oxford_iiit_pet: 37, svhn: 10, sun397: 397,
    patch_camelyon: 2, eurosat: 10, resisc45: 45, diabetic_retinopathy: 5,
    clevr_count: 8, clevr_dist: 6, dmlab: 6, kitti: 4, dsprites_loc: 16, dsprites_ori: 16, smallnorb_azi: 18,
    smallnorb_ele: 9,
  });
});

test('every scale is one of the values the official search tries', (t) => {
  for (const entry of Object.values(VTAB_TASK_SCALES)) {
    for (const s of [entry.attn, entry.block]) {
      if (s !== undefined) t.true([0.1, 0.5, 1, 5, 10].includes(s));
    }
    t.true(entry.attn !== undefined || entry.block !== undefined);
  }
});

test('placements without an official file', (t) => {
  const noBlock = TASKS.filter((k) => VTAB_TASK_SCALES[k].block === undefined);
  const noAttn = TASKS.filter((k) => VTAB_TASK_SCALES[k].attn === undefined);
  t.deepEqual(noAttn, ['svhn']);
  t.deepEqual(noBlock, ['cifar', 'oxford_flowers102', 'sun397', 'clevr_dist', 'dmlab', 'smallnorb_azi', 'smallnorb_ele']);
});

test('missing placement: ConfigError naming task, placement, the official behaviour and the known tasks', (t) => {
  const e = t.throws(() => officialScale('cifar', 'block'), { instanceOf: ConfigError });
  t.regex(e.message, /"cifar"/);
  t.regex(e.message, /'block'/);
  t.regex(e.message, /configs\/repblock\/cifar\.yaml/);
  t.regex(e.message, /FileNotFoundError/);
  t.regex(e.message, /explicit scale/);
  t.regex(e.message, /known tasks: cifar, caltech101, .*smallnorb_ele/);

  const e2 = t.throws(() => officialScale('svhn', 'attn'), { instanceOf: ConfigError });
  t.regex(e2.message, /"svhn"/);
  t.regex(e2.message, /'attn'/);
  t.regex(e2.message, /configs\/repattn\/svhn\.yaml/);
});

test('unknown task: ConfigError naming the task and placement and listing the known tasks', (t) => {
  for (const task of ['cifar100', 'CIFAR', '', 'toString', '__proto__']) {
    const e = t.throws(() => officialScale(task, 'attn'), { instanceOf: ConfigError });
    t.true(e.message.includes(JSON.stringify(task)));
    t.regex(e.message, /'attn'/);
    for (const k of TASKS) t.true(e.message.includes(k));
    t.regex(e.message, /explicit scale/);
  }
});

test('bad placement is an ArgumentError', (t) => {
  t.throws(() => officialScale('cifar', 'mlp' as AdapterPlacement), { instanceOf: ArgumentError });
});

test('the table is frozen', (t) => {
  t.true(Object.isFrozen(VTAB_TASK_SCALES));
  t.true(Object.isFrozen(VTAB_TASK_SCALES.cifar));
});
