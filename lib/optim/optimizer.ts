/**
 * AdamW and SGD over a model's flat trainable buffer, with torch.optim's semantics.
 *
 * Design: an optimizer is made from hyperparameters alone (`optim.adamw({ lr })`) and then
 * *attached* to one model (`optimizer.attach(model)`). Its state (Adam's moments, SGD's momentum)
 * lives in the model's native buffers beside the trainable parameters, which is why an optimizer
 * serves exactly one model, and a model one optimizer: attaching a second optimizer to a model
 * retires the first one (its step() then throws).
 *
 * The training loop calls `optimizer.step()` after every backward. With `accumulate: k` the
 * gradients of k micro-batches are summed by the model and the update happens on every k-th call,
 * using their mean (gradScale = 1/k), exactly like dividing each micro-batch's loss by k.
 * Gradient clipping by global L2 norm (`clipGradNorm`) follows torch.nn.utils.clip_grad_norm_:
 * the norm is that of the (averaged) gradient, and the gradient is scaled by
 * min(1, maxNorm / (norm + 1e-6)). Both scales reach the native update as one gradScale, so the
 * gradient buffer is read once. After an update the gradients are zeroed.
 *
 * Parameter groups: every trainable parameter belongs to the first of `paramGroups` whose filter
 * matches it, or to the default group (the top-level lr / weightDecay). `noDecay` removes weight
 * decay from matching parameters in any group; `noDecay: 'timm'` is timm's default (1-d tensors
 * — biases and norm weights —, `*.bias`, pos_embed and cls_token). Each group has its own lr,
 * which schedules set (`applySchedule`), and weight decay.
 *
 * Every update is one native call over the whole trainable buffer: the (offset, n, lr,
 * weightDecay) ranges are built once from the parameters' offsets, adjacent ranges with equal
 * hyperparameters merged, and rebuilt only when a group's lr or weight decay changes.
 */
import { ArgumentError, ConfigError, StateDictError, expected, formatValue } from '../errors.js';
import { call, type NativeHyper, type NativeParamInfo, type NativeViTHandle, type TrainableSet } from '../native.js';
import type { Tensor } from '../tensor.js';
import type { ParamInfo, Target, ViT } from '../vit.js';
import type { Schedule, SchedulePosition } from './schedules.js';

/** Selects parameters: a predicate, a RegExp tested on the name, or a list of names. */
export type ParamFilter = ((param: ParamInfo) => boolean) | RegExp | readonly string[];

export interface ParamGroupOptions {
  /** Which trainable parameters the group takes (the first matching group wins). */
  params: ParamFilter;
  /** A name for logs and checkpoints (default `group<i>`). */
  name?: string;
  /** Base lr of the group (default: the optimizer's lr). */
  lr?: number;
  /** Weight decay of the group (default: the optimizer's). */
  weightDecay?: number;
}

export interface OptimizerOptions {
  /** Base learning rate (schedules scale from it). */
  lr: number;
  /** Weight decay (AdamW: decoupled, p ← p·(1 − lr·wd); SGD: L2, g ← g + wd·p). */
  weightDecay?: number;
  /** Parameters without weight decay: 'timm' (timm's default rule), a filter, or false (none). */
  noDecay?: 'timm' | ParamFilter | false;
  /** Parameter groups with their own lr and weight decay. */
  paramGroups?: readonly ParamGroupOptions[];
  /** Clip the global L2 gradient norm to this value (torch.nn.utils.clip_grad_norm_); null: no clipping. */
  clipGradNorm?: number | null;
  /** Micro-batches per update (gradient accumulation); default 1. */
  accumulate?: number;
}

export interface AdamWOptions extends OptimizerOptions {
  /** Default [0.9, 0.999]. */
  betas?: readonly [number, number];
  /** Default 1e-8. */
  eps?: number;
}

export interface SgdOptions extends OptimizerOptions {
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
}

/** A resolved parameter group. `lr` and `weightDecay` may be changed between steps. */
export interface ParamGroup {
  readonly name: string;
  /** The trainable parameters of the group, by name. */
  readonly params: readonly string[];
  /** The lr the group was made with; schedules map it to `lr`. */
  baseLr: number;
  /** The lr of the next update. */
  lr: number;
  weightDecay: number;
}

