/**
 * Training checkpoints: everything needed to resume a run exactly, in one safetensors file.
 *
 * Tensors: the trainable parameters under their model names (so `model.load(file, { strict:
 * false })` also reads them) and the optimizer's state slots over the flat trainable buffer
 * (`optimizer.exp_avg`, `optimizer.exp_avg_sq` for AdamW, `optimizer.momentum_buffer` for SGD).
 * Metadata key `repadapter.checkpoint`: one JSON object with the format version, the model config,
 * the optimizer's step count, hyperparameters, groups and flat layout, the schedule (its JSON) and
 * the training position, the model's RNG state (64-bit values as decimal strings), the caller's
 * data-order state, a fingerprint of the frozen base weights (the caller's string; the backbone
 * itself is not saved), metrics and free-form extra JSON. `repadapter.config` holds the config as
 * in files written by ViT#save.
 *
 * Writes are atomic (temporary file, fsync, rename, directory fsync). Reads check every rule and
 * throw FormatError naming the file; loading into a model changes nothing unless everything fits.
 *
 * CheckpointKeeper manages a directory of them: it keeps the last k and the best by a metric and
 * deletes older files only after their successor is safely on disk.
 */
import { open, readdir, mkdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { resolveConfig, type ResolvedConfig } from '../config.js';
import { ArgumentError, ConfigError, FormatError, StateDictError, expected, formatValue } from '../errors.js';
import type { MisshapedTensor } from '../errors.js';
import { MAX_HEADER_SIZE, readSafetensors, writeSafetensors, type TensorInput } from '../io/safetensors.js';
import { call } from '../native.js';
import type { Optimizer, OptimizerState } from '../optim/optimizer.js';
import type { Schedule, ScheduleSpec } from '../optim/schedules.js';
import type { ViT } from '../vit.js';

export const CHECKPOINT_FORMAT = 'repadapter.checkpoint';
export const CHECKPOINT_VERSION = 1;
const META_KEY = 'repadapter.checkpoint';
const SLOT_PREFIX = 'optimizer.';

/** Where training is when the checkpoint is taken. */
export interface TrainingPosition {
  /** Epochs completed (the epoch training resumes with). */
  epoch: number;
  /** Optimizer updates done. */
  update: number;
}

/** What saveCheckpoint() writes. */
export interface CheckpointInput {
  model: ViT;
  /** The optimizer attached to `model` (its state must not be mid-accumulation). */
  optimizer?: Optimizer | null;
  /** The lr schedule; stored as its JSON. */
  schedule?: Schedule | ScheduleSpec | null;
  position: TrainingPosition;
  /** The data pipeline's order state (shuffle seed, epoch, cursor…); any JSON value. */
  dataState?: unknown;
  /** A fingerprint of the frozen base weights (e.g. a hash of the pretrained file). */
  baseFingerprint?: string | null;
  /** Metrics at this point (e.g. { top1: 0.81, loss: 0.62 }); the keeper ranks by one of them. */
  metrics?: Record<string, number>;
  /** Anything else the caller wants back (JSON). */
  extra?: unknown;
}

/** The metadata of a checkpoint: all but the tensors. */
export interface CheckpointInfo {
  path: string;
  version: number;
  savedAt: string;
  config: ResolvedConfig;
  /** Names of the saved trainable parameters. */
  params: string[];
  /** The optimizer state without its slot tensors (null when none was saved). */
  optimizer: Omit<OptimizerState, 'slots'> | null;
  schedule: ScheduleSpec | null;
  position: TrainingPosition;
  rng: { seed: bigint; step: bigint };
  dataState: unknown;
  baseFingerprint: string | null;
  metrics: Record<string, number | null>;
  extra: unknown;
}

/** A whole checkpoint: the metadata and the tensors. */
export interface Checkpoint extends CheckpointInfo {
  /** Trainable parameters by name. */
  tensors: Map<string, { shape: number[]; data: Float32Array }>;
  /** The full optimizer state (slots included), ready for optimizer.loadState(). */
  optimizerState: OptimizerState | null;
}

/** The metadata as stored: CheckpointInfo without the path, with the RNG as decimal strings. */
type Meta = Omit<CheckpointInfo, 'path' | 'rng'> & { format: string; rng: { seed: string; step: string } };

// ---- saving -----------------------------------------------------------------------------------------

function toJsonValue(value: unknown, name: string): unknown {
  if (value === undefined) return null;
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (cause) {
    throw new ArgumentError(expected('a JSON-serialisable value', name, value), { cause });
  }
  if (text === undefined) throw new ArgumentError(expected('a JSON-serialisable value', name, value));
  return JSON.parse(text) as unknown;
}

function checkPosition(p: unknown, name: string): TrainingPosition {
  const o = p as TrainingPosition;
  if (
    o === null ||
    typeof o !== 'object' ||
    !Number.isSafeInteger(o.epoch) ||
    o.epoch < 0 ||
    !Number.isSafeInteger(o.update) ||
    o.update < 0
  )
    throw new ArgumentError(expected('{ epoch, update } (integers ≥ 0)', name, p));
  return { epoch: o.epoch, update: o.update };
}

/** Tensors and metadata of a checkpoint (everything is read from the model and optimizer now). */
function snapshot(input: CheckpointInput): { tensors: TensorInput[]; metadata: Record<string, string> } {
  if (input === null || typeof input !== 'object') throw new ArgumentError(expected('a checkpoint input object', 'checkpoint', input));
  const { model, optimizer = null, schedule = null, dataState = null, baseFingerprint = null, metrics = {}, extra = null } = input;
  if (model === null || typeof model !== 'object' || typeof model.handle !== 'function')
    throw new ArgumentError(expected('a ViT', 'model', model));
  const position = checkPosition(input.position, 'position');
  if (baseFingerprint !== null && typeof baseFingerprint !== 'string')
    throw new ArgumentError(expected('a string or null', 'baseFingerprint', baseFingerprint));
  if (metrics === null || typeof metrics !== 'object' || Object.values(metrics).some((v) => typeof v !== 'number'))
    throw new ArgumentError(expected('an object of numbers', 'metrics', metrics));
  if (optimizer !== null && optimizer.model !== model)
    throw new ArgumentError('the optimizer given to saveCheckpoint is not attached to the model given with it');

  const handle = model.handle();
  const tensors: TensorInput[] = [];
  const params: string[] = [];
  for (const [name, { shape, data }] of model.stateDict({ trainableOnly: true })) {
    tensors.push({ name, dtype: 'F32', shape, data });
    params.push(name);
  }
  let opt: Meta['optimizer'] = null;
  if (optimizer) {
    const { slots, ...rest } = optimizer.state();
    opt = rest;
    slots.forEach((data, k) => tensors.push({ name: `${SLOT_PREFIX}${rest.slotNames[k]}`, dtype: 'F32', shape: [data.length], data }));
    // Before the first update there are no slots; mark that with an empty slot list.
    if (slots.length === 0) opt.slotNames = [];
  }
  const [seed, step] = call(() => handle.rng());
  const config = call(() => handle.config());
  const meta: Meta = {
    format: CHECKPOINT_FORMAT,
    version: CHECKPOINT_VERSION,
    savedAt: new Date().toISOString(),
    config,
    params,
    optimizer: opt,
    schedule: schedule === null ? null : (toJsonValue('toJSON' in schedule ? schedule.toJSON() : schedule, 'schedule') as ScheduleSpec),
    position,
    rng: { seed: seed.toString(), step: step.toString() },
    dataState: toJsonValue(dataState, 'dataState'),
    baseFingerprint,
    metrics: { ...metrics },
    extra: toJsonValue(extra, 'extra'),
  };
  return { tensors, metadata: { [META_KEY]: JSON.stringify(meta), 'repadapter.config': JSON.stringify(config) } };
}

/** Writes a training checkpoint atomically (see the module comment for what it holds). */
export async function saveCheckpoint(path: string, input: CheckpointInput): Promise<void> {
  if (typeof path !== 'string' || path === '') throw new ArgumentError(expected('a file path', 'path', path));
  const { tensors, metadata } = snapshot(input);
  await writeSafetensors(path, tensors, metadata);
}

// ---- reading ----------------------------------------------------------------------------------------

function bad(file: string, message: string, cause?: unknown): never {
  throw new FormatError(`invalid checkpoint ${file}: ${message}`, { file, ...(cause !== undefined ? { cause } : {}) });
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === 'string');

/** Parses and checks the metadata JSON of a checkpoint. */
function parseMeta(file: string, metadata: Record<string, string> | undefined): CheckpointInfo {
  const text = metadata?.[META_KEY];
  if (typeof text !== 'string') bad(file, `no "${META_KEY}" metadata (not a training checkpoint)`);
  let m: Meta;
  try {
    m = JSON.parse(text) as Meta;
  } catch (cause) {
    bad(file, `the "${META_KEY}" metadata is not valid JSON`, cause);
  }
  if (!isObject(m)) bad(file, `the "${META_KEY}" metadata is not a JSON object`);
  if (m.format !== CHECKPOINT_FORMAT) bad(file, expected(`"${CHECKPOINT_FORMAT}"`, 'format', m.format));
  if (m.version !== CHECKPOINT_VERSION)
    bad(file, expected(`version ${CHECKPOINT_VERSION} (this library's)`, 'version', m.version));
  let config: ResolvedConfig;
  try {
    config = resolveConfig(m.config as ResolvedConfig);
  } catch (cause) {
    bad(file, `bad model config: ${(cause as Error).message}`, cause);
  }
  if (!isStrings(m.params)) bad(file, expected('an array of names', 'params', m.params));
  if (!isObject(m.position) || !isCount(m.position.epoch) || !isCount(m.position.update))
    bad(file, expected('{ epoch, update } (integers ≥ 0)', 'position', m.position));
  if (!isObject(m.rng) || typeof m.rng.seed !== 'string' || typeof m.rng.step !== 'string' || !/^\d+$/.test(m.rng.seed) || !/^\d+$/.test(m.rng.step))
    bad(file, expected('{ seed, step } as decimal strings', 'rng', m.rng));
  if (m.schedule !== null && (!isObject(m.schedule) || typeof m.schedule.kind !== 'string'))
    bad(file, expected('a schedule spec or null', 'schedule', m.schedule));
  if (m.baseFingerprint !== null && typeof m.baseFingerprint !== 'string')
    bad(file, expected('a string or null', 'baseFingerprint', m.baseFingerprint));
  if (!isObject(m.metrics) || Object.values(m.metrics).some((v) => v !== null && typeof v !== 'number'))
    bad(file, expected('an object of numbers', 'metrics', m.metrics));
  if (typeof m.savedAt !== 'string') bad(file, expected('a date string', 'savedAt', m.savedAt));
  const o = m.optimizer;
  if (o !== null) {
    if (!isObject(o)) bad(file, expected('an object or null', 'optimizer', o));
    if (o.kind !== 'adamw' && o.kind !== 'sgd') bad(file, expected("'adamw' | 'sgd'", 'optimizer.kind', o.kind));
    if (!isCount(o.step)) bad(file, expected('an integer ≥ 0', 'optimizer.step', o.step));
    if (!isObject(o.hyper)) bad(file, expected('an object', 'optimizer.hyper', o.hyper));
    if (!isStrings(o.slotNames)) bad(file, expected('an array of names', 'optimizer.slotNames', o.slotNames));
    if (!Array.isArray(o.layout) || !o.layout.every((l) => isObject(l) && typeof l.name === 'string' && isCount(l.offset) && isCount(l.numel)))
      bad(file, expected('an array of { name, offset, numel }', 'optimizer.layout', o.layout));
    if (
      !Array.isArray(o.groups) ||
      !o.groups.every(
        (g) => isObject(g) && typeof g.name === 'string' && isStrings(g.params) && [g.lr, g.baseLr, g.weightDecay].every((v) => typeof v === 'number'),
      )
    )
      bad(file, expected('an array of { name, params, baseLr, lr, weightDecay }', 'optimizer.groups', o.groups));
    if (typeof o.trainable !== 'string') bad(file, expected('a trainable set', 'optimizer.trainable', o.trainable));
  }
  return {
    path: file,
    version: m.version,
    savedAt: m.savedAt,
    config,
    params: m.params,
    optimizer: o,
    schedule: m.schedule,
    position: { epoch: m.position.epoch, update: m.position.update },
    rng: { seed: BigInt(m.rng.seed), step: BigInt(m.rng.step) },
    dataState: m.dataState ?? null,
    baseFingerprint: m.baseFingerprint ?? null,
    metrics: m.metrics,
    extra: m.extra ?? null,
  };
}

/**
 * Reads only the metadata of a checkpoint (the header; no tensor data), e.g. to list a directory.
 * Throws FormatError naming the file when it is not a valid checkpoint header.
 */
export async function readCheckpointInfo(path: string): Promise<CheckpointInfo> {
  if (typeof path !== 'string' || path === '') throw new ArgumentError(expected('a file path', 'path', path));
  const fh = await open(path, 'r');
  let header: string;
  let dataBytes = 0;
  try {
    const { size } = await fh.stat();
    if (size < 8) bad(path, `the file has ${size} bytes, fewer than the 8-byte header length`);
    const lengthBytes = Buffer.alloc(8);
    await fh.read(lengthBytes, 0, 8, 0);
    const n = lengthBytes.readBigUInt64LE(0);
    if (n > BigInt(MAX_HEADER_SIZE) || Number(n) + 8 > size) bad(path, `header length ${n} does not fit the ${size}-byte file`);
    const bytes = Buffer.alloc(Number(n));
    const { bytesRead } = await fh.read(bytes, 0, bytes.length, 8);
    if (bytesRead !== bytes.length) bad(path, 'the header is truncated');
    header = bytes.toString('utf8');
    dataBytes = size - 8 - Number(n);
  } finally {
    await fh.close();
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(header);
  } catch (cause) {
    bad(path, 'the safetensors header is not valid JSON', cause);
  }
  if (!isObject(parsed)) bad(path, 'the safetensors header is not a JSON object');
  // The data section must end where the last tensor ends (catches truncated and padded files).
  let end = 0;
  for (const [name, entry] of Object.entries(parsed)) {
    if (name === '__metadata__') continue;
    const offsets = isObject(entry) ? entry.data_offsets : undefined;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount))
      bad(path, `tensor ${JSON.stringify(name)} has no valid data_offsets`);
    end = Math.max(end, offsets[1] as number);
  }
  if (end !== dataBytes) bad(path, `the data section has ${dataBytes} bytes, the tensors need ${end} (truncated?)`);
  const metadata = isObject(parsed.__metadata__) ? (parsed.__metadata__ as Record<string, string>) : undefined;
  return parseMeta(path, metadata);
}

