/**
 * Optimizers (AdamW, SGD with torch.optim semantics) and learning-rate schedules (timm semantics).
 *
 * ```ts
 * import { optim, schedules } from 'repadapter';
 * const optimizer = optim.adamw({ lr: 1e-3, weightDecay: 1e-4, noDecay: 'timm', clipGradNorm: 1 }).attach(model);
 * const schedule = schedules.cosine({ epochs: 100, warmupEpochs: 10, lrMin: 1e-5, warmupLrInit: 1e-6 });
 * ```
 */
export {
  adamw,
  sgd,
  AdamW,
  SGD,
  Optimizer,
  timmNoDecay,
  clipCoefficient,
  type AdamWOptions,
  type SgdOptions,
  type OptimizerOptions,
  type ParamGroupOptions,
  type ParamGroup,
  type ParamFilter,
  type StepResult,
  type TrainStepResult,
  type OptimizerState,
} from './optimizer.js';
export type { Schedule, SchedulePosition, ScheduleSpec, CosineOptions, StepOptions } from './schedules.js';
