#!/usr/bin/env node
/**
 * The `repadapter` command: train | eval | fold | export | info | demo | bench.
 * Defaults are the paper's VTAB-1k recipe (AdamW lr 1e-3, weight decay 1e-4, batch 64, 100 epochs,
 * 10 warm-up epochs, cosine to 1e-5 from 1e-6, drop path 0.1, adapter width 8, groups 2, dropout
 * 0.1); --task picks the official per-task scale for the chosen placement.
 */
import { existsSync, statSync } from 'node:fs';
import { mkdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';

import { presets, type ViTOptions } from './config.js';
import type { ImageDataset } from './data/dataset.js';
import { mnist } from './data/idx.js';
import { imageFolder } from './data/image-folder.js';
import { vtab } from './data/vtab.js';
import { ArgumentError, ConfigError, RepAdapterError } from './errors.js';
import { fingerprint, loadAdapters, modelConfigFromAdapters, readAdapters, saveAdapters } from './io/adapters.js';
import { readNpz } from './io/npz.js';
import { exportOnnx } from './io/onnx.js';
import { readSafetensors } from './io/safetensors.js';
import { adamw } from './optim/optimizer.js';
import { cosine } from './optim/schedules.js';
import { Trainer } from './train/trainer.js';
import { Tensor } from './tensor.js';
import { officialScale } from './train/vtab-scales.js';
import { ViT } from './vit.js';

type Options = NonNullable<ParseArgsConfig['options']>;

const common: Options = { help: { type: 'boolean', short: 'h' } };
const modelOptions: Options = {
  model: { type: 'string', default: 'vit_base_patch16_224' },
  config: { type: 'string' },
  'image-size': { type: 'string' },
  pretrained: { type: 'string' },
  device: { type: 'string', default: 'cpu' },
  dtype: { type: 'string', default: 'float32' },
};
const dataOptions: Options = {
  data: { type: 'string' },
  layout: { type: 'string' },
  split: { type: 'string' },
  'eval-split': { type: 'string' },
  task: { type: 'string' },
};

const HELP: Record<string, string> = {
  main: `Usage: repadapter <command> [options]

Commands
  train    adapt a pretrained ViT to a dataset (RepAdapter, linear probe or full fine-tuning)
  eval     top-1 accuracy of a model (base + adapter file, or a full weights file) on a dataset
  fold     fold an adapter file into its base: a plain timm ViT in safetensors
  export   export a folded model to ONNX
  info     what a .safetensors / .npz / adapter file holds
  demo     the whole story on Fashion-MNIST in a few minutes (needs dataset-fashion-mnist)
  bench    benchmark training and inference (beside PyTorch with --compare)

repadapter <command> --help shows the command's options.`,
  train: `Usage: repadapter train --data <dir> --pretrained <weights> [options]

Data
  --data <dir>            a VTAB-1k task folder (with train800val200.txt …), an ImageFolder
                          (one folder per class) or a folder of IDX files (MNIST layout)
  --layout <vtab|folder|idx>  default: recognised from the folder
  --split <name>          training split (vtab: train800val200; idx: train)
  --eval-split <name>     evaluation split (vtab: test; idx: test); for folder: a second --eval-data
  --eval-data <dir>       evaluation ImageFolder
  --task <name>           a VTAB-1k task (cifar, caltech101, dtd, …): its official scale
Model
  --model <preset>        timm preset (default vit_base_patch16_224)
  --config '<json>'       a custom architecture instead, e.g.
                          '{"imageSize":32,"patchSize":8,"width":64,"depth":4,"heads":4}'
  --image-size <n>        input side (default: the preset's)
  --pretrained <file>     backbone weights: Google .npz, timm or Hugging Face .safetensors
  --method <m>            repadapter (default) | linear-probe | full
  --placement <attn|block>  default attn
  --hidden <n>            adapter width (default 8)
  --groups <n>            groups of the up-projection (default 2)
  --scale <s>             adapter scale (default: the task's official value, else 1)
  --dropout <p>           dropout on the adapter's hidden activations (default 0.1)
  --drop-path <p>         stochastic depth of the last block (default 0.1)
  --device <cpu|cuda|auto>  where to compute (default cpu)
  --dtype <float32|bf16>  precision of the backbone's Linears (default float32); bf16 is fast on
                          GPUs and CPUs with avx512_bf16 or AMX, emulated (slower) elsewhere
  --cuda-graphs           on CUDA, replay each training step (and eval forward) as one graph
  --recompute-mlp         recompute each block's GELU input in backward: less memory, ~15% more work
Optimisation
  --epochs <n> (100)  --batch <n> (64)  --lr <x> (1e-3)  --weight-decay <x> (1e-4)
  --warmup <epochs> (10)  --lr-min <x> (1e-5)  --warmup-lr <x> (1e-6)
  --label-smoothing <x> (0)  --mixup <alpha> (0)  --cutmix <alpha> (0)  --flip  --crop
  --eval-every <n> (10)  --seed <n> (0)  --clip-grad <x>
Output
  --out <dir>             checkpoints/, log.jsonl, plot.svg and <name>.adapters.safetensors
                          (default runs/<task or data folder name>)
  --resume                continue from the newest checkpoint in --out`,
  eval: `Usage: repadapter eval --data <dir> (--pretrained <base> --adapters <file> | --weights <file>) [options]

  --data, --layout, --split (vtab/idx: test), --task     as for train
  --pretrained <file>     the base the adapters were trained on
  --adapters <file>       an adapter file written by train
  --weights <file>        a full model (e.g. written by fold) instead of base + adapters
  --model <preset>        architecture for --weights without config metadata
  --device, --dtype       as for train
  --batch <n>             default 64`,
  fold: `Usage: repadapter fold --pretrained <base> --adapters <file> --out <file.safetensors>

Folds the adapters into qkv / fc1 (W' = W + s·(W B̂)A, c' = c + s·W(B̂a + b)) and writes a plain
ViT with timm's names that timm's VisionTransformer loads unchanged. Prints the fold's max |Δlogit|
on random inputs.`,
  export: `Usage: repadapter export (--weights <folded.safetensors> | --pretrained <base> --adapters <file>) --onnx <out.onnx>

  --opset <n>             17 (default) … 23
  --batch <n>             a fixed batch size (default: dynamic)`,
  info: `Usage: repadapter info <file>

Lists the tensors of a .safetensors or .npz file with the parameter count and any repadapter
metadata (model and adapter config, class names, base fingerprint).`,
  demo: `Usage: repadapter demo [--data <dir>] [--fresh]

Pretrains a small ViT on five Fashion-MNIST classes (cached after the first run), adapts it to the
other five with RepAdapter, a linear probe and full fine-tuning, folds and checks the result.
  --data <dir>            Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist)
  --fresh                 pretrain again even if a cached backbone exists
  --dtype <float32|bf16>  precision of the adapted models' Linears (default float32)`,
};

function parse(command: string, argv: string[], options: Options, positionals = false) {
  try {
    return parseArgs({ args: argv, options: { ...common, ...options }, allowPositionals: positionals, strict: true });
  } catch (error) {
    throw new ArgumentError(`${(error as Error).message}\n\n${HELP[command]}`);
  }
}

function num(values: Record<string, unknown>, key: string, fallback: number): number {
  const raw = values[key];
  if (raw === undefined) return fallback;
  const v = Number(raw);
  if (!Number.isFinite(v)) throw new ArgumentError(`expected a number for --${key}, got ${JSON.stringify(raw)}`);
  return v;
}

function int(values: Record<string, unknown>, key: string, fallback: number): number {
  const v = num(values, key, fallback);
  if (!Number.isSafeInteger(v)) throw new ArgumentError(`expected an integer for --${key}, got ${JSON.stringify(values[key])}`);
  return v;
}

function need(values: Record<string, unknown>, key: string, command: string): string {
  const v = values[key];
  if (typeof v !== 'string' || v === '') throw new ArgumentError(`--${key} is required\n\n${HELP[command]}`);
  return v;
}

type Layout = 'vtab' | 'folder' | 'idx';

function detectLayout(dir: string): Layout {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new ArgumentError(`--data ${dir} is not a folder`);
  if (['train800val200.txt', 'train800.txt', 'test.txt'].some((f) => existsSync(path.join(dir, f)))) return 'vtab';
  if (['train-images-idx3-ubyte.gz', 'train-images-idx3-ubyte', 't10k-images-idx3-ubyte.gz'].some((f) => existsSync(path.join(dir, f)))) return 'idx';
  return 'folder';
}

async function dataset(values: Record<string, unknown>, which: 'train' | 'eval', imageSize: number): Promise<ImageDataset | null> {
  const dir = which === 'eval' && typeof values['eval-data'] === 'string' ? (values['eval-data'] as string) : (values.data as string);
  const layout = ((values.layout as string | undefined) ?? detectLayout(dir)) as Layout;
  const options = { imageSize, onError: 'throw' as const };
  switch (layout) {
    case 'vtab': {
      const split = (which === 'train' ? values.split : values['eval-split']) as string | undefined;
      return vtab(dir, split ?? (which === 'train' ? 'train800val200' : 'test'), options);
    }
    case 'idx': {
      const split = ((which === 'train' ? values.split : values['eval-split']) as string | undefined) ?? (which === 'train' ? 'train' : 'test');
      if (split !== 'train' && split !== 'test') throw new ArgumentError(`expected train or test as the IDX split, got ${split}`);
      return mnist(dir, split, options);
    }
    case 'folder':
      if (which === 'eval' && typeof values['eval-data'] !== 'string') return null;
      return imageFolder(dir, options);
    default:
      throw new ArgumentError(`expected vtab, folder or idx for --layout, got ${JSON.stringify(layout)}`);
  }
}

function architecture(values: Record<string, unknown>): ViTOptions {
  if (typeof values.config === 'string') {
    let custom: ViTOptions;
    try {
      custom = JSON.parse(values.config) as ViTOptions;
    } catch {
      throw new ArgumentError(`expected a JSON object for --config, got ${JSON.stringify(values.config)}`);
    }
    return { imageSize: 224, patchSize: 16, ...custom };
  }
  const name = values.model as string;
  const arch = presets[name];
  if (!arch) throw new ConfigError(`unknown --model ${JSON.stringify(name)}; known: ${Object.keys(presets).join(', ')}`);
  return { ...arch, ...(values['image-size'] !== undefined ? { imageSize: int(values, 'image-size', arch.imageSize) } : {}) };
}

/** --device and --dtype, checked. */
function runtime(values: Record<string, unknown>): { device: 'cpu' | 'cuda' | 'auto'; dtype: 'float32' | 'bf16' } {
  const device = values.device as string;
  if (device !== 'cpu' && device !== 'cuda' && device !== 'auto')
    throw new ArgumentError(`expected cpu, cuda or auto for --device, got ${JSON.stringify(device)}`);
  const dtype = values.dtype as string;
  if (dtype !== 'float32' && dtype !== 'bf16') throw new ArgumentError(`expected float32 or bf16 for --dtype, got ${JSON.stringify(dtype)}`);
  return { device, dtype };
}

/** Says so when bf16 was asked for where it can only be emulated. */
function warnIfEmulated(model: ViT): void {
  if (model.dtype === 'bf16' && !model.bf16Native)
    console.error(`warning: this ${model.device.toUpperCase()} has no bf16 dot products (avx512_bf16 or AMX): bf16 is emulated, with bf16's numbers but slower than float32`);
}

async function train(argv: string[]): Promise<number> {
  const { values } = parse('train', argv, {
    ...modelOptions, ...dataOptions,
    'eval-data': { type: 'string' }, method: { type: 'string', default: 'repadapter' },
    placement: { type: 'string', default: 'attn' }, hidden: { type: 'string' }, groups: { type: 'string' },
    scale: { type: 'string' }, dropout: { type: 'string' }, 'drop-path': { type: 'string' },
    epochs: { type: 'string' }, batch: { type: 'string' }, lr: { type: 'string' }, 'weight-decay': { type: 'string' },
    warmup: { type: 'string' }, 'lr-min': { type: 'string' }, 'warmup-lr': { type: 'string' },
    'label-smoothing': { type: 'string' }, mixup: { type: 'string' }, cutmix: { type: 'string' },
    flip: { type: 'boolean' }, crop: { type: 'boolean' }, 'eval-every': { type: 'string' }, seed: { type: 'string' },
    'clip-grad': { type: 'string' }, out: { type: 'string' }, resume: { type: 'boolean' },
    'cuda-graphs': { type: 'boolean' }, 'recompute-mlp': { type: 'boolean' },
  });
  if (values.help) return help('train');
  need(values, 'data', 'train');
  const arch = architecture(values);
  const method = values.method as string;
  const trainable = ({ repadapter: 'adapters', 'linear-probe': 'head', full: 'all' } as const)[method as 'repadapter'];
  if (!trainable) throw new ArgumentError(`expected repadapter, linear-probe or full for --method, got ${JSON.stringify(method)}`);
  const placement = values.placement as 'attn' | 'block';
  if (placement !== 'attn' && placement !== 'block') throw new ArgumentError(`expected attn or block for --placement, got ${JSON.stringify(placement)}`);
  const task = values.task as string | undefined;
  const scale = values.scale !== undefined ? num(values, 'scale', 1) : task ? officialScale(task, placement) : 1;

  const trainSet = (await dataset(values, 'train', arch.imageSize!))!;
  const evalSet = await dataset(values, 'eval', arch.imageSize!);
  const model = ViT.create(
    {
      ...arch,
      numClasses: trainSet.numClasses,
      dropPath: num(values, 'drop-path', 0.1),
      trainable,
      adapter: trainable === 'adapters'
        ? { placement, hidden: int(values, 'hidden', 8), groups: int(values, 'groups', 2), scale, dropout: num(values, 'dropout', 0.1) }
        : null,
    },
    {
      seed: int(values, 'seed', 0),
      ...runtime(values),
      cudaGraphs: Boolean(values['cuda-graphs']),
      recomputeMlp: Boolean(values['recompute-mlp']),
    },
  );
  warnIfEmulated(model);
  let baseFingerprint: string | null = null;
  if (values.pretrained) {
    const report = await model.loadPretrained(values.pretrained as string);
    console.error(`loaded ${report.loaded.length} tensors from ${values.pretrained} (${report.description})` +
      (report.reinitialised.length ? `; new head for ${trainSet.numClasses} classes` : ''));
    baseFingerprint = fingerprint(model);
  } else {
    console.error('warning: no --pretrained weights: the backbone is randomly initialised');
  }
  const out = (values.out as string | undefined) ?? path.join('runs', task ?? path.basename(path.resolve(values.data as string)));
  await mkdir(out, { recursive: true });
  const epochs = int(values, 'epochs', 100);
  const mixupAlpha = num(values, 'mixup', 0), cutmixAlpha = num(values, 'cutmix', 0);
  const trainer = new Trainer(model, {
    optimizer: adamw({ lr: num(values, 'lr', 1e-3), weightDecay: num(values, 'weight-decay', 1e-4), clipGradNorm: values['clip-grad'] !== undefined ? num(values, 'clip-grad', 0) : null }),
    schedule: cosine({ epochs, warmupEpochs: int(values, 'warmup', 10), lrMin: num(values, 'lr-min', 1e-5), warmupLrInit: num(values, 'warmup-lr', 1e-6) }),
  });
  const counts = model.countParameters();
  console.error(`${method}: ${counts.trainable.toLocaleString('en')} trainable parameters of ${counts.total.toLocaleString('en')} ` +
    `(${((100 * counts.trainable) / counts.total).toFixed(2)}%), ${trainSet.length} training images` + (evalSet ? `, ${evalSet.length} evaluation images` : ''));
  const result = await trainer.fit(trainSet, {
    epochs,
    batchSize: int(values, 'batch', 64),
    eval: evalSet,
    evalEvery: int(values, 'eval-every', 10),
    seed: int(values, 'seed', 0),
    labelSmoothing: num(values, 'label-smoothing', 0),
    augment: values.flip || values.crop ? { flip: values.flip ? 0.5 : 0, randomResizedCrop: Boolean(values.crop) } : undefined,
    mixup: mixupAlpha > 0 || cutmixAlpha > 0 ? { mixupAlpha, cutmixAlpha, labelSmoothing: num(values, 'label-smoothing', 0.1) } : undefined,
    checkpointDir: path.join(out, 'checkpoints'),
    resume: Boolean(values.resume),
    baseFingerprint,
    logFile: path.join(out, 'log.jsonl'),
    plotFile: path.join(out, 'plot.svg'),
  });
  if (trainable === 'adapters' && !result.interrupted) {
    const file = path.join(out, `${task ?? 'task'}.adapters.safetensors`);
    await saveAdapters(model, file, { classNames: trainSet.classes ? [...trainSet.classes] : undefined, ...(baseFingerprint ? { baseFingerprint } : {}) });
    console.error(`adapters + head: ${file} (${((await stat(file)).size / 1024).toFixed(1)} KiB)`);
  }
  if (result.best) console.error(`best top-1 ${(100 * result.best.top1).toFixed(2)}%`);
  model.dispose();
  return result.interrupted ? 130 : 0;
}

/** base + adapters, or a full weights file, as a ready model. */
async function loadModel(values: Record<string, unknown>, command: string): Promise<ViT> {
  if (values.weights) {
    const file = await readSafetensors(values.weights as string);
    const meta = file.metadata['repadapter.config'];
    const config = meta ? (JSON.parse(meta) as ViTOptions) : { ...architecture(values), numClasses: file.tensors.get('head.bias')?.shape[0] ?? 1000, adapter: null };
    const model = ViT.create({ ...config, adapter: config.adapter ?? null }, runtime(values));
    warnIfEmulated(model);
    await model.load(values.weights as string);
    return model;
  }
  const adapters = need(values, 'adapters', command);
  const pretrained = need(values, 'pretrained', command);
  const model = ViT.create(await modelConfigFromAdapters(adapters), runtime(values));
  warnIfEmulated(model);
  await model.loadPretrained(pretrained, { strict: false });
  await loadAdapters(model, adapters);
  return model;
}

async function evaluate(argv: string[]): Promise<number> {
  const { values } = parse('eval', argv, { ...modelOptions, ...dataOptions, adapters: { type: 'string' }, weights: { type: 'string' }, batch: { type: 'string' } });
  if (values.help) return help('eval');
  need(values, 'data', 'eval');
  using model = await loadModel(values, 'eval');
  const ds = (await dataset({ ...values, 'eval-split': values.split ?? values['eval-split'] }, 'eval', model.config.imageSize)) ??
    (await imageFolder(values.data as string, { imageSize: model.config.imageSize }));
  const trainer = new Trainer(model, { optimizer: adamw({ lr: 0 }) });
  const r = await trainer.evaluate(ds, { batchSize: int(values, 'batch', 64) });
  console.log(`top-1 ${(100 * r.top1).toFixed(2)}%  loss ${r.loss.toFixed(4)}  (${r.images} images)`);
  return 0;
}

async function fold(argv: string[]): Promise<number> {
  const { values } = parse('fold', argv, { ...modelOptions, adapters: { type: 'string' }, out: { type: 'string' } });
  if (values.help) return help('fold');
  const out = need(values, 'out', 'fold');
  using model = await loadModel(values, 'fold');
  model.eval();
  const S = model.config.imageSize;
  const random = new Float32Array(2 * 3 * S * S).map((_, i) => Math.sin(i * 12.9898) * 1.5);
  using images = Tensor.from(random, [2, 3, S, S]);
  const before = model.forward(images).toArray();
  model.fold();
  const after = model.forward(images).toArray();
  let diff = 0, scale = 0;
  for (let i = 0; i < before.length; i++) { diff = Math.max(diff, Math.abs(after[i] - before[i])); scale = Math.max(scale, Math.abs(before[i])); }
  await model.save(out);
  console.log(`folded into ${out}: max |Δlogit| ${diff.toExponential(2)} (${(diff / scale).toExponential(2)} relative)`);
  return 0;
}

async function exportCommand(argv: string[]): Promise<number> {
  const { values } = parse('export', argv, { ...modelOptions, adapters: { type: 'string' }, weights: { type: 'string' }, onnx: { type: 'string' }, opset: { type: 'string' }, batch: { type: 'string' } });
  if (values.help) return help('export');
  const out = need(values, 'onnx', 'export');
  using model = await loadModel(values, 'export');
  if (model.config.adapter) model.fold();
  await exportOnnx(model, out, { opset: int(values, 'opset', 17), ...(values.batch !== undefined ? { batch: int(values, 'batch', 1) } : {}) });
  console.log(`wrote ${out} (${((await stat(out)).size / 1048576).toFixed(1)} MiB): input "images" [batch,3,${model.config.imageSize},${model.config.imageSize}], output "logits"`);
  return 0;
}

async function info(argv: string[]): Promise<number> {
  const { values, positionals } = parse('info', argv, {}, true);
  if (values.help) return help('info');
  const file = positionals[0];
  if (!file) throw new ArgumentError(`a file is required\n\n${HELP.info}`);
  const head = (await readFile(file)).subarray(0, 4);
  let tensors: [string, number[]][] = [];
  let metadata: Record<string, string> = {};
  if (head[0] === 0x50 && head[1] === 0x4b) {
    const npz = await readNpz(file);
    tensors = [...npz.arrays].map(([name, a]) => [name, a.shape]);
  } else {
    const st = await readSafetensors(file);
    tensors = [...st.tensors].map(([name, t]) => [name, t.shape]);
    metadata = st.metadata;
  }
  const count = tensors.reduce((n, [, shape]) => n + shape.reduce((a, b) => a * b, 1), 0);
  console.log(`${file}: ${tensors.length} tensors, ${count.toLocaleString('en')} values`);
  for (const [name, shape] of tensors.slice(0, 12)) console.log(`  ${name} [${shape.join(', ')}]`);
  if (tensors.length > 12) console.log(`  … ${tensors.length - 12} more`);
  if (metadata['repadapter.adapters'] || Object.keys(metadata).some((k) => k.startsWith('repadapter.'))) {
    try {
      const a = await readAdapters(file);
      console.log(`adapter file: ${JSON.stringify(a.adapter)}, ${a.config.numClasses} classes${a.classNames ? ` (${a.classNames.join(', ')})` : ''}, base ${a.baseFingerprint}`);
    } catch {
      for (const [k, v] of Object.entries(metadata)) console.log(`${k}: ${v.length > 200 ? `${v.slice(0, 200)}…` : v}`);
    }
  }
  return 0;
}

async function demo(argv: string[]): Promise<number> {
  const { values } = parse('demo', argv, { data: { type: 'string' }, fresh: { type: 'boolean' }, dtype: { type: 'string', default: 'float32' } });
  if (values.help) return help('demo');
  const { dtype } = runtime({ ...values, device: 'cpu' });
  const { runDemo } = await import('./demo.js');
  await runDemo({ dataDir: values.data as string | undefined, fresh: Boolean(values.fresh), dtype });
  return 0;
}

async function bench(argv: string[]): Promise<number> {
  const { main } = await import('./bench/cli.js');
  return main(argv);
}

function help(command: string): number {
  console.log(HELP[command] ?? HELP.main);
  return 0;
}

export async function main(argv: string[] = process.argv.slice(2)): Promise<number> {
  const [command, ...rest] = argv;
  const commands: Record<string, (a: string[]) => Promise<number>> = { train, eval: evaluate, fold, export: exportCommand, info, demo, bench };
  if (!command || command === '--help' || command === '-h' || command === 'help') return help('main');
  const run = commands[command];
  if (!run) {
    console.error(`unknown command ${JSON.stringify(command)}\n\n${HELP.main}`);
    return 2;
  }
  try {
    return await run(rest);
  } catch (error) {
    if (error instanceof RepAdapterError) {
      console.error(`repadapter ${command}: ${error.message}`);
      return error instanceof ArgumentError || error instanceof ConfigError ? 2 : 1;
    }
    throw error;
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  // The exit code is the command's result (0, 1, 2 usage, 130 interrupted); exiting explicitly
  // also ends a run whose native compute thread or open handles would keep Node alive.
  main().then((code) => process.exit(code), (error) => {
    console.error(error);
    process.exit(1);
  });
}
