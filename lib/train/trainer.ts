/**
 * Trainer: the paper's training loop over the package's pieces. One epoch = the loader's
 * batches, each one Optimizer.trainStep (forward, backward and update in one native call on the
 * addon's compute thread; with gradient accumulation, forward and backward per micro-batch and an
 * update every k); the schedule sets the lr before each update; evaluation every N epochs; checkpoints
 * through a keeper (last k and the best), a JSON-lines log, a progress line, and a plot at the end.
 *
 * Stopping: SIGINT / SIGTERM finish the step in flight, save a checkpoint (with the exact data
 * position, so a resume continues mid-epoch) and return with `interrupted`. A non-finite loss
 * stops the run with NonFiniteLossError before anything is saved, so the last good checkpoint
 * stays the newest (the model in memory has taken that step's update).
 */
import { appendFile, mkdir } from 'node:fs/promises';
import path from 'node:path';

import { loader as makeLoader, type DataLoader } from '../data/loader.js';
import type { ImageDataset } from '../data/dataset.js';
import type { AugmentOptions, MixupOptions, Normalize } from '../data/transforms.js';
import { ArgumentError, RepAdapterError, expected } from '../errors.js';
import type { Optimizer } from '../optim/optimizer.js';
import type { Schedule } from '../optim/schedules.js';
import type { ViT } from '../vit.js';
import { CheckpointKeeper, loadCheckpoint } from './checkpoint.js';
import { Progress } from './progress.js';
import { writePlot } from './plot.js';

/** The loss became NaN or infinite: training stopped, nothing was saved after the last good step. */
export class NonFiniteLossError extends RepAdapterError {}

export interface TrainerOptions {
  /** Attached to the model by the trainer. */
  optimizer: Optimizer;
  /** Sets the lr before every update (timm semantics); default constant. */
  schedule?: Schedule | null;
}

export interface FitOptions {
  epochs: number;
  batchSize: number;
  /** Evaluated every `evalEvery` epochs and after the last. */
  eval?: ImageDataset | null;
  evalEvery?: number;
  /** Seed of the data order and augmentations (the model's own seed drives dropout). */
  seed?: number;
  labelSmoothing?: number;
  augment?: AugmentOptions | boolean;
  mixup?: MixupOptions | boolean;
  normalize?: Normalize;
  dropLast?: boolean;
  /** Checkpoints here (keeper: last `keepLast` and the best by eval top-1). */
  checkpointDir?: string | null;
  keepLast?: number;
  /** Resume from the newest checkpoint in checkpointDir when there is one. */
  resume?: boolean;
  /** Identifies the frozen base weights; a resume onto other weights is refused. */
  baseFingerprint?: string | null;
  /** JSON-lines log file (one record per step, epoch and evaluation). */
  logFile?: string | null;
  /** An SVG of loss and accuracy per epoch, written at the end. */
  plotFile?: string | null;
  /** 'auto': a bar on a terminal, plain lines otherwise. */
  progress?: 'auto' | 'bar' | 'lines' | 'none';
  /** Stop (as on SIGINT) when this signal aborts. */
  signal?: AbortSignal;
  /** Handle SIGINT / SIGTERM (default true). */
  handleSignals?: boolean;
}

export interface EpochRecord {
  epoch: number;
  loss: number;
  lr: number;
  imagesPerSecond: number;
  seconds: number;
  eval?: EvalResult;
}

export interface EvalResult {
  top1: number;
  loss: number;
  images: number;
}

export interface FitResult {
  epochs: EpochRecord[];
  best: EvalResult | null;
  interrupted: boolean;
  /** The checkpoint written last (null without checkpointDir). */
  checkpoint: string | null;
}

interface Partial {
  epoch: number;
  lossSum: number;
  steps: number;
  images: number;
  seconds: number;
}

function positiveInt(v: unknown, name: string): number {
  if (!Number.isSafeInteger(v) || (v as number) < 1) throw new ArgumentError(expected('a positive integer', name, v));
  return v as number;
}

export class Trainer {
  readonly model: ViT;
  readonly optimizer: Optimizer;
  readonly schedule: Schedule | null;

  constructor(model: ViT, options: TrainerOptions) {
    if (!options || typeof options !== 'object' || !options.optimizer)
      throw new ArgumentError(expected('{ optimizer, schedule? }', 'trainer options', options));
    this.model = model;
    this.optimizer = options.optimizer.attach(model);
    this.schedule = options.schedule ?? null;
  }