/** Reads and checks a whole checkpoint (no model needed). */
export async function readCheckpoint(path: string): Promise<Checkpoint> {
  if (typeof path !== 'string' || path === '') throw new ArgumentError(expected('a file path', 'path', path));
  const file = await readSafetensors(path); // FormatError naming the file on any structural problem
  const info = parseMeta(path, file.metadata);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  const f32 = (name: string) => {
    const t = file.tensors.get(name);
    if (!t) bad(path, `tensor ${JSON.stringify(name)} is listed in the metadata but missing`);
    if (t.dtype !== 'F32') bad(path, `tensor ${JSON.stringify(name)} has dtype ${t.dtype}, expected F32`);
    // Copy: aligned, and independent of the file buffer.
    const data = new Float32Array(t.data.byteLength / 4);
    new Uint8Array(data.buffer).set(t.data);
    return { shape: [...t.shape], data };
  };
  for (const name of info.params) tensors.set(name, f32(name));
  let optimizerState: OptimizerState | null = null;
  const expectedNames = new Set(info.params);
  if (info.optimizer) {
    // Slots span the flat trainable buffer: at least to the end of the last tensor (more with padding).
    const extent = Math.max(0, ...info.optimizer.layout.map((l) => l.offset + l.numel));
    const slots = info.optimizer.slotNames.map((s) => {
      const name = `${SLOT_PREFIX}${s}`;
      expectedNames.add(name);
      const t = f32(name);
      if (t.shape.length !== 1 || t.data.length < extent)
        bad(path, `tensor ${JSON.stringify(name)} has shape [${t.shape.join(', ')}], expected one dimension of at least ${extent}`);
      return t.data;
    });
    if (slots.some((x) => x.length !== slots[0].length)) bad(path, 'the optimizer state tensors differ in length');
    optimizerState = { ...info.optimizer, slots };
  }
  const extra = [...file.tensors.keys()].filter((n) => !expectedNames.has(n));
  if (extra.length) bad(path, `unexpected tensors ${extra.map((n) => JSON.stringify(n)).join(', ')}`);
  return { ...info, tensors, optimizerState };
}