/** What one step() did. */
export interface StepResult {
  /** Whether parameters were updated (false while micro-batches accumulate). */
  updated: boolean;
  /** Updates done so far (after this one). */
  step: number;
  /** L2 norm of the (averaged) gradient before clipping; only computed when clipping. */
  gradNorm?: number;
  /** The factor the raw accumulated gradient was multiplied by (1/k · clip coefficient). */
  gradScale?: number;
}

/** What one trainStep() did: the batch's loss and logits, and the update. */
export interface TrainStepResult {
  loss: number;
  /** [B, numClasses], of the training forward (dropout and drop path on). */
  logits: Tensor;
  update: StepResult;
}

/** An optimizer's complete state: what a checkpoint needs to resume exactly. */
export interface OptimizerState {
  kind: 'adamw' | 'sgd';
  /** Updates done. */
  step: number;
  /** The optimizer's hyperparameters (JSON). */
  hyper: Record<string, number | boolean | null | number[]>;
  groups: { name: string; params: string[]; baseLr: number; lr: number; weightDecay: number }[];
  /** The model's trainable set and flat layout the slots refer to. */
  trainable: TrainableSet;
  layout: { name: string; offset: number; numel: number }[];
  /** Names of the state slots (AdamW: exp_avg, exp_avg_sq; SGD with momentum: momentum_buffer). */
  slotNames: string[];
  /** One Float32Array per slot over the whole flat trainable buffer (empty before the first update). */
  slots: Float32Array[];
}

/** timm's default no-weight-decay rule (timm.optim.param_groups_weight_decay with ViT's no_weight_decay()). */
export function timmNoDecay(param: ParamInfo): boolean {
  return (
    param.shape.length <= 1 ||
    param.name.endsWith('.bias') ||
    param.role === 'norm' ||
    param.name === 'pos_embed' ||
    param.name === 'cls_token' ||
    param.name === 'dist_token'
  );
}

/** torch.nn.utils.clip_grad_norm_'s factor for a total norm: min(1, maxNorm / (norm + 1e-6)). */
export function clipCoefficient(totalNorm: number, maxNorm: number): number {
  return Math.min(1, maxNorm / (totalNorm + 1e-6));
}

interface Segment {
  offset: number;
  n: number;
  group: number;
}

const owners = new WeakMap<ViT, Optimizer>();

function matcher(filter: ParamFilter, what: string): (p: ParamInfo) => boolean {
  if (typeof filter === 'function') return filter;
  if (filter instanceof RegExp) return (p) => { filter.lastIndex = 0; return filter.test(p.name); };
  if (Array.isArray(filter) && filter.every((s) => typeof s === 'string')) {
    const names = new Set(filter as readonly string[]);
    return (p) => names.has(p.name);
  }
  throw new ConfigError(expected('a predicate, a RegExp or an array of parameter names', what, filter));
}

const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** Base class of AdamW and SGD; see the module comment for the design. */
export abstract class Optimizer {
  abstract readonly kind: 'adamw' | 'sgd';
  #lr: number;
  #weightDecay: number;
  #noDecay: ((p: ParamInfo) => boolean) | null;
  #groupOptions: readonly ParamGroupOptions[];
  #clip: number | null;
  #accumulate: number;

  #model: ViT | null = null;
  #groups: ParamGroup[] = [];
  #segments: Segment[] = [];
  #layout: OptimizerState['layout'] = [];
  #trainable: TrainableSet = 'adapters';
  #numel = 0;
  #ranges: Float64Array = new Float64Array(0);
  #rangeKey: number[] = [];
  #step = 0;
  #pending = 0;