  /** Top-1 accuracy and mean cross-entropy (no smoothing) in eval mode. */
  async evaluate(dataset: ImageDataset, options: { batchSize?: number; normalize?: Normalize } = {}): Promise<EvalResult> {
    if (dataset.numClasses > this.model.config.numClasses)
      throw new ArgumentError(
        `the dataset has ${dataset.numClasses} classes but the model's head ${this.model.config.numClasses}: ` +
          'evaluate on data of the task the model was trained for',
      );
    const batches = makeLoader(dataset, { batchSize: options.batchSize ?? 64, normalize: options.normalize });
    const wasTraining = this.model.training;
    this.model.eval();
    let correct = 0;
    let lossSum = 0;
    let images = 0;
    try {
      for await (const batch of batches) {
        using _ = batch;
        using logits = await this.model.forwardAsync(batch.images);
        const values = logits.toArray();
        const C = logits.shape[1];
        for (let b = 0; b < batch.labels.length; b++) {
          const row = values.subarray(b * C, (b + 1) * C);
          let best = 0;
          let max = -Infinity;
          for (let c = 0; c < C; c++) if (row[c] > max) { max = row[c]; best = c; }
          let sum = 0;
          for (let c = 0; c < C; c++) sum += Math.exp(row[c] - max);
          lossSum += Math.log(sum) + max - row[batch.labels[b]];
          if (best === batch.labels[b]) correct++;
        }
        images += batch.labels.length;
        if (batches.position >= batches.length) break;
      }
    } finally {
      if (wasTraining) this.model.train();
    }
    return { top1: correct / images, loss: lossSum / images, images };
  }

