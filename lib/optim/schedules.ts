/**
 * Learning-rate schedules with timm's semantics (timm 1.0's `CosineLRScheduler` and
 * `StepLRScheduler`, as `timm.scheduler.create_scheduler_v2` builds them).
 *
 * A schedule is a pure function from a training position to a learning rate for a given base lr.
 * It holds no state of its own: the position (`{ epoch, update }`) belongs to the training loop,
 * is plain JSON and goes into checkpoints together with `schedule.toJSON()`.
 *
 * Timing is timm's: the lr *during* epoch `e` is `_get_lr(e)` (timm's train loop calls
 * `scheduler.step(e + 1)` at the end of epoch e, and the constructor already sets `_get_lr(0)`'s
 * warmup value). With `perStep: true` (timm's `t_in_epochs=False`, `sched_on_updates`) the lr
 * of update `u` (0-based count of the updates done before it) is `_get_lr(u)`, where every epoch
 * count in the options (`epochs`, `warmupEpochs`, `decayEpochs`) is multiplied by the number of
 * updates per epoch, as create_scheduler_v2 does.
 *
 * Not supported: lr noise (timm's `noise_range_t`), cooldown epochs.
 *
 * ```ts
 * const schedule = schedules.cosine({ epochs: 100, warmupEpochs: 10, lrMin: 1e-5, warmupLrInit: 1e-6 });
 * optimizer.applySchedule(schedule, { epoch });            // at the start of every epoch
 * ```
 */
import { ArgumentError, ConfigError, expected, formatValue } from '../errors.js';

/** Where training is: what a schedule needs to give the current lr. Plain JSON. */
export interface SchedulePosition {
  /** The current epoch, 0-based (= epochs completed). */
  epoch: number;
  /** Optimizer updates completed in total (timm's num_updates). Needed by per-step schedules. */
  update?: number;
  /** Optimizer updates per epoch; needed by per-step schedules unless given in their options. */
  updatesPerEpoch?: number;
}

export interface CosineOptions {
  /** Length of the (first) cosine cycle in epochs: timm's t_initial. */
  epochs: number;
  /** Linear warmup length in epochs (timm's warmup_t); 0 for none. */
  warmupEpochs?: number;
  /** The floor of the cosine, also the lr after the last cycle (timm's lr_min). */
  lrMin?: number;
  /** The lr of the first warmup epoch (timm's warmup_lr_init). */
  warmupLrInit?: number;
  /**
   * false (timm's default): warmup counts inside `epochs` (the cosine starts at t = 0 and the
   * warmup overrides its first epochs). true: warmup comes before the cosine, which then starts
   * at t = warmupEpochs.
   */
  warmupPrefix?: boolean;
  /** Each cycle is cycleMul times longer than the previous one (timm's cycle_mul). */
  cycleMul?: number;
  /** Each cycle's peak lr is cycleDecay times the previous one's (timm's cycle_decay). */
  cycleDecay?: number;
  /** Number of cycles; after the last one the lr stays at lrMin (timm's cycle_limit). */
  cycleLimit?: number;
  /** k-decay exponent (timm's k_decay). */
  kDecay?: number;
  /** Schedule per optimizer update instead of per epoch (timm's t_in_epochs=False). */
  perStep?: boolean;
  /** Updates per epoch, for perStep (may also come with each position). */
  updatesPerEpoch?: number;
}

export interface StepOptions {
  /** Decay the lr every decayEpochs epochs (timm's decay_t). */
  decayEpochs: number;
  /** Multiply the lr by decayRate at every decay (timm's decay_rate). */
  decayRate: number;
  warmupEpochs?: number;
  warmupLrInit?: number;
  /**
   * true (StepLRScheduler's own default): decays count from the end of warmup. Note that timm's
   * create_scheduler_v2 / train.py pass warmup_prefix=False unless asked.
   */
  warmupPrefix?: boolean;
  perStep?: boolean;
  updatesPerEpoch?: number;
}

/** A schedule as JSON: what checkpoints store, and what fromJSON() takes. */
export type ScheduleSpec =
  | { kind: 'cosine'; options: Required<Omit<CosineOptions, 'updatesPerEpoch'>> & { updatesPerEpoch: number | null } }
  | { kind: 'step'; options: Required<Omit<StepOptions, 'updatesPerEpoch'>> & { updatesPerEpoch: number | null } }
  | { kind: 'constant'; options: Record<string, never> };

export interface Schedule {
  readonly kind: ScheduleSpec['kind'];
  /** Whether the schedule advances per optimizer update (else per epoch). */
  readonly perStep: boolean;
  /** The lr at a training position for a parameter group whose base lr is `baseLr`. */
  lr(position: SchedulePosition, baseLr: number): number;
  /**
   * timm's `_get_lr(t)`: t counts epochs, or updates for per-step schedules (which then need
   * updatesPerEpoch here or in their options).
   */
  at(t: number, baseLr: number, updatesPerEpoch?: number): number;
  toJSON(): ScheduleSpec;
}

// ---- option checks ------------------------------------------------------------------------------

type Check = (name: string, v: unknown) => string | null;