  protected constructor(options: OptimizerOptions, known: readonly string[]) {
    const problems: string[] = [];
    if (options === null || typeof options !== 'object' || Array.isArray(options))
      throw new ConfigError(expected('an options object', 'optimizer options', options));
    const allowed = new Set(['lr', 'weightDecay', 'noDecay', 'paramGroups', 'clipGradNorm', 'accumulate', ...known]);
    for (const key of Object.keys(options)) if (!allowed.has(key)) problems.push(`unknown optimizer option ${formatValue(key)}`);
    const check = (ok: boolean, what: string, name: string, v: unknown) => {
      if (!ok) problems.push(expected(what, name, v));
    };
    const { lr, weightDecay = this.defaultWeightDecay(), noDecay = false, paramGroups = [], clipGradNorm = null, accumulate = 1 } = options;
    check(isNum(lr) && lr >= 0, 'a finite number ≥ 0', 'lr', lr);
    check(isNum(weightDecay) && weightDecay >= 0, 'a finite number ≥ 0', 'weightDecay', weightDecay);
    check(clipGradNorm === null || (isNum(clipGradNorm) && clipGradNorm > 0), 'a finite number > 0 or null', 'clipGradNorm', clipGradNorm);
    check(Number.isSafeInteger(accumulate) && accumulate >= 1, 'an integer ≥ 1', 'accumulate', accumulate);
    let noDecayFn: ((p: ParamInfo) => boolean) | null = null;
    try {
      if (noDecay === 'timm') noDecayFn = timmNoDecay;
      else if (noDecay !== false) noDecayFn = matcher(noDecay, 'noDecay');
    } catch (e) {
      problems.push((e as Error).message);
    }
    if (!Array.isArray(paramGroups)) problems.push(expected('an array of groups', 'paramGroups', paramGroups));
    else
      paramGroups.forEach((g: ParamGroupOptions, i: number) => {
        const where = `paramGroups[${i}]`;
        if (g === null || typeof g !== 'object') return problems.push(expected('a group { params, lr?, weightDecay? }', where, g));
        for (const key of Object.keys(g))
          if (!['params', 'name', 'lr', 'weightDecay'].includes(key)) problems.push(`unknown option ${formatValue(key)} in ${where}`);
        try {
          matcher(g.params, `${where}.params`);
        } catch (e) {
          problems.push((e as Error).message);
        }
        if (g.name !== undefined) check(typeof g.name === 'string' && g.name !== '', 'a non-empty string', `${where}.name`, g.name);
        if (g.lr !== undefined) check(isNum(g.lr) && g.lr >= 0, 'a finite number ≥ 0', `${where}.lr`, g.lr);
        if (g.weightDecay !== undefined)
          check(isNum(g.weightDecay) && g.weightDecay >= 0, 'a finite number ≥ 0', `${where}.weightDecay`, g.weightDecay);
      });
    problems.push(...this.checkHyper(options));
    if (problems.length === 1) throw new ConfigError(problems[0]);
    if (problems.length) throw new ConfigError(`invalid ${this.constructor.name} options:\n  ${problems.join('\n  ')}`);
    this.#lr = lr;
    this.#weightDecay = weightDecay;
    this.#noDecay = noDecayFn;
    this.#groupOptions = paramGroups.map((g) => ({ ...g }));
    this.#clip = clipGradNorm;
    this.#accumulate = accumulate;
  }

  // ---- what subclasses provide --------------------------------------------------------------------

  protected abstract defaultWeightDecay(): number;
  /** Problems with the subclass's own options (standard messages). */
  protected abstract checkHyper(options: OptimizerOptions): string[];
  /** State slots the update uses (with the given hyperparameters, else the current ones). */
  protected abstract slotNames(hyper?: Record<string, unknown>): string[];
  /** One fused native update over `ranges`. */
  /** The native kind and hyperparameters of update number `step` (from 1) on gradients scaled by gradScale. */
  protected abstract nativeHyper(step: number, gradScale: number): NativeHyper;
  /** Subclass hyperparameters as JSON. */
  protected abstract hyper(): Record<string, number | boolean | number[]>;
  protected abstract setHyper(h: Record<string, unknown>): void;

  // ---- binding --------------------------------------------------------------------------------------

  /**
   * Binds the optimizer to a model: resolves the parameter groups over its trainable parameters
   * and starts from fresh state (step 0, zero moments). A model has one optimizer at a time;
   * attaching retires the optimizer attached before. Returns this.
   */
  attach(model: ViT): this {
    if (model === null || typeof model !== 'object' || typeof (model as ViT).handle !== 'function')
      throw new ArgumentError(expected('a ViT', 'model', model));
    const handle = model.handle();
    const params = call(() => handle.params()).filter((p) => p.trainable);
    const groups = this.#resolveGroups(params);
    this.#bind(model, handle, params, groups);
    this.#step = 0;
    this.#pending = 0;
    // Fresh state: zero what a previous optimizer of this model may have left.
    this.#resetSlots(handle);
    return this;
  }

  /** The model this optimizer is attached to, if any. */
  get model(): ViT | null {
    return this.#model;
  }

  /** The parameter groups (after attach). Their lr and weightDecay may be changed between steps. */
  get groups(): readonly ParamGroup[] {
    return this.#groups;
  }

  /** Updates done. */
  get stepCount(): number {
    return this.#step;
  }

  /** Micro-batches accumulated since the last update. */
  get pending(): number {
    return this.#pending;
  }

