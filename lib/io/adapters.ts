/**
 * Adapter files: what a RepAdapter task adds to a frozen backbone — the adapters and the head,
 * kilobytes — in safetensors under the official names, with everything needed to use them
 * safely in the metadata:
 *
 *     repadapter.format          "adapters/1"
 *     repadapter.version         the package version that wrote it
 *     repadapter.config          the full model config (JSON, as ViT.save writes it)
 *     repadapter.adapter         the adapter config (placement, hidden, groups, scale, dropout)
 *     repadapter.baseFingerprint fingerprint() of the backbone the adapters were trained on
 *     repadapter.classNames      JSON array of class names (when given)
 *
 * loadAdapters refuses a file that does not fit the model, naming every mismatch: another base
 * (fingerprint), another backbone (image size, patch, width, depth, heads, MLP width), another
 * adapter config (placement, hidden, groups — and scale: the official code folds with whatever
 * scale the model has, silently giving wrong outputs when it differs from training's; we refuse)
 * or another class count. A model that fits a file is made with
 * `ViT.create(await modelConfigFromAdapters(path))`.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';

import { resolveConfig, type ResolvedConfig } from '../config.js';
import { ArgumentError, ConfigError, FormatError, StateDictError, expected, type MisshapedTensor } from '../errors.js';
import type { ViT } from '../vit.js';
import { readSafetensors, toFloat32, writeSafetensors, type TensorInput } from './safetensors.js';

export const ADAPTER_FORMAT = 'adapters/1';

const KEY = {
  format: 'repadapter.format',
  version: 'repadapter.version',
  config: 'repadapter.config',
  adapter: 'repadapter.adapter',
  fingerprint: 'repadapter.baseFingerprint',
  classNames: 'repadapter.classNames',
} as const;

function packageVersion(): string {
  try {
    // lib/io/adapters.ts and dist/io/adapters.js both sit two levels below the package root.
    return (createRequire(import.meta.url)('../../package.json') as { version?: string }).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Roles of the frozen backbone (what the fingerprint covers). */
const BACKBONE_ROLES = new Set(['backbone', 'norm']);
/** Roles an adapter file carries. */
const TASK_ROLES = new Set(['adapter', 'head']);

/**
 * A stable hash of the frozen backbone: sha256 over every backbone and norm parameter, in name
 * order, as name, shape and float32 little-endian bytes. Adapters and the head are left out, so
 * it identifies the base an adapter file was trained on; `sha256:<hex>`.
 */
export function fingerprint(model: Pick<ViT, 'parameters' | 'param'>): string {
  const hash = createHash('sha256');
  hash.update('repadapter-backbone-fingerprint/1\n');
  const params = model.parameters().filter((p) => BACKBONE_ROLES.has(p.role));
  params.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  for (const p of params) {
    hash.update(`${p.name}\0${p.shape.join(',')}\0`);
    const data = model.param(p.name);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (!littleEndian) for (let i = 0; i < bytes.length; i += 4) bytes.subarray(i, i + 4).reverse();
    hash.update(bytes);
  }
  return `sha256:${hash.digest('hex')}`;
}

export interface SaveAdaptersOptions {
  /** One name per class, in label order. */
  classNames?: readonly string[];
  /** The fingerprint of the base the adapters were trained on (default: fingerprint(model) now). */
  baseFingerprint?: string;
  /** More metadata (string values; keys must not start with "repadapter."). */
  metadata?: Record<string, string>;
}

/**
 * Writes the adapters and the head (float32, official names) with the metadata above, atomically.
 * Works on a plain model too (then the file holds the head only: a linear probe).
 */
