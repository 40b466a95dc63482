/**
 * VTAB-1k as the RepAdapter (and NOAH) code lays it out:
 *
 *     <root>/<task>/train800.txt  val200.txt  train800val200.txt  test.txt
 *     <root>/<task>/<relative/path> ...
 *
 * Each list line is `relative/path label`: the path is relative to `<root>/<task>/` (it may hold
 * spaces: the label is the last field), the label a non-negative integer. Blank lines are ignored.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';

import { ArgumentError, FormatError, expected } from '../errors.js';
import { ImageDataset, type SkippedItem } from './dataset.js';
import { decodeImages, resolveLoadOptions, where, type DecodeItem, type LoadOptions } from './decode.js';

/** The VTAB-1k splits. */
export const VTAB_SPLITS = ['train800', 'val200', 'train800val200', 'test'] as const;
export type VtabSplit = (typeof VTAB_SPLITS)[number];

/** Class counts of the 19 VTAB-1k tasks, by folder name (the official `get_classes_num`). */
export const VTAB_TASKS: Readonly<Record<string, number>> = Object.freeze({
  cifar: 100,
  caltech101: 102,
  dtd: 47,
  oxford_flowers102: 102,
  oxford_iiit_pet: 37,
  svhn: 10,
  sun397: 397,
  patch_camelyon: 2,
  eurosat: 10,
  resisc45: 45,
  diabetic_retinopathy: 5,
  clevr_count: 8,
  clevr_dist: 6,
  dmlab: 6,
  kitti: 4,
  dsprites_loc: 16,
  dsprites_ori: 16,
  smallnorb_azi: 18,
  smallnorb_ele: 9,
});

export interface VtabOptions extends LoadOptions {
  /** When `dir` is the VTAB root: the task folder inside it (e.g. 'cifar'). */
  task?: string;
}

interface ListEntry {
  rel: string;
  label: number;
  line: number;
}

/**
 * Parses a VTAB list. Problems (malformed line, non-integer or out-of-range label) throw a
 * FormatError naming file and line, or are collected into `skipped` in skip mode.
 */
export function parseVtabList(
  text: string,
  file: string,
  numClasses: number | undefined,
  onError: 'throw' | 'skip',
  skipped: SkippedItem[],
): ListEntry[] {
  const out: ListEntry[] = [];
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i].trim();
    if (raw === '') continue;
    const line = i + 1;
    const problem = (reason: string): void => {
      if (onError === 'skip') skipped.push({ file, line, reason });
      else throw new FormatError(`${where(file, line)}: ${reason}`, { file });
    };
    const m = /^(.*\S)\s+(\S+)$/.exec(raw);
    if (!m) {
      problem(`expected 'relative/path label', got ${JSON.stringify(raw.length > 80 ? `${raw.slice(0, 80)}…` : raw)}`);
      continue;
    }
    const [, rel, token] = m;
    if (!/^[+-]?\d+$/.test(token)) {
      problem(`expected an integer label, got ${JSON.stringify(token)}`);
      continue;
    }
    const label = Number(token);
    if (label < 0 || !Number.isSafeInteger(label) || (numClasses !== undefined && label >= numClasses)) {
      problem(`label ${token} is out of range [0, ${numClasses ?? 'numClasses'})`);
      continue;
    }
    out.push({ rel, label, line });
  }
  return out;
}

async function isDirectory(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

/**
 * Loads one split of a VTAB-1k task, decoding and resizing every image once.
 *
 * `dir` is the task folder (`data/vtab-1k/cifar`), or the VTAB root with `opts.task`.
 * numClasses defaults to the task's count from VTAB_TASKS (by folder name), else the largest
 * label + 1.
 */
export async function vtab(dir: string, split: VtabSplit | (string & {}), opts?: VtabOptions): Promise<ImageDataset> {
  if (typeof dir !== 'string' || dir === '') throw new ArgumentError(expected('a folder path', 'dir', dir));
  if (typeof split !== 'string' || !/^[\w.-]+$/.test(split))
    throw new ArgumentError(expected(`a split name (${VTAB_SPLITS.join(', ')})`, 'split', split));
  const o = resolveLoadOptions(opts, 'vtab');
  if (opts?.task !== undefined && (typeof opts.task !== 'string' || opts.task === ''))
    throw new ArgumentError(expected('a task folder name', 'task', opts.task));
  const taskDir = path.resolve(opts?.task ? path.join(dir, opts.task) : dir);
  if (!(await isDirectory(taskDir))) throw new ArgumentError(expected('an existing VTAB task folder', 'dir', taskDir));
  const file = path.join(taskDir, `${split}.txt`);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    const known = (VTAB_SPLITS as readonly string[]).includes(split) ? '' : ` (the VTAB-1k splits are ${VTAB_SPLITS.join(', ')})`;
    throw new FormatError(`${file}: cannot read the list of split '${split}': ${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message}${known}`, {
      file,
      cause,
    });
  }
  const numClasses = o.numClasses ?? VTAB_TASKS[path.basename(taskDir)];
  const skipped: SkippedItem[] = [];
  let entries = parseVtabList(text, file, numClasses, o.onError, skipped);
  if (entries.length === 0)
    throw new FormatError(
      skipped.length
        ? `${file}: every listed item was skipped (${skipped.length}); first: line ${skipped[0].line}: ${skipped[0].reason}`
        : `${file}: the split lists no images (expected lines of 'relative/path label')`,
      { file },
    );
  if (entries.length > o.limit) entries = entries.slice(0, o.limit);
  const items: DecodeItem[] = entries.map((e) => ({ path: path.resolve(taskDir, e.rel), label: e.label, file, line: e.line }));
  const decoded = await decodeImages(items, o, file);
  skipped.push(...decoded.skipped);
  skipped.sort((a, b) => (a.line ?? 0) - (b.line ?? 0));
  if (decoded.labels.length === 0)
    throw new FormatError(`${file}: no listed image could be decoded (${skipped.length} skipped); first: ${describe(skipped[0])}`, { file });
  let max = 0;
  for (const l of decoded.labels) max = Math.max(max, l);
  return new ImageDataset({
    name: `${path.basename(taskDir)}/${split}`,
    pixels: decoded.pixels,
    cacheSize: o.cacheSize,
    channels: 3,
    imageSize: o.imageSize,
    labels: decoded.labels,
    numClasses: numClasses ?? max + 1,
    sources: decoded.sources,
    skipped,
  });
}

function describe(s: SkippedItem | undefined): string {
  return s ? `${where(s.file, s.line)}: ${s.image ? `${s.image}: ` : ''}${s.reason}` : 'none';
}