export interface LoadTarget {
  /** The model to restore (trainable parameters and RNG state). */
  model?: ViT;
  /** The optimizer to restore; attached to `model` if it is not already. */
  optimizer?: Optimizer;
  /** When given, the checkpoint's base-weights fingerprint must equal it. */
  fingerprint?: string;
}

/**
 * Reads a checkpoint and, when given a model (and optimizer), restores it: the trainable
 * parameters, the RNG state, and the optimizer's step, hyperparameters, groups and state. The
 * model's config must equal the checkpoint's (ConfigError listing the differences). Everything is
 * checked before anything changes. Returns the checkpoint: its position, schedule spec
 * (schedules.fromJSON), data-order state, metrics and the rest.
 */
export async function loadCheckpoint(path: string, target: LoadTarget = {}): Promise<Checkpoint> {
  if (target === null || typeof target !== 'object') throw new ArgumentError(expected('{ model?, optimizer?, fingerprint? }', 'target', target));
  const { optimizer, fingerprint } = target;
  const model = target.model ?? optimizer?.model ?? undefined;
  if (optimizer && !model) throw new ArgumentError('loadCheckpoint needs a model to restore an optimizer into: pass { model, optimizer }');
  const ckpt = await readCheckpoint(path);
  if (!model) return ckpt;

  // ---- check everything ----
  if (fingerprint !== undefined && ckpt.baseFingerprint !== fingerprint)
    throw new ConfigError(
      `checkpoint ${path} was trained on other base weights: fingerprint ${formatValue(ckpt.baseFingerprint)}, expected ${formatValue(fingerprint)}`,
    );
  const config = model.config;
  const diffs = (Object.keys({ ...config, ...ckpt.config }) as (keyof ResolvedConfig)[])
    .filter((k) => JSON.stringify(config[k]) !== JSON.stringify(ckpt.config[k]))
    .map((k) => `${k}: model ${JSON.stringify(config[k])}, checkpoint ${JSON.stringify(ckpt.config[k])}`);
  if (diffs.length) throw new ConfigError(`checkpoint ${path} is for a different model config:\n  ${diffs.join('\n  ')}`);
  const trainable = model.parameters().filter((p) => p.trainable);
  const known = new Map(trainable.map((p) => [p.name, p]));
  const missing = trainable.filter((p) => !ckpt.tensors.has(p.name)).map((p) => p.name);
  const unexpected = [...ckpt.tensors.keys()].filter((n) => !known.has(n));
  const misshaped: MisshapedTensor[] = [];
  for (const [name, t] of ckpt.tensors) {
    const p = known.get(name);
    if (p && (p.shape.length !== t.shape.length || p.shape.some((d, i) => d !== t.shape[i])))
      misshaped.push({ name, expected: [...p.shape], got: t.shape });
  }
  if (missing.length || unexpected.length || misshaped.length)
    throw new StateDictError({ missing, unexpected, misshaped }, { context: `with checkpoint ${path}` });
  if (optimizer) {
    if (!ckpt.optimizerState) throw new ArgumentError(`checkpoint ${path} has no optimizer state to restore`);
    if (ckpt.optimizerState.kind !== optimizer.kind)
      throw new ArgumentError(expected(`a ${optimizer.kind} optimizer state`, `the optimizer of checkpoint ${path}`, ckpt.optimizerState.kind));
  }

  // ---- restore ----
  if (optimizer) {
    if (optimizer.model !== model) optimizer.attach(model);
    optimizer.loadState(ckpt.optimizerState!); // checks everything before it changes anything
  }
  for (const [name, t] of ckpt.tensors) model.setParam(name, t.data);
  const handle = model.handle();
  call(() => handle.setRng(ckpt.rng.seed, ckpt.rng.step));
  return ckpt;
}

