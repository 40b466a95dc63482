/**
 * The benchmark (lib/bench): a run on a tiny custom config writes well-formed JSON, markdown and
 * SVG with a row for every requested workload; compareBench pairs rows and computes ratios; the
 * options are validated. Timings are never asserted on (only that they are numbers).
 */
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { parseCli } from '../lib/bench/cli.js';
import {
  METHODS,
  SCHEMA,
  compareBench,
  makePlan,
  runBench,
  spread,
  workloadId,
  type BenchReport,
  type BenchRow,
} from '../lib/bench/index.js';
import { ConfigError } from '../lib/errors.js';
import { ViT } from '../lib/vit.js';

const TINY = { imageSize: 32, patchSize: 8, width: 32, depth: 2, heads: 2 };

function tmp(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'repadapter-bench-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('runBench on a tiny config writes every requested row (JSON, markdown, SVG)', async (t) => {
  const dir = tmp(t);
  const result = await runBench({
    config: TINY,
    numClasses: 10,
    batch: [2],
    inferBatch: [1, 2],
    warmup: 1,
    repeats: 1,
    profile: true,
    runDir: path.join(dir, 'run'),
    log: null,
  });
  const expected = [
    ...['repadapter-attn', 'repadapter-block', 'full', 'linear-probe'].map((m) => workloadId(m, 'custom', 2)),
    ...['infer-plain', 'infer-unfolded-attn', 'infer-unfolded-block', 'infer-folded', 'infer-onnxruntime'].flatMap((m) => [
      workloadId(m, 'custom', 1),
      workloadId(m, 'custom', 2),
    ]),
  ];

  const json = JSON.parse(readFileSync(result.files.json, 'utf8')) as BenchReport;
  t.is(json.schema, SCHEMA);
  t.is(json.implementation, 'repadapter');
  t.is(json.settings.repeats, 1);
  t.is(json.settings.optimizer, existsSync(path.resolve('lib/optim/index.ts')) ? 'adamw' : 'none');
  t.deepEqual(json.rows.map((r) => r.id).sort(), [...expected].sort());
  for (const row of json.rows) {
    t.is(row.status, 'ok', `${row.id}: ${row.note ?? ''}`);
    t.deepEqual(row.config, { ...TINY, mlpHidden: 128, numClasses: 10 });
    t.is(row.samplesMs!.length, 1);
    for (const v of Object.values(row.stepMs!)) t.true(Number.isFinite(v), row.id);
    t.true(Number.isFinite(row.imagesPerSec) && Number.isFinite(row.peakRssMB) && row.peakRssMB! > 0, row.id);
    t.true(row.params!.trainable > 0 && row.params!.trainable <= row.params!.total, row.id);
    // onnxruntime's row has no per-op profile of ours
    if (row.method !== 'infer-onnxruntime') t.true(Array.isArray(row.profile) && row.profile.length > 0, row.id);
    t.is(row.kind, row.method.startsWith('infer') ? 'infer' : 'train');
  }
  const byMethod = (m: string) => json.rows.find((r) => r.method === m)!;
  // parameter counts tell the workloads apart: adapters add parameters, folding removes them
  t.true(byMethod('repadapter-block').params!.total > byMethod('repadapter-attn').params!.total);
  t.true(byMethod('repadapter-attn').params!.total > byMethod('infer-plain').params!.total);
  t.is(byMethod('infer-folded').params!.total, byMethod('infer-plain').params!.total);
  t.is(byMethod('full').params!.trainable, byMethod('full').params!.total);
  t.true(byMethod('linear-probe').params!.trainable < byMethod('repadapter-attn').params!.trainable);

  const md = readFileSync(result.files.markdown, 'utf8');
  t.is(md, result.markdown);
  for (const row of json.rows) t.regex(md, new RegExp(`^\\| ${row.method} \\| custom \\| ${row.batch} \\|`, 'm'), row.id);
  t.regex(md, /## Per-op profile/);
  const svg = readFileSync(result.files.svg, 'utf8');
  t.regex(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"[^>]*>/);
  t.regex(svg, /<\/svg>\n$/);
  t.true(existsSync(result.files.plan));
});

test('bf16 rows run the bf16 model, say when bf16 is emulated, and skip onnxruntime', async (t) => {
  const dir = tmp(t);
  const { report } = await runBench({
    config: TINY,
    dtype: 'bfloat16',
    methods: ['repadapter-attn', 'infer-folded', 'infer-onnxruntime'],
    batch: [2],
    inferBatch: [1],
    repeats: 1,
    runDir: dir,
    log: null,
  });
  t.deepEqual(report.rows.map((r) => r.id), ['repadapter-attn/custom/b2', 'infer-folded/custom/b1', 'infer-onnxruntime/custom/b1']);
  using probe = ViT.create(TINY, { dtype: 'bf16' });
  for (const r of report.rows.slice(0, 2)) {
    t.is(r.status, 'ok', r.id);
    if (probe.bf16Native) t.is(r.note, undefined);
    else t.regex(r.note!, /bf16 emulated/);
  }
  t.is(report.rows[2].status, 'skipped');
  t.regex(report.rows[2].note!, /onnxruntime runs the exported float32 model/);
  t.true(report.notes.some((n) => /bf16 copies of their weights/.test(n)));
});

test('a device this build cannot use gives skipped rows that say so', async (t) => {
  const dir = tmp(t);
  const { report } = await runBench({ config: TINY, device: 'cuda', methods: ['infer-plain'], inferBatch: [1], repeats: 1, runDir: dir, log: null });
  t.is(report.rows.length, 1);
  const row = report.rows[0];
  // 'ok' once ViT.create takes a device and a GPU is there
  if (row.status !== 'ok') {
    t.is(row.status, 'skipped');
    t.regex(row.note!, /cuda: not available in this build/);
  } else t.pass();
});

function row(id: string, ms: number | null, rss: number, extra: Partial<BenchRow> = {}): BenchRow {
  const [method, model, b] = id.split('/');
  return {
    id,
    method: method as BenchRow['method'],
    kind: method.startsWith('infer') ? 'infer' : 'train',
    model,
    config: { ...TINY, mlpHidden: 128, numClasses: 10 },
    placement: null,
    trainable: null,
    batch: Number(b.slice(1)),
    status: ms === null ? 'error' : 'ok',
    ...(ms === null ? { note: 'boom' } : { stepMs: spread([ms]), imagesPerSec: (Number(b.slice(1)) * 1000) / ms, peakRssMB: rss }),
    ...extra,
  };
}

function report(implementation: 'repadapter' | 'pytorch', rows: BenchRow[]): BenchReport {
  return {
    schema: SCHEMA,
    implementation,
    createdAt: '2025-01-01T00:00:00.000Z',
    host: {},
    settings: makePlan({ config: TINY }).settings,
    notes: [],
    rows,
  };
}

test('compareBench pairs rows by id and computes ours/theirs ratios', (t) => {
  const ours = report('repadapter', [
    row('repadapter-attn/m/b8', 10, 100),
    row('infer-folded/m/b1', 2, 50),
    row('full/m/b8', 40, 300),
    row('linear-probe/m/b8', null, 0),
    row('infer-plain/m/b1', 3, 60),
  ]);
  const theirs = report('pytorch', [
    row('infer-folded/m/b1', 8, 200),
    row('repadapter-attn/m/b8', 20, 400),
    row('full/m/b8', null, 0),
    row('linear-probe/m/b8', 5, 250),
    row('infer-unfolded-attn/m/b1', 4, 210),
  ]);
  // also from JSON text
  const result = compareBench(JSON.stringify(ours), JSON.stringify(theirs));
  t.deepEqual(result.rows.map((r) => r.id), [
    'repadapter-attn/m/b8',
    'infer-folded/m/b1',
    'full/m/b8',
    'linear-probe/m/b8',
    'infer-plain/m/b1',
    'infer-unfolded-attn/m/b1',
  ]);
  const [attn, folded, full, probe, plain, unfolded] = result.rows;
  t.is(attn.timeRatio, 0.5);
  t.is(attn.speedup, 2);
  t.is(attn.rssRatio, 0.25);
  t.is(attn.oursImagesPerSec, 800);
  t.is(attn.theirsImagesPerSec, 400);
  t.is(attn.note, undefined);
  t.is(folded.timeRatio, 0.25);
  t.is(folded.rssRatio, 0.25);
  t.is(full.timeRatio, null);
  t.is(full.oursMs, 40);
  t.is(full.theirsMs, null);
  t.regex(full.note!, /theirs error: boom/);
  t.is(probe.timeRatio, null);
  t.regex(probe.note!, /ours error/);
  t.is(plain.theirsMs, null);
  t.is(plain.note, 'only ours');
  t.is(unfolded.oursMs, null);
  t.is(unfolded.note, 'only theirs');
  t.true(Math.abs(result.geomean.train! - 0.5) < 1e-12);
  t.true(Math.abs(result.geomean.infer! - 0.25) < 1e-12);
  t.true(Math.abs(result.geomean.all! - Math.sqrt(0.5 * 0.25)) < 1e-12);
  t.regex(result.markdown, /^\| repadapter-attn \| m \| 8 \| 10\.0 \| 20\.0 \| 0\.500 \|/m);
  t.regex(result.markdown, /^\| infer-folded \| m \| 1 \| 2\.00 \| 8\.00 \| 0\.250 \|/m);
  t.throws(() => compareBench({ ...ours, schema: 'other' } as unknown as BenchReport, theirs), { message: /schema/ });
  t.throws(() => compareBench('{not json', theirs), { message: /not valid JSON/ });
});

test('the plan: methods × models × batches, presets for sizes, every problem at once', (t) => {
  const plan = makePlan({ sizes: ['tiny', 'small'], methods: ['repadapter-block', 'infer-folded'], placements: ['attn'], batch: [4], inferBatch: [1] });
  // repadapter-block needs the block placement, which was not asked for; folded folds 'attn'
  t.deepEqual(plan.workloads.map((w) => w.id), ['infer-folded/vit_tiny_patch16_224/b1', 'infer-folded/vit_small_patch16_224/b1']);
  t.is(plan.workloads[0].placement, 'attn');
  t.deepEqual(plan.workloads[1].config, { imageSize: 224, patchSize: 16, width: 384, depth: 12, heads: 6, mlpHidden: 1536, numClasses: 1000 });
  const all = makePlan({ model: 'vit_small_patch32_224', sizes: ['base'] });
  t.is(all.workloads.length, 4 * 2 + 5 * 2); // 4 training methods × 2 batches, 5 inference × 2
  t.deepEqual([...new Set(all.workloads.map((w) => w.method))], [...METHODS]);
  t.true(all.workloads.every((w) => w.model === 'vit_base_patch32_224'));
  const error = t.throws(() => makePlan({ model: 'vit_nope', methods: ['dance' as never], batch: [0], repeats: 0 }), { instanceOf: ConfigError });
  t.regex(error!.message, /unknown preset/);
  t.regex(error!.message, /unknown method "dance"/);
  t.regex(error!.message, /for batch/);
  t.regex(error!.message, /for repeats/);
});

test('the command line maps flags to options', (t) => {
  const cli = parseCli(['--model', 'vit_tiny_patch16_224', '--batch', '8,32', '--infer-batch', '1', '--dtype', 'bf16', '--methods', 'full,infer-plain', '--profile', '--compare', '--repeats', '3']);
  t.deepEqual(cli.options, {
    model: 'vit_tiny_patch16_224',
    batch: [8, 32],
    inferBatch: [1],
    dtype: 'bfloat16',
    methods: ['full', 'infer-plain'],
    profile: true,
    repeats: 3,
  });
  t.true(cli.compare);
  t.deepEqual(parseCli(['--config', JSON.stringify(TINY)]).options.config, TINY);
  t.throws(() => parseCli(['--batch', '8,x']), { message: /--batch expects/ });
  t.throws(() => parseCli(['--dtype', 'int8']), { message: /--dtype expects/ });
  t.throws(() => parseCli(['--what']));
});