  async fit(train: ImageDataset, options: FitOptions): Promise<FitResult> {
    const epochs = positiveInt(options.epochs, 'epochs');
    const batchSize = positiveInt(options.batchSize, 'batchSize');
    const evalEvery = positiveInt(options.evalEvery ?? 1, 'evalEvery');
    const smoothing = options.labelSmoothing ?? 0;
    if (typeof smoothing !== 'number' || !(smoothing >= 0 && smoothing < 1))
      throw new ArgumentError(expected('a number in [0, 1)', 'labelSmoothing', smoothing));
    if (options.eval && options.eval.numClasses > this.model.config.numClasses)
      throw new ArgumentError(`the evaluation set has ${options.eval.numClasses} classes, the model ${this.model.config.numClasses}`);
    if (train.numClasses > this.model.config.numClasses)
      throw new ArgumentError(`the training set has ${train.numClasses} classes, the model's head ${this.model.config.numClasses}`);

    const keeper = options.checkpointDir
      ? await CheckpointKeeper.open(options.checkpointDir, { keepLast: options.keepLast ?? 2, best: { metric: 'top1', mode: 'max' } })
      : null;
    let loaderState: { epoch: number; position: number } | undefined;
    // The running sums of an epoch that a stop cut in two, so its record comes out whole.
    let partial: Partial | null = null;
    let startEpoch = 0;
    const history: EpochRecord[] = [];
    let best: EvalResult | null = null;
    if (options.resume && keeper) {
      const latest = await keeper.latest();
      if (latest) {
        const ckpt = await loadCheckpoint(latest.path, {
          model: this.model,
          optimizer: this.optimizer,
          ...(options.baseFingerprint ? { fingerprint: options.baseFingerprint } : {}),
        });
        loaderState = ckpt.dataState as { epoch: number; position: number };
        startEpoch = ckpt.position.epoch;
        const extra = ckpt.extra as { history?: EpochRecord[]; best?: EvalResult | null; partial?: Partial } | null;
        history.push(...(extra?.history ?? []));
        best = extra?.best ?? null;
        partial = extra?.partial ?? null;
      }
    }

    const batches: DataLoader = makeLoader(train, {
      batchSize,
      shuffle: true,
      seed: options.seed ?? 0,
      dropLast: options.dropLast ?? false,
      augment: options.augment,
      mixup: options.mixup,
      normalize: options.normalize,
      ...(loaderState ? { state: loaderState } : {}),
    });
    const updatesPerEpoch = batches.length;
    const progress = new Progress(options.progress ?? 'auto', epochs, updatesPerEpoch);
    if (options.logFile) await mkdir(path.dirname(path.resolve(options.logFile)), { recursive: true });
    const log = options.logFile
      ? (record: object) => appendFile(options.logFile!, `${JSON.stringify({ time: new Date().toISOString(), ...record })}\n`)
      : async () => {};

    // Stopping on request: finish the step in flight, then save and return.
    let stop = false;
    const request = () => {
      if (!stop) progress.note('stopping after this step (press again to stop at once)');
      else process.exit(130);
      stop = true;
    };
    const handleSignals = options.handleSignals ?? true;
    if (handleSignals) {
      process.on('SIGINT', request);
      process.on('SIGTERM', request);
    }
    options.signal?.addEventListener('abort', request, { once: true });

    let checkpoint: string | null = null;
    const save = async (epochsDone: number, metrics?: Record<string, number>, cut?: Partial) => {
      if (!keeper) return;
      checkpoint = await keeper.save({
        model: this.model,
        optimizer: this.optimizer,
        schedule: this.schedule,
        position: { epoch: epochsDone, update: this.optimizer.stepCount },
        dataState: batches.state(),
        baseFingerprint: options.baseFingerprint ?? null,
        metrics,
        extra: { history, best, ...(cut ? { partial: cut } : {}) },
      });
    };

    this.model.train();
    let interrupted = false;
    try {
      for (let epoch = startEpoch; epoch < epochs && !stop; epoch++) {
        const resumed = partial?.epoch === epoch ? partial : null;
        partial = null;
        const started = performance.now() - (resumed?.seconds ?? 0) * 1000;
        let lossSum = resumed?.lossSum ?? 0;
        let steps = resumed?.steps ?? 0;
        let images = resumed?.images ?? 0;
        let lr = 0;
        progress.startEpoch(epoch, batches.position);
        for await (const batch of batches) {
          using _ = batch;
          if (this.schedule)
            this.optimizer.applySchedule(this.schedule, { epoch, update: this.optimizer.stepCount, updatesPerEpoch });
          lr = this.optimizer.lr;
          const target = batch.softTargets ? { softTargets: batch.softTargets } : { labels: batch.labels, labelSmoothing: smoothing };
          // One native call per batch where each batch updates (on a GPU with cudaGraphs, one
          // recorded graph); accumulation needs the loss of each micro-batch on its own.
          const fused = this.optimizer.accumulate === 1;
          let loss: number;
          if (fused) {
            const result = await this.optimizer.trainStep(batch.images, target);
            result.logits.dispose();
            loss = result.loss;
          } else {
            const logits = await this.model.forwardAsync(batch.images);
            logits.dispose();
            loss = await this.model.backwardAsync(target);
          }
          if (!Number.isFinite(loss)) {
            await log({ type: 'error', epoch, step: batch.index, loss: String(loss) });
            throw new NonFiniteLossError(
              `the loss became ${loss} at epoch ${epoch + 1}, step ${batch.index + 1} (lr ${lr.toExponential(3)}); ` +
                'training stopped and nothing was saved after the last good checkpoint. A lower lr or clipGradNorm may help.',
            );
          }
          if (!fused) this.optimizer.step();
          lossSum += loss;
          steps++;
          images += batch.labels.length;
          const seconds = (performance.now() - started) / 1000;
          progress.step(batch.index + 1, loss, lr, images / seconds);
          await log({ type: 'step', epoch, step: batch.index, update: this.optimizer.stepCount, loss, lr });
          if (stop) break;
          if (batches.position >= batches.length) break;
        }
        if (stop && batches.position < batches.length) {
          interrupted = true;
          await save(epoch, undefined, { epoch, lossSum, steps, images, seconds: (performance.now() - started) / 1000 });
          break;
        }
        const seconds = (performance.now() - started) / 1000;
        const record: EpochRecord = { epoch, loss: lossSum / Math.max(steps, 1), lr, imagesPerSecond: images / seconds, seconds };
        const last = epoch + 1 === epochs;
        if (options.eval && ((epoch + 1) % evalEvery === 0 || last)) {
          record.eval = await this.evaluate(options.eval, { batchSize, normalize: options.normalize });
          if (!best || record.eval.top1 > best.top1) best = record.eval;
          await log({ type: 'eval', epoch, ...record.eval });
        }
        history.push(record);
        progress.endEpoch(record);
        await log({ type: 'epoch', ...record, eval: undefined });
        await save(epoch + 1, record.eval ? { top1: record.eval.top1, loss: record.eval.loss } : undefined);
        if (stop) interrupted = epoch + 1 < epochs;
      }
    } finally {
      progress.done();
      if (handleSignals) {
        process.off('SIGINT', request);
        process.off('SIGTERM', request);
      }
      options.signal?.removeEventListener('abort', request);
      if (options.plotFile && history.length) await writePlot(options.plotFile, history);
    }
    return { epochs: history, best, interrupted, checkpoint };
  }
}