  get accumulate(): number {
    return this.#accumulate;
  }

  get clipGradNorm(): number | null {
    return this.#clip;
  }

  /** The lr of the first group (or the base lr before attach). */
  get lr(): number {
    return this.#groups[0]?.lr ?? this.#lr;
  }

  /** Sets every group's lr: a number, or a function of the group (e.g. of its baseLr). */
  setLr(lr: number | ((group: ParamGroup) => number)): void {
    this.#attached();
    for (const g of this.#groups) {
      const v = typeof lr === 'function' ? lr(g) : lr;
      if (!isNum(v) || v < 0) throw new ArgumentError(expected('a finite number ≥ 0', `lr of group ${g.name}`, v));
      g.lr = v;
    }
  }

  /** Sets every group's lr to `schedule.lr(position, group.baseLr)` (timm's update_groups). */
  applySchedule(schedule: Schedule, position: SchedulePosition): void {
    if (schedule === null || typeof schedule !== 'object' || typeof schedule.lr !== 'function')
      throw new ArgumentError(expected('a Schedule', 'schedule', schedule));
    this.setLr((g) => schedule.lr(position, g.baseLr));
  }

  // ---- stepping -------------------------------------------------------------------------------------

  /**
   * Call after every backward. Updates the parameters on every `accumulate`-th call (then zeroes
   * the gradients); otherwise only counts the micro-batch.
   */
  step(): StepResult {
    const handle = this.#attached();
    this.#pending++;
    if (this.#pending < this.#accumulate) return { updated: false, step: this.#step };
    return this.#update(handle);
  }

  /**
   * Updates with the micro-batches accumulated so far (their mean), e.g. at the end of an epoch
   * whose batch count is not a multiple of `accumulate`. Does nothing when none are pending.
   */
  flush(): StepResult {
    const handle = this.#attached();
    if (this.#pending === 0) return { updated: false, step: this.#step };
    return this.#update(handle);
  }

  /** Drops the accumulated micro-batches and zeroes the model's gradients. */
  zeroGrad(): void {
    const handle = this.#attached();
    call(() => handle.zeroGrad());
    this.#pending = 0;
  }

  #update(handle: NativeViTHandle): StepResult {
    let gradScale = 1 / this.#pending;
    let gradNorm: number | undefined;
    if (this.#clip !== null) {
      gradNorm = Math.sqrt(call(() => handle.gradSumSquares())) * gradScale;
      gradScale *= clipCoefficient(gradNorm, this.#clip);
    }
    const ranges = this.#currentRanges();
    const step = this.#step + 1;
    if (this.#numel > 0) {
      const update = this.nativeHyper(step, gradScale);
      if (update.kind === 'adamw') call(() => handle.adamwStep(ranges, update.hyper));
      else call(() => handle.sgdStep(ranges, update.hyper));
    }
    this.#step = step;
    this.#pending = 0;
    call(() => handle.zeroGrad());
    return { updated: true, step, gradScale, ...(gradNorm !== undefined ? { gradNorm } : {}) };
  }

  /**
   * A whole training step in one native call: the model's forward on `images` (in training
   * mode), the loss against `target`, backward, this optimizer's update (clipping included) and
   * zeroed gradients — the same arithmetic as forward(), backward() and step() in turn. On a CUDA
   * model with `cudaGraphs`, the step is recorded once per shape and replayed as one graph.
   * Needs `accumulate: 1` and no pending micro-batches.
   */
  async trainStep(images: Tensor, target: Target): Promise<TrainStepResult> {
    this.#attached();
    const model = this.#model!;
    if (this.#accumulate !== 1)
      throw new ArgumentError(`trainStep updates every batch: it needs accumulate 1, this optimizer has ${this.#accumulate}`);
    if (this.#pending > 0)
      throw new ArgumentError(`trainStep cannot start with ${this.#pending} micro-batch(es) pending: call flush() or zeroGrad() first`);
    const ranges = this.#currentRanges();
    const step = this.#step + 1;
    const clipMaxNorm = this.#clip ?? 0;
    const result = await model.trainStepAsync(images, target, { ...this.nativeHyper(step, 1), ranges, clipMaxNorm });
    this.#step = step;
    const { gradNorm } = result;
    const gradScale = gradNorm !== undefined ? clipCoefficient(gradNorm, clipMaxNorm) : 1;
    return {
      loss: result.loss,
      logits: result.logits,
      update: { updated: true, step, gradScale, ...(gradNorm !== undefined ? { gradNorm } : {}) },
    };
  }

  /** The ranges for the current group hyperparameters; rebuilt only when they changed. */
  #currentRanges(): Float64Array {
    const key = this.#groups.flatMap((g) => [g.lr, g.weightDecay]);
    if (key.length === this.#rangeKey.length && key.every((v, i) => v === this.#rangeKey[i])) return this.#ranges;
    for (const g of this.#groups) {
      if (!isNum(g.lr) || g.lr < 0) throw new ArgumentError(expected('a finite number ≥ 0', `lr of group ${g.name}`, g.lr));
      if (!isNum(g.weightDecay) || g.weightDecay < 0)
        throw new ArgumentError(expected('a finite number ≥ 0', `weightDecay of group ${g.name}`, g.weightDecay));
    }
    const quads: number[] = [];
    for (const s of this.#segments) {
      const { lr, weightDecay } = this.#groups[s.group];
      const last = quads.length - 4;
      if (last >= 0 && quads[last] + quads[last + 1] === s.offset && quads[last + 2] === lr && quads[last + 3] === weightDecay)
        quads[last + 1] += s.n;
      else quads.push(s.offset, s.n, lr, weightDecay);
    }
    this.#ranges = Float64Array.from(quads);
    this.#rangeKey = key;
    return this.#ranges;
  }

  // ---- state ----------------------------------------------------------------------------------------

  /** The complete state (copies). Not in the middle of an accumulation: grads are not part of it. */
  state(): OptimizerState {
    const handle = this.#attached();
    if (this.#pending > 0)
      throw new ArgumentError(
        `cannot take the optimizer state in the middle of gradient accumulation (${this.#pending} of ${this.#accumulate} micro-batches pending): take it after an update`,
      );
    const slotNames = this.slotNames();
    const slots: Float32Array[] = [];
    if (this.#step > 0 && this.#numel > 0)
      for (let k = 0; k < slotNames.length; k++) {
        const s = call(() => handle.getOptimizerState(k as 0 | 1));
        if (!s) throw new ArgumentError(`the model has no optimizer state in slot ${k} (${slotNames[k]}) after ${this.#step} updates`);
        slots.push(s);
      }
    return {
      kind: this.kind,
      step: this.#step,
      hyper: this.hyperparameters(),
      groups: this.#groups.map((g) => ({ name: g.name, params: [...g.params], baseLr: g.baseLr, lr: g.lr, weightDecay: g.weightDecay })),
      trainable: this.#trainable,
      layout: this.#layout.map((l) => ({ ...l })),
      slotNames,
      slots,
    };
  }

  /**
   * Restores a state() into this optimizer and its model (attach first): step count,
   * hyperparameters, groups (their members, lrs and weight decays, as saved) and the state slots.
   * As torch's load_state_dict, the saved hyperparameters replace this optimizer's. Everything
   * is checked before anything changes.
   */
  loadState(state: OptimizerState): void {
    const handle = this.#attached();
    if (state === null || typeof state !== 'object') throw new ArgumentError(expected('an optimizer state', 'state', state));
    if (state.kind !== this.kind)
      throw new ArgumentError(expected(`the state of a ${this.kind} optimizer`, 'state.kind', state.kind));
    if (!Number.isSafeInteger(state.step) || state.step < 0) throw new ArgumentError(expected('an integer ≥ 0', 'state.step', state.step));
    // The flat layout must be the model's.
    const mine = new Map(this.#layout.map((l) => [l.name, l]));
    const theirs = new Map((state.layout ?? []).map((l) => [l.name, l]));
    const missing = [...mine.keys()].filter((n) => !theirs.has(n));
    const unexpected = [...theirs.keys()].filter((n) => !mine.has(n));
    const misshaped = [...theirs.values()]
      .filter((l) => mine.has(l.name) && (mine.get(l.name)!.numel !== l.numel || mine.get(l.name)!.offset !== l.offset))
      .map((l) => ({ name: l.name, expected: [mine.get(l.name)!.numel], got: [l.numel] }));
    if (missing.length || unexpected.length || misshaped.length)
      throw new StateDictError({ missing, unexpected, misshaped }, { context: 'the optimizer state with the model' });
    const hyper = state.hyper ?? {};
    this.#checkStateHyper(hyper);
    const slotNames = this.slotNames(hyper);
    const wanted = state.step > 0 ? slotNames.length : 0;
    if (!Array.isArray(state.slots) || (state.slots.length !== wanted && state.slots.length !== slotNames.length))
      throw new ArgumentError(expected(`${slotNames.length} state slots (${slotNames.join(', ') || 'none'})`, 'state.slots', state.slots));
    // Slots cover the model's flat trainable buffer (tensors padded for alignment); the native
    // layer checks their exact length when they are set.
    const extent = Math.max(0, ...this.#layout.map((l) => l.offset + l.numel));
    state.slots.forEach((s, k) => {
      if (!(s instanceof Float32Array) || s.length < extent || s.length !== state.slots[0].length)
        throw new ArgumentError(expected(`a Float32Array over the flat trainable buffer (≥ ${extent} values)`, `state.slots[${k}]`, s));
    });
    // Groups: every trainable parameter in exactly one.
    const params = call(() => handle.params()).filter((p) => p.trainable);
    const groupOf = new Map<string, number>();
    const groups: ParamGroup[] = [];
    if (!Array.isArray(state.groups)) throw new ArgumentError(expected('an array of groups', 'state.groups', state.groups));
    state.groups.forEach((g, i) => {
      for (const [v, name] of [[g.lr, 'lr'], [g.baseLr, 'baseLr'], [g.weightDecay, 'weightDecay']] as const)
        if (!isNum(v) || v < 0) throw new ArgumentError(expected('a finite number ≥ 0', `state.groups[${i}].${name}`, v));
      for (const n of g.params) {
        if (!mine.has(n) || groupOf.has(n))
          throw new ArgumentError(expected('each trainable parameter in one group', `state.groups[${i}].params`, n));
        groupOf.set(n, i);
      }
      groups.push({ name: String(g.name), params: [...g.params], baseLr: g.baseLr, lr: g.lr, weightDecay: g.weightDecay });
    });
    const ungrouped = [...mine.keys()].filter((n) => !groupOf.has(n));
    if (ungrouped.length) throw new ArgumentError(expected('each trainable parameter in one group', 'state.groups', ungrouped));

    // All checked: apply, the state slots first (the native layer checks their size).
    if (this.#numel > 0 && state.slots.length > 0)
      for (let k = 0; k < state.slots.length; k++) call(() => handle.setOptimizerState(k as 0 | 1, state.slots[k]));
    else this.#resetSlots(handle);
    this.setHyper(hyper);
    this.#clip = (hyper.clipGradNorm as number | null | undefined) ?? null;
    this.#accumulate = (hyper.accumulate as number | undefined) ?? 1;
    this.#lr = hyper.lr as number;
    this.#weightDecay = hyper.weightDecay as number;
    this.#bind(this.#model!, handle, params, { groups, groupOf: params.map((p) => groupOf.get(p.name)!) });
    this.#step = state.step;
    this.#pending = 0;
  }

  /** All hyperparameters as JSON (the common ones and the subclass's). */
  hyperparameters(): OptimizerState['hyper'] {
    return {
      lr: this.#lr,
      weightDecay: this.#weightDecay,
      clipGradNorm: this.#clip,
      accumulate: this.#accumulate,
      ...this.hyper(),
    };
  }

  #checkStateHyper(h: Record<string, unknown>): void {
    const { lr, weightDecay, clipGradNorm = null, accumulate = 1, ...rest } = h;
    const problems = this.checkHyper({ lr: lr as number, weightDecay: weightDecay as number, ...rest } as OptimizerOptions);
    if (!isNum(lr) || lr < 0) problems.push(expected('a finite number ≥ 0', 'state.hyper.lr', lr));
    if (!isNum(weightDecay) || weightDecay < 0) problems.push(expected('a finite number ≥ 0', 'state.hyper.weightDecay', weightDecay));
    if (clipGradNorm !== null && !(isNum(clipGradNorm) && clipGradNorm > 0))
      problems.push(expected('a finite number > 0 or null', 'state.hyper.clipGradNorm', clipGradNorm));
    if (!(Number.isSafeInteger(accumulate) && (accumulate as number) >= 1))
      problems.push(expected('an integer ≥ 1', 'state.hyper.accumulate', accumulate));
    if (problems.length) throw new ArgumentError(`invalid optimizer state: ${problems.join('; ')}`);
  }

  // ---- internals --------------------------------------------------------------------------------------

  #attached(): NativeViTHandle {
    const model = this.#model;
    if (!model) throw new ArgumentError('this optimizer is not attached to a model: call optimizer.attach(model) first');
    if (owners.get(model) !== this)
      throw new ArgumentError('another optimizer was attached to this model since; this one is retired (attach it again to use it)');
    const handle = model.handle();
    const trainable = call(() => handle.config().trainable);
    const numel = call(() => handle.trainableCount());
    if (trainable !== this.#trainable || numel !== this.#numel)
      throw new ArgumentError(
        `the model's trainable set changed since the optimizer was attached (${this.#trainable}, ${this.#numel} values → ${trainable}, ${numel}); attach the optimizer again`,
      );
    return handle;
  }

  /** Zeroes the state slots a previous optimizer of the model may have left (none yet: nothing to do). */
  #resetSlots(handle: NativeViTHandle): void {
    for (const k of [0, 1] as const) {
      const s = call(() => handle.getOptimizerState(k));
      if (s) call(() => handle.setOptimizerState(k, new Float32Array(s.length)));
    }
  }

  #resolveGroups(params: NativeParamInfo[]): { groups: ParamGroup[]; groupOf: number[] } {
    const userMatch = this.#groupOptions.map((g, i) => matcher(g.params, `paramGroups[${i}].params`));
    // Internal groups: (user group or default) × (decay or not), in a stable order.
    const groups: ParamGroup[] = [];
    const index = new Map<string, number>();
    const groupOf: number[] = [];
    for (const p of params) {
      const info: ParamInfo = Object.freeze({ name: p.name, shape: Object.freeze([...p.shape]), role: p.role, trainable: p.trainable });
      const u = userMatch.findIndex((m) => m(info));
      const opts = u >= 0 ? this.#groupOptions[u] : undefined;
      const base = opts?.name ?? (u >= 0 ? `group${u}` : 'default');
      const noDecay = this.#noDecay?.(info) ?? false;
      const key = `${u}:${noDecay}`;
      let gi = index.get(key);
      if (gi === undefined) {
        const lr = opts?.lr ?? this.#lr;
        gi = groups.length;
        index.set(key, gi);
        groups.push({
          name: this.#noDecay ? `${base}${noDecay ? '.no_decay' : '.decay'}` : base,
          params: [],
          baseLr: lr,
          lr,
          weightDecay: noDecay ? 0 : (opts?.weightDecay ?? this.#weightDecay),
        });
      }
      (groups[gi].params as string[]).push(p.name);
      groupOf.push(gi);
    }
    return { groups, groupOf };
  }

  #bind(model: ViT, handle: NativeViTHandle, params: NativeParamInfo[], resolved: { groups: ParamGroup[]; groupOf: number[] }): void {
    const order = params.map((p, i) => ({ p, g: resolved.groupOf[i] })).sort((a, b) => a.p.offset - b.p.offset);
    const segments: Segment[] = [];
    for (const [j, { p, g }] of order.entries()) {
      // Up to the next tensor: the gap is alignment padding of this one (zero gradient, never read),
      // and covering it lets neighbours merge into one range.
      const next = order[j + 1]?.p.offset;
      const n = next !== undefined ? next - p.offset : p.shape.reduce((a, b) => a * b, 1);
      const last = segments[segments.length - 1];
      if (last && last.group === g && last.offset + last.n === p.offset) last.n += n;
      else segments.push({ offset: p.offset, n, group: g });
    }
    this.#model = model;
    owners.set(model, this);
    this.#groups = resolved.groups;
    this.#segments = segments;
    this.#layout = params.map((p) => ({ name: p.name, offset: p.offset, numel: p.shape.reduce((a, b) => a * b, 1) }));
    this.#trainable = call(() => handle.config().trainable);
    this.#numel = call(() => handle.trainableCount());
    this.#rangeKey = [];
  }
}

// ---- AdamW ----------------------------------------------------------------------------------------

/** torch.optim.AdamW (amsgrad off, not maximize): decoupled weight decay, bias-corrected moments. */
export class AdamW extends Optimizer {
  readonly kind = 'adamw' as const;
  #beta1 = 0.9;
  #beta2 = 0.999;
  #eps = 1e-8;

  constructor(options: AdamWOptions) {
    super(options, ['betas', 'eps']);
    const [b1, b2] = options.betas ?? [0.9, 0.999];
    this.#beta1 = b1;
    this.#beta2 = b2;
    this.#eps = options.eps ?? 1e-8;
  }

  get betas(): readonly [number, number] {
    return [this.#beta1, this.#beta2];
  }

  get eps(): number {
    return this.#eps;
  }

  protected defaultWeightDecay(): number {
    return 0.01; // torch.optim.AdamW's default
  }

  protected checkHyper(o: AdamWOptions): string[] {
    const problems: string[] = [];
    const betas = o.betas ?? [0.9, 0.999];
    if (!Array.isArray(betas) || betas.length !== 2 || !betas.every((b) => isNum(b) && b >= 0 && b < 1))
      problems.push(expected('two numbers in [0, 1)', 'betas', betas));
    const eps = o.eps ?? 1e-8;
    if (!isNum(eps) || eps < 0) problems.push(expected('a finite number ≥ 0', 'eps', eps));
    return problems;
  }

  protected slotNames(): string[] {
    return ['exp_avg', 'exp_avg_sq'];
  }

  protected nativeHyper(step: number, gradScale: number): NativeHyper {
    return { kind: 'adamw', hyper: { beta1: this.#beta1, beta2: this.#beta2, eps: this.#eps, step, gradScale } };
  }

  protected hyper(): Record<string, number | boolean | number[]> {
    return { betas: [this.#beta1, this.#beta2], eps: this.#eps };
  }

  protected setHyper(h: Record<string, unknown>): void {
    const betas = (h.betas as number[] | undefined) ?? [0.9, 0.999];
    this.#beta1 = betas[0];
    this.#beta2 = betas[1];
    this.#eps = (h.eps as number | undefined) ?? 1e-8;
  }
}

// ---- SGD ------------------------------------------------------------------------------------------

/** torch.optim.SGD: L2 weight decay added to the gradient, momentum with dampening, Nesterov. */
export class SGD extends Optimizer {
  readonly kind = 'sgd' as const;
  #momentum = 0;
  #dampening = 0;
  #nesterov = false;

  constructor(options: SgdOptions) {
    super(options, ['momentum', 'dampening', 'nesterov']);
    this.#momentum = options.momentum ?? 0;
    this.#dampening = options.dampening ?? 0;
    this.#nesterov = options.nesterov ?? false;
  }

  get momentum(): number {
    return this.#momentum;
  }

  get dampening(): number {
    return this.#dampening;
  }

  get nesterov(): boolean {
    return this.#nesterov;
  }

  protected defaultWeightDecay(): number {
    return 0; // torch.optim.SGD's default
  }

  protected checkHyper(o: SgdOptions): string[] {
    const problems: string[] = [];
    const { momentum = 0, dampening = 0, nesterov = false } = o;
    if (!isNum(momentum) || momentum < 0) problems.push(expected('a finite number ≥ 0', 'momentum', momentum));
    if (!isNum(dampening)) problems.push(expected('a finite number', 'dampening', dampening));
    if (typeof nesterov !== 'boolean') problems.push(expected('true or false', 'nesterov', nesterov));
    else if (nesterov && !(momentum > 0 && dampening === 0))
      problems.push(expected('momentum > 0 and dampening 0', 'nesterov', { momentum, dampening }));
    return problems;
  }

  protected slotNames(hyper?: Record<string, unknown>): string[] {
    const momentum = hyper ? ((hyper.momentum as number | undefined) ?? 0) : this.#momentum;
    return momentum !== 0 ? ['momentum_buffer'] : [];
  }

  protected nativeHyper(step: number, gradScale: number): NativeHyper {
    // The momentum buffer starts as the first gradient (torch: buf = clone(d_p)) on the first update.
    const hyper = { momentum: this.#momentum, dampening: this.#dampening, nesterov: this.#nesterov, first: step === 1, gradScale };
    return { kind: 'sgd', hyper };
  }

  protected hyper(): Record<string, number | boolean | number[]> {
    return { momentum: this.#momentum, dampening: this.#dampening, nesterov: this.#nesterov };
  }

  protected setHyper(h: Record<string, unknown>): void {
    this.#momentum = (h.momentum as number | undefined) ?? 0;
    this.#dampening = (h.dampening as number | undefined) ?? 0;
    this.#nesterov = (h.nesterov as boolean | undefined) ?? false;
  }
}

/** torch.optim.AdamW's defaults: betas [0.9, 0.999], eps 1e-8, weightDecay 0.01. */
export function adamw(options: AdamWOptions): AdamW {
  return new AdamW(options);
}

/** torch.optim.SGD's defaults: momentum 0, dampening 0, weightDecay 0, nesterov false. */
export function sgd(options: SgdOptions): SGD {
  return new SGD(options);
}