const finite = (lo: number, loOpen = false): Check => (name, v) =>
  typeof v === 'number' && Number.isFinite(v) && (loOpen ? v > lo : v >= lo)
    ? null
    : expected(`a finite number ${loOpen ? '>' : '≥'} ${lo}`, name, v);
const integer = (lo: number): Check => (name, v) =>
  typeof v === 'number' && Number.isSafeInteger(v) && v >= lo ? null : expected(`an integer ≥ ${lo}`, name, v);
const boolean: Check = (name, v) => (typeof v === 'boolean' ? null : expected('true or false', name, v));
const optionalUpdates: Check = (name, v) => (v === null || v === undefined ? null : integer(1)(name, v));

function checkOptions<T extends object>(
  kind: string,
  given: unknown,
  defaults: T,
  checks: Record<keyof T, Check>,
  required: readonly (keyof T)[],
): T {
  if (given === null || typeof given !== 'object' || Array.isArray(given))
    throw new ConfigError(expected('an options object', `schedules.${kind}()`, given));
  const problems: string[] = [];
  const o = given as Record<string, unknown>;
  for (const key of Object.keys(o))
    if (!(key in checks)) problems.push(`unknown option ${formatValue(key)} for schedules.${kind}()`);
  for (const key of required) if (o[key as string] === undefined) problems.push(expected('a value', String(key), undefined));
  const out = { ...defaults } as Record<string, unknown>;
  for (const key of Object.keys(checks)) {
    if (o[key] === undefined) continue;
    const problem = checks[key as keyof T](key, o[key]);
    if (problem) problems.push(problem);
    out[key] = o[key];
  }
  if (problems.length === 1) throw new ConfigError(problems[0]);
  if (problems.length) throw new ConfigError(`invalid options for schedules.${kind}():\n  ${problems.join('\n  ')}`);
  return out as T;
}

function checkBaseLr(baseLr: number): void {
  if (typeof baseLr !== 'number' || !Number.isFinite(baseLr) || baseLr < 0)
    throw new ArgumentError(expected('a finite number ≥ 0', 'baseLr', baseLr));
}

function checkT(t: number, name: string): void {
  if (typeof t !== 'number' || !Number.isFinite(t) || t < 0) throw new ArgumentError(expected('a finite number ≥ 0', name, t));
}

/** The schedule's t for a position: the epoch, or for per-step schedules the update count. */
function positionT(position: SchedulePosition, perStep: boolean, fallbackUpdates: number | null): [number, number | undefined] {
  if (position === null || typeof position !== 'object')
    throw new ArgumentError(expected('a position { epoch, update? }', 'position', position));
  if (!perStep) {
    checkT(position.epoch, 'position.epoch');
    return [position.epoch, undefined];
  }
  const update = position.update;
  if (typeof update !== 'number' || !Number.isSafeInteger(update) || update < 0)
    throw new ArgumentError(expected('an integer ≥ 0 (updates done) for a per-step schedule', 'position.update', update));
  return [update, position.updatesPerEpoch ?? fallbackUpdates ?? undefined];
}

function resolveUpdates(perStep: boolean, given: number | undefined, fallback: number | null): number {
  if (!perStep) return 1;
  const u = given ?? fallback;
  if (typeof u !== 'number' || !Number.isSafeInteger(u) || u < 1)
    throw new ArgumentError(expected('an integer ≥ 1 (from the position or the schedule options)', 'updatesPerEpoch', u));
  return u;
}

// ---- cosine ---------------------------------------------------------------------------------------

const cosineDefaults = {
  epochs: NaN,
  warmupEpochs: 0,
  lrMin: 0,
  warmupLrInit: 0,
  warmupPrefix: false,
  cycleMul: 1,
  cycleDecay: 1,
  cycleLimit: 1,
  kDecay: 1,
  perStep: false,
  updatesPerEpoch: null as number | null,
};

/**
 * timm's CosineLRScheduler: linear warmup from warmupLrInit, then
 * `lrMin + ½(lrMax − lrMin)(1 + cos(π t/T))` per cycle, and lrMin after the last cycle
 * (with the default cycleLimit 1: after `epochs`). Defaults are the CosineLRScheduler
 * constructor's.
 */