// ---- keeping a directory of checkpoints -------------------------------------------------------------

export interface KeeperOptions {
  /** How many of the most recent checkpoints to keep (default 3, at least 1). */
  keepLast?: number;
  /** Also keep the best checkpoint by this metric (from CheckpointInput.metrics). */
  best?: { metric: string; mode?: 'max' | 'min' } | null;
  /** File name prefix (default "checkpoint"): files are `<prefix>-e<epoch>-u<update>.safetensors`. */
  prefix?: string;
  /** The file writer (default writeSafetensors, atomic); a seam for tests and custom storage. */
  write?: (path: string, tensors: TensorInput[], metadata: Record<string, string>) => Promise<void>;
}

/** One checkpoint the keeper knows about. */
export interface KeptCheckpoint {
  path: string;
  position: TrainingPosition;
  metrics: Record<string, number | null>;
  savedAt: string;
}

/**
 * A directory of training checkpoints: keeps the last `keepLast` and the best by a metric. A
 * checkpoint is deleted only after a newer one has been written completely (fsynced and renamed
 * into place); a failed write leaves every existing checkpoint as it was. Saves are serialised.
 * Files in the directory that match the naming scheme but are not valid checkpoints are left alone
 * and not listed.
 */
export class CheckpointKeeper {
  readonly dir: string;
  readonly keepLast: number;
  readonly best: { metric: string; mode: 'max' | 'min' } | null;
  readonly prefix: string;
  #write: NonNullable<KeeperOptions['write']>;
  #entries: KeptCheckpoint[] = [];
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(dir: string, options: Required<Omit<KeeperOptions, 'best'>> & { best: CheckpointKeeper['best'] }) {
    this.dir = dir;
    this.keepLast = options.keepLast;
    this.best = options.best;
    this.prefix = options.prefix;
    this.#write = options.write;
  }

