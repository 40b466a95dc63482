/** Pairs the rows of our report and PyTorch's by workload id and computes ratios. */
import { readFileSync } from 'node:fs';

import { FormatError } from '../errors.js';
import { markdownCompare } from './report.js';
import { geomean } from './stats.js';
import { SCHEMA, type BenchReport, type BenchRow, type CompareResult, type CompareRow } from './types.js';

/** A report from an object, JSON text, or a file path. */
export function toReport(input: BenchReport | string, what: string): BenchReport {
  let value: unknown = input;
  if (typeof input === 'string') {
    const text = input.trimStart().startsWith('{') ? input : readFileSync(input, 'utf8');
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new FormatError(`${what} is not valid JSON: ${(e as Error).message}`);
    }
  }
  const r = value as BenchReport;
  if (!r || typeof r !== 'object' || !Array.isArray(r.rows))
    throw new FormatError(`${what} is not a benchmark report (expected an object with rows)`);
  if (r.schema !== SCHEMA) throw new FormatError(`${what} has schema ${JSON.stringify(r.schema)}, expected ${SCHEMA}`);
  return r;
}

const median = (r: BenchRow | undefined) => (r?.status === 'ok' && r.stepMs ? r.stepMs.median : null);
const ratio = (a: number | null, b: number | null) => (a !== null && b !== null && b > 0 ? a / b : null);

/**
 * Rows of both reports paired by id (ours first, in our order, then rows only PyTorch ran), with
 * ours/theirs ratios of the median step time and of the peak RSS.
 */
export function compareBench(oursJson: BenchReport | string, theirsJson: BenchReport | string): CompareResult {
  const ours = toReport(oursJson, 'ours');
  const theirs = toReport(theirsJson, 'theirs');
  const theirById = new Map(theirs.rows.map((r) => [r.id, r]));
  const ourIds = new Set(ours.rows.map((r) => r.id));
  const pairs: [BenchRow | undefined, BenchRow | undefined][] = [
    ...ours.rows.map((r): [BenchRow, BenchRow | undefined] => [r, theirById.get(r.id)]),
    ...theirs.rows.filter((r) => !ourIds.has(r.id)).map((r): [undefined, BenchRow] => [undefined, r]),
  ];
  const rows: CompareRow[] = pairs.map(([o, t]) => {
    const base = (o ?? t)!;
    const oursMs = median(o);
    const theirsMs = median(t);
    const oursRss = o?.status === 'ok' ? (o.peakRssMB ?? null) : null;
    const theirsRss = t?.status === 'ok' ? (t.peakRssMB ?? null) : null;
    const notes: string[] = [];
    if (!o) notes.push('only theirs');
    else if (o.status !== 'ok') notes.push(`ours ${o.status}${o.note ? `: ${o.note}` : ''}`);
    if (!t) notes.push('only ours');
    else if (t.status !== 'ok') notes.push(`theirs ${t.status}${t.note ? `: ${t.note}` : ''}`);
    const timeRatio = ratio(oursMs, theirsMs);
    const row: CompareRow = {
      id: base.id,
      method: base.method,
      model: base.model,
      batch: base.batch,
      oursMs,
      theirsMs,
      timeRatio,
      speedup: timeRatio ? 1 / timeRatio : null,
      oursImagesPerSec: o?.status === 'ok' ? (o.imagesPerSec ?? null) : null,
      theirsImagesPerSec: t?.status === 'ok' ? (t.imagesPerSec ?? null) : null,
      oursRssMB: oursRss,
      theirsRssMB: theirsRss,
      rssRatio: ratio(oursRss, theirsRss),
    };
    if (notes.length) row.note = notes.join('; ');
    return row;
  });
  const kindOf = (r: CompareRow) => (o: BenchReport) => o.rows.find((x) => x.id === r.id)?.kind;
  const kinds = rows.map((r) => kindOf(r)(ours) ?? kindOf(r)(theirs));
  const ratios = (k?: 'train' | 'infer') =>
    rows.filter((r, i) => r.timeRatio !== null && (!k || kinds[i] === k)).map((r) => r.timeRatio!);
  const gm = { train: geomean(ratios('train')), infer: geomean(ratios('infer')), all: geomean(ratios()) };
  return { rows, geomean: gm, markdown: markdownCompare(rows, gm) };
}