export async function saveAdapters(model: ViT, path: string, options: SaveAdaptersOptions = {}): Promise<void> {
  const config = model.config;
  const { classNames, metadata = {} } = options;
  if (classNames !== undefined) {
    if (!Array.isArray(classNames) || !classNames.every((c) => typeof c === 'string'))
      throw new ArgumentError(expected('an array of strings', 'classNames', classNames));
    if (classNames.length !== config.numClasses)
      throw new ArgumentError(expected(`${config.numClasses} class names (one per class)`, 'classNames', classNames));
  }
  const base = options.baseFingerprint ?? fingerprint(model);
  if (typeof base !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(base))
    throw new ArgumentError(expected('a fingerprint "sha256:<64 hex digits>"', 'baseFingerprint', base));
  for (const key of Object.keys(metadata))
    if (key.startsWith('repadapter.')) throw new ArgumentError(expected('a metadata key outside "repadapter."', 'metadata key', key));
  const tensors: TensorInput[] = [];
  for (const p of model.parameters())
    if (TASK_ROLES.has(p.role)) tensors.push({ name: p.name, dtype: 'F32', shape: p.shape, data: model.param(p.name) });
  await writeSafetensors(path, tensors, {
    ...metadata,
    [KEY.format]: ADAPTER_FORMAT,
    [KEY.version]: packageVersion(),
    [KEY.config]: JSON.stringify(config),
    [KEY.adapter]: JSON.stringify(config.adapter),
    [KEY.fingerprint]: base,
    ...(classNames ? { [KEY.classNames]: JSON.stringify(classNames) } : {}),
  });
}

export interface AdapterFile {
  /** The full model config the adapters were trained in. */
  config: ResolvedConfig;
  adapter: ResolvedConfig['adapter'];
  baseFingerprint: string;
  classNames?: string[];
  /** The repadapter version that wrote it. */
  version: string;
  /** The tensors, by official name. */
  tensors: Map<string, { shape: number[]; data: Float32Array }>;
  /** All metadata, as stored. */
  metadata: Record<string, string>;
}

/** Reads and validates an adapter file (no model needed). */
export async function readAdapters(path: string): Promise<AdapterFile> {
  const file = await readSafetensors(path);
  const md = file.metadata;
  const bad = (message: string): never => {
    throw new FormatError(`invalid adapter file ${path}: ${message}`, { file: path });
  };
  if (md[KEY.format] === undefined)
    bad(`no ${KEY.format} metadata: not written by saveAdapters (a full model file loads with ViT#load)`);
  if (md[KEY.format] !== ADAPTER_FORMAT) bad(`unsupported ${KEY.format} ${JSON.stringify(md[KEY.format])} (this version reads ${ADAPTER_FORMAT})`);
  const json = (key: string): unknown => {
    if (md[key] === undefined) bad(`no ${key} metadata`);
    try {
      return JSON.parse(md[key]);
    } catch (e) {
      return bad(`${key} is not valid JSON (${(e as Error).message})`);
    }
  };
  let config: ResolvedConfig;
  try {
    config = resolveConfig(json(KEY.config) as ResolvedConfig);
  } catch (e) {
    return bad(`${KEY.config} is not a valid model config: ${(e as Error).message}`);
  }
  const adapter = json(KEY.adapter) as ResolvedConfig['adapter'];
  if (JSON.stringify(adapter) !== JSON.stringify(config.adapter))
    bad(`${KEY.adapter} ${md[KEY.adapter]} disagrees with the adapter in ${KEY.config}`);
  const baseFingerprint = md[KEY.fingerprint];
  if (typeof baseFingerprint !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(baseFingerprint))
    bad(`${KEY.fingerprint} must be "sha256:<64 hex digits>", got ${JSON.stringify(baseFingerprint)}`);
  let classNames: string[] | undefined;
  if (md[KEY.classNames] !== undefined) {
    const names = json(KEY.classNames);
    if (!Array.isArray(names) || !names.every((n) => typeof n === 'string') || names.length !== config.numClasses)
      bad(`${KEY.classNames} must be ${config.numClasses} strings, got ${md[KEY.classNames].slice(0, 80)}`);
    classNames = names as string[];
  }
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, entry] of file.tensors) tensors.set(name, { shape: entry.shape, data: toFloat32(entry) });
  return { config, adapter, baseFingerprint, classNames, version: md[KEY.version] ?? 'unknown', tensors, metadata: md };
}

/**
 * The config of the model an adapter file was trained in: `ViT.create(await
 * modelConfigFromAdapters(path))` makes a model that loadAdapters accepts (after loading the
 * same pretrained backbone).
 */
export async function modelConfigFromAdapters(path: string): Promise<ResolvedConfig> {
  return (await readAdapters(path)).config;
}