  /** Opens (creating it if needed) a checkpoint directory and lists the checkpoints already there. */
  static async open(dir: string, options: KeeperOptions = {}): Promise<CheckpointKeeper> {
    if (typeof dir !== 'string' || dir === '') throw new ArgumentError(expected('a directory path', 'dir', dir));
    if (options === null || typeof options !== 'object') throw new ConfigError(expected('an options object', 'options', options));
    for (const key of Object.keys(options))
      if (!['keepLast', 'best', 'prefix', 'write'].includes(key)) throw new ConfigError(`unknown CheckpointKeeper option ${formatValue(key)}`);
    const { keepLast = 3, best = null, prefix = 'checkpoint', write = writeSafetensors } = options;
    if (!Number.isSafeInteger(keepLast) || keepLast < 1) throw new ConfigError(expected('an integer ≥ 1', 'keepLast', keepLast));
    if (best !== null && (typeof best !== 'object' || typeof best.metric !== 'string' || !['max', 'min', undefined].includes(best.mode)))
      throw new ConfigError(expected("{ metric: string, mode?: 'max' | 'min' } or null", 'best', best));
    if (typeof prefix !== 'string' || !/^[\w.-]+$/.test(prefix)) throw new ConfigError(expected('a file-name-safe string', 'prefix', prefix));
    if (typeof write !== 'function') throw new ConfigError(expected('a function', 'write', write));
    const keeper = new CheckpointKeeper(resolve(dir), {
      keepLast,
      best: best ? { metric: best.metric, mode: best.mode ?? 'max' } : null,
      prefix,
      write: write as NonNullable<KeeperOptions['write']>,
    });
    await mkdir(keeper.dir, { recursive: true });
    await keeper.#scan();
    return keeper;
  }