export function cosine(options: CosineOptions): Schedule {
  const o = checkOptions('cosine', options, cosineDefaults, {
    epochs: finite(0, true),
    warmupEpochs: finite(0),
    lrMin: finite(0),
    warmupLrInit: finite(0),
    warmupPrefix: boolean,
    cycleMul: finite(0, true),
    cycleDecay: finite(0),
    cycleLimit: integer(1),
    kDecay: finite(0, true),
    perStep: boolean,
    updatesPerEpoch: optionalUpdates,
  }, ['epochs']);
  const spec: ScheduleSpec = { kind: 'cosine', options: { ...o, updatesPerEpoch: o.updatesPerEpoch ?? null } };

  // timm's CosineLRScheduler._get_lr, term for term (same evaluation order, so the same doubles).
  const getLr = (t: number, baseLr: number, upe: number): number => {
    const tInitial = o.epochs * upe;
    const warmupT = o.warmupEpochs * upe;
    if (t < warmupT) {
      const s = (baseLr - o.warmupLrInit) / warmupT;
      return o.warmupLrInit + t * s;
    }
    if (o.warmupPrefix) t = t - warmupT;
    let i: number;
    let tI: number;
    let tCurr: number;
    if (o.cycleMul !== 1) {
      i = Math.floor(Math.log(1 - (t / tInitial) * (1 - o.cycleMul)) / Math.log(o.cycleMul));
      tI = o.cycleMul ** i * tInitial;
      tCurr = t - ((1 - o.cycleMul ** i) / (1 - o.cycleMul)) * tInitial;
    } else {
      i = Math.floor(t / tInitial);
      tI = tInitial;
      tCurr = t - tInitial * i;
    }
    const gamma = o.cycleDecay ** i;
    const lrMax = baseLr * gamma;
    const k = o.kDecay;
    if (i < o.cycleLimit) return o.lrMin + 0.5 * (lrMax - o.lrMin) * (1 + Math.cos((Math.PI * tCurr ** k) / tI ** k));
    return o.lrMin;
  };
  return makeSchedule(spec, o.perStep, o.updatesPerEpoch, getLr);
}

// ---- step -----------------------------------------------------------------------------------------

const stepDefaults = {
  decayEpochs: NaN,
  decayRate: NaN,
  warmupEpochs: 0,
  warmupLrInit: 0,
  warmupPrefix: true,
  perStep: false,
  updatesPerEpoch: null as number | null,
};

/**
 * timm's StepLRScheduler: linear warmup from warmupLrInit, then
 * `baseLr · decayRate^⌊t / decayEpochs⌋`. Defaults are the StepLRScheduler constructor's
 * (warmupPrefix true); decayRate has no default.
 */
export function step(options: StepOptions): Schedule {
  const o = checkOptions('step', options, stepDefaults, {
    decayEpochs: finite(0, true),
    decayRate: finite(0),
    warmupEpochs: finite(0),
    warmupLrInit: finite(0),
    warmupPrefix: boolean,
    perStep: boolean,
    updatesPerEpoch: optionalUpdates,
  }, ['decayEpochs', 'decayRate']);
  const spec: ScheduleSpec = { kind: 'step', options: { ...o, updatesPerEpoch: o.updatesPerEpoch ?? null } };
  const getLr = (t: number, baseLr: number, upe: number): number => {
    const warmupT = o.warmupEpochs * upe;
    if (t < warmupT) {
      const s = (baseLr - o.warmupLrInit) / warmupT;
      return o.warmupLrInit + t * s;
    }
    if (o.warmupPrefix) t = t - warmupT;
    return baseLr * o.decayRate ** Math.floor(t / (o.decayEpochs * upe));
  };
  return makeSchedule(spec, o.perStep, o.updatesPerEpoch, getLr);
}

// ---- constant -------------------------------------------------------------------------------------

/** The base lr throughout. */
export function constant(options: Record<string, never> = {}): Schedule {
  checkOptions('constant', options, {}, {}, []);
  return makeSchedule({ kind: 'constant', options: {} }, false, null, (_t, baseLr) => baseLr);
}

// ---- common ---------------------------------------------------------------------------------------

function makeSchedule(
  spec: ScheduleSpec,
  perStep: boolean,
  updatesPerEpoch: number | null,
  getLr: (t: number, baseLr: number, updatesPerEpoch: number) => number,
): Schedule {
  const frozen = JSON.parse(JSON.stringify(spec)) as ScheduleSpec;
  return Object.freeze({
    kind: spec.kind,
    perStep,
    lr(position: SchedulePosition, baseLr: number): number {
      checkBaseLr(baseLr);
      const [t, upe] = positionT(position, perStep, updatesPerEpoch);
      return getLr(t, baseLr, resolveUpdates(perStep, upe, updatesPerEpoch));
    },
    at(t: number, baseLr: number, upe?: number): number {
      checkBaseLr(baseLr);
      checkT(t, 't');
      return getLr(t, baseLr, resolveUpdates(perStep, upe, updatesPerEpoch));
    },
    toJSON(): ScheduleSpec {
      return JSON.parse(JSON.stringify(frozen)) as ScheduleSpec;
    },
  });
}

/** A schedule from its JSON (schedule.toJSON(), e.g. from a checkpoint). */
export function fromJSON(spec: ScheduleSpec): Schedule {
  if (spec === null || typeof spec !== 'object' || typeof spec.options !== 'object' || spec.options === null)
    throw new ConfigError(expected('a schedule spec { kind, options }', 'schedule', spec));
  const options = Object.fromEntries(Object.entries(spec.options).filter(([, v]) => v !== null));
  switch (spec.kind) {
    case 'cosine':
      return cosine(options as unknown as CosineOptions);
    case 'step':
      return step(options as unknown as StepOptions);
    case 'constant':
      return constant(options as Record<string, never>);
    default:
      throw new ConfigError(expected("'cosine' | 'step' | 'constant'", 'schedule kind', (spec as { kind: unknown }).kind));
  }
}