export interface LoadAdaptersOptions {
  /** Skip the base-model check (the adapters then likely compute something else). */
  ignoreFingerprint?: boolean;
}

export interface LoadAdaptersResult {
  loaded: string[];
  classNames?: string[];
  baseFingerprint: string;
  version: string;
}

const BACKBONE_KEYS = ['imageSize', 'patchSize', 'width', 'depth', 'heads', 'mlpHidden'] as const;

/**
 * Loads an adapter file into `model`, after checking that it fits: the same base (fingerprint),
 * backbone config, adapter config (placement, hidden, groups, scale) and class count. Every
 * mismatch is named in one ConfigError; tensor problems in one StateDictError. Nothing changes
 * unless everything fits.
 */
export async function loadAdapters(model: ViT, path: string, options: LoadAdaptersOptions = {}): Promise<LoadAdaptersResult> {
  const file = await readAdapters(path);
  const mine = model.config;
  const theirs = file.config;
  const problems: string[] = [];
  for (const key of BACKBONE_KEYS)
    if (mine[key] !== theirs[key]) problems.push(`${key}: the file was trained with ${theirs[key]}, the model has ${mine[key]}`);
  if (mine.numClasses !== theirs.numClasses)
    problems.push(`numClasses: the file's head has ${theirs.numClasses} classes, the model ${mine.numClasses}`);
  const a = theirs.adapter;
  const b = mine.adapter;
  if (a && !b) problems.push(`adapter: the file has '${a.placement}' adapters, the model has none (a plain or folded model)`);
  else if (!a && b) problems.push(`adapter: the file has no adapters (head only), the model has '${b.placement}' adapters`);
  else if (a && b) {
    if (a.placement !== b.placement) problems.push(`adapter.placement: the file has '${a.placement}', the model '${b.placement}'`);
    if (a.hidden !== b.hidden) problems.push(`adapter.hidden: the file has ${a.hidden}, the model ${b.hidden}`);
    if (a.groups !== b.groups) problems.push(`adapter.groups: the file has ${a.groups}, the model ${b.groups}`);
    if (Math.fround(a.scale) !== Math.fround(b.scale))
      problems.push(`adapter.scale: the adapters were trained with scale ${fmt(a.scale)}, the model has ${fmt(b.scale)} (outputs and the fold would be wrong)`);
  }
  if (!options.ignoreFingerprint) {
    const base = fingerprint(model);
    if (base !== file.baseFingerprint)
      problems.push(
        `base model: the adapters were trained on backbone ${file.baseFingerprint.slice(0, 19)}…, this model's backbone is ${base.slice(0, 19)}… ` +
          '(load the same pretrained weights first; a folded model has a changed backbone)',
      );
  }
  if (problems.length)
    throw new ConfigError(
      `adapter file ${path} does not fit this model:\n  ${problems.join('\n  ')}\n` +
        `(a model that fits: ViT.create(await modelConfigFromAdapters(${JSON.stringify(path)})), then the same pretrained backbone)`,
    );

  const params = model.parameters();
  const wanted = new Map(params.filter((p) => TASK_ROLES.has(p.role)).map((p) => [p.name, p]));
  const missing = [...wanted.keys()].filter((n) => !file.tensors.has(n));
  const unexpected = [...file.tensors.keys()].filter((n) => !wanted.has(n));
  const misshaped: MisshapedTensor[] = [];
  for (const [name, t] of file.tensors) {
    const p = wanted.get(name);
    if (p && (p.shape.length !== t.shape.length || p.shape.some((d, i) => d !== t.shape[i])))
      misshaped.push({ name, expected: [...p.shape], got: [...t.shape] });
  }
  if (missing.length || unexpected.length || misshaped.length)
    throw new StateDictError({ missing, unexpected, misshaped }, { context: `for adapter file ${path}` });
  model.loadStateDict(file.tensors, { strict: false, context: `for adapter file ${path}` });
  return {
    loaded: [...file.tensors.keys()],
    ...(file.classNames ? { classNames: file.classNames } : {}),
    baseFingerprint: file.baseFingerprint,
    version: file.version,
  };
}

function fmt(x: number): string {
  return String(Number(Math.fround(x).toPrecision(7)));
}