  /** Known checkpoints, oldest first. */
  list(): KeptCheckpoint[] {
    return this.#entries.map((e) => ({ ...e, position: { ...e.position }, metrics: { ...e.metrics } }));
  }

  /** The most recent checkpoint (the one to resume from). */
  latest(): KeptCheckpoint | undefined {
    return this.list().pop();
  }

  /** The best checkpoint by the `best` metric (undefined without one, or when none has the metric). */
  bestCheckpoint(): KeptCheckpoint | undefined {
    const b = this.#bestEntry();
    return b && this.list().find((e) => e.path === b.path);
  }

  /** The file name a checkpoint at `position` gets. */
  pathFor(position: TrainingPosition): string {
    const p = checkPosition(position, 'position');
    return join(this.dir, `${this.prefix}-e${String(p.epoch).padStart(4, '0')}-u${String(p.update).padStart(9, '0')}.safetensors`);
  }

  /**
   * Writes a checkpoint, then deletes the ones no longer kept. Resolves to its path. If the
   * write fails, nothing is deleted and the error is rethrown.
   */
  save(input: CheckpointInput): Promise<string> {
    // Snapshot now (synchronously), so the state saved is the state at the call.
    let snap: ReturnType<typeof snapshot>;
    try {
      snap = snapshot(input);
    } catch (error) {
      return Promise.reject(error);
    }
    const { tensors, metadata } = snap;
    const position = checkPosition(input.position, 'position');
    const meta = JSON.parse(metadata[META_KEY]) as Meta;
    const run = async (): Promise<string> => {
      const path = this.pathFor(position);
      await this.#write(path, tensors, metadata);
      const entry: KeptCheckpoint = { path, position, metrics: meta.metrics, savedAt: meta.savedAt };
      this.#entries = this.#entries.filter((e) => e.path !== path);
      this.#entries.push(entry);
      this.#sort();
      await this.#prune();
      return path;
    };
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => undefined);
    return result;
  }

  #sort(): void {
    this.#entries.sort((a, b) => a.position.update - b.position.update || a.position.epoch - b.position.epoch);
  }

  #bestEntry(): KeptCheckpoint | undefined {
    if (!this.best) return undefined;
    const { metric, mode } = this.best;
    let best: KeptCheckpoint | undefined;
    for (const e of this.#entries) {
      const v = e.metrics[metric];
      if (typeof v !== 'number' || Number.isNaN(v)) continue;
      const bv = best?.metrics[metric] as number | undefined;
      if (bv === undefined || (mode === 'max' ? v > bv : v < bv)) best = e; // ties: the earlier one
    }
    return best;
  }

  async #prune(): Promise<void> {
    const keep = new Set(this.#entries.slice(-this.keepLast).map((e) => e.path));
    const best = this.#bestEntry();
    if (best) keep.add(best.path);
    const drop = this.#entries.filter((e) => !keep.has(e.path));
    for (const e of drop) {
      try {
        await rm(e.path, { force: true });
        this.#entries = this.#entries.filter((x) => x !== e);
      } catch {
        // Could not delete: keep listing it, try again after the next save.
      }
    }
  }

  async #scan(): Promise<void> {
    const pattern = new RegExp(`^${this.prefix.replace(/[.]/g, '\\.')}-e(\\d+)-u(\\d+)\\.safetensors$`);
    const names = (await readdir(this.dir)).filter((n) => pattern.test(n));
    const entries: KeptCheckpoint[] = [];
    for (const name of names) {
      const path = join(this.dir, name);
      try {
        const info = await readCheckpointInfo(path);
        entries.push({ path, position: info.position, metrics: info.metrics, savedAt: info.savedAt });
      } catch {
        // Not a valid checkpoint (e.g. copied in half): not ours to list or delete.
      }
    }
    this.#entries = entries;
    this.#sort();
  }
}
