/**
 * `npm run bench -- [options]` (node --import=tsx lib/bench/cli.ts): the benchmark's command line.
 * main(argv) is exported so that a package CLI (`repadapter bench …`) can delegate to it.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { RepAdapterError } from '../errors.js';
import { compareBench, runBench } from './index.js';
import { DEFAULTS, parseDType } from './plan.js';
import { runPytorchBench } from './pytorch.js';
import { METHODS, type BenchOptions, type Method, type Placement } from './types.js';

export const HELP = `Usage: npm run bench -- [options]      (node --import=tsx lib/bench/cli.ts [options])

Benchmarks training steps and inference of ViTs with RepAdapter, each workload
(method × model × batch) in its own process, and writes <out>/<timestamp>/ours.json,
ours.md (the table, also printed) and plot.svg (step time vs batch and vs model size).

Model
  --model <preset>        timm preset (default ${DEFAULTS.model}); e.g. vit_small_patch16_224,
                          vit_tiny_patch16_224
  --config '<json>'       a custom architecture instead, e.g.
                          '{"imageSize":32,"patchSize":8,"width":32,"depth":2,"heads":2}'
                          (keys: imageSize patchSize width depth heads mlpRatio mlpHidden numClasses)
  --name <name>           name of the custom config in the report (default custom)
  --sizes <list>          model-size sweep: tiny,small,base,large,huge (with --model's patch and
                          image size) or preset names
  --classes <n>           classes of the head (default ${DEFAULTS.numClasses})

Workloads
  --methods <list>        a subset of (default all):
                          ${METHODS.slice(0, 4).join(', ')},
                          ${METHODS.slice(4).join(', ')}
  --placements <list>     attn,block (default both): which adapter placements run
  --batch <list>          training batch sizes (default ${DEFAULTS.batch.join(',')})
  --infer-batch <list>    inference batch sizes (default ${DEFAULTS.inferBatch.join(',')})
  --device <cpu|cuda>     default cpu (cuda rows are skipped when this build cannot make a model there)
  --dtype <float32|bf16>  default float32; bf16 runs the backbone's Linears in bf16 (emulated, and
                          so slower, on CPUs without avx512_bf16 or AMX: each row says so)
  --warmup <n>            warm-up steps per workload (default ${DEFAULTS.warmup})
  --repeats <n>           measured steps per workload (default ${DEFAULTS.repeats}); the report has
                          median, min/max and IQR
  --profile               include the per-op profile (adds overhead to every op)
  --lr <x> --weight-decay <x>   AdamW of the training step (default ${DEFAULTS.lr}, ${DEFAULTS.weightDecay})
  --seed <n>              seed of weights and inputs (default 0)
  --timeout <s>           seconds per workload before it is killed (default ${DEFAULTS.timeout}; 0: none)

Output
  --out <dir>             results root (default ${DEFAULTS.out}/); the run goes to <dir>/<timestamp>/
  --quiet                 no progress lines

Comparison with PyTorch
  --compare               then run bench/pytorch_bench.py on the same plan (theirs.json) and print
                          our/their ratios (compare.md, compare.json); skipped, with instructions,
                          when PyTorch or timm is missing
  --python <path>         interpreter (default env REPADAPTER_PYTHON, else /usr/bin/python3)
  --timm-path <dir>       folder with the timm package (default env REPADAPTER_TIMM_PATH)
  --ours <file> --theirs <file>   only compare two existing reports

  -h, --help              this text
`;

class UsageError extends Error {}

function list(v: string | undefined): string[] | undefined {
  return v === undefined ? undefined : v.split(',').map((s) => s.trim()).filter(Boolean);
}

function ints(name: string, v: string | undefined): number[] | undefined {
  const l = list(v);
  if (!l) return undefined;
  const out = l.map(Number);
  if (!out.length || out.some((n) => !Number.isSafeInteger(n) || n < 1)) throw new UsageError(`--${name} expects a comma-separated list of positive integers, got ${JSON.stringify(v)}`);
  return out;
}

function number(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${name} expects a number, got ${JSON.stringify(v)}`);
  return n;
}

export function parseCli(argv: string[]) {
  const { values } = parseArgs({
    args: argv,
    allowPositionals: false,
    strict: true,
    options: {
      model: { type: 'string' },
      config: { type: 'string' },
      name: { type: 'string' },
      sizes: { type: 'string' },
      classes: { type: 'string' },
      methods: { type: 'string' },
      placements: { type: 'string' },
      batch: { type: 'string' },
      'infer-batch': { type: 'string' },
      device: { type: 'string' },
      dtype: { type: 'string' },
      warmup: { type: 'string' },
      repeats: { type: 'string' },
      profile: { type: 'boolean' },
      lr: { type: 'string' },
      'weight-decay': { type: 'string' },
      seed: { type: 'string' },
      timeout: { type: 'string' },
      out: { type: 'string' },
      quiet: { type: 'boolean' },
      compare: { type: 'boolean' },
      python: { type: 'string' },
      'timm-path': { type: 'string' },
      ours: { type: 'string' },
      theirs: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  let config: Record<string, unknown> | undefined;
  if (values.config !== undefined) {
    try {
      config = JSON.parse(values.config) as Record<string, unknown>;
    } catch (e) {
      throw new UsageError(`--config is not valid JSON: ${(e as Error).message}`);
    }
  }
  let dtype: BenchOptions['dtype'];
  if (values.dtype !== undefined) {
    const d = parseDType(values.dtype);
    if (!d) throw new UsageError(`--dtype expects float32 or bf16, got ${JSON.stringify(values.dtype)}`);
    dtype = d;
  }
  const intOpt = (name: string, v: string | undefined) => {
    const n = number(name, v);
    if (n !== undefined && !Number.isSafeInteger(n)) throw new UsageError(`--${name} expects an integer, got ${JSON.stringify(v)}`);
    return n;
  };
  const options: BenchOptions = {
    model: values.model,
    config,
    configName: values.name,
    sizes: list(values.sizes),
    numClasses: intOpt('classes', values.classes),
    methods: list(values.methods) as Method[] | undefined,
    placements: list(values.placements) as Placement[] | undefined,
    batch: ints('batch', values.batch),
    inferBatch: ints('infer-batch', values['infer-batch']),
    device: values.device as BenchOptions['device'],
    dtype,
    warmup: intOpt('warmup', values.warmup),
    repeats: intOpt('repeats', values.repeats),
    profile: values.profile,
    lr: number('lr', values.lr),
    weightDecay: number('weight-decay', values['weight-decay']),
    seed: intOpt('seed', values.seed),
    timeout: number('timeout', values.timeout),
    out: values.out,
    log: values.quiet ? null : undefined,
  };
  for (const key of Object.keys(options) as (keyof BenchOptions)[]) if (options[key] === undefined) delete options[key];
  return {
    options,
    help: !!values.help,
    compare: !!values.compare,
    python: values.python,
    timmPath: values['timm-path'],
    ours: values.ours,
    theirs: values.theirs,
  };
}

/** Runs the CLI; returns the exit code. */
export async function main(argv: string[] = process.argv.slice(2)): Promise<number> {
  let cli: ReturnType<typeof parseCli>;
  try {
    cli = parseCli(argv);
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n(npm run bench -- --help lists the options)\n`);
    return 2;
  }
  if (cli.help) {
    process.stdout.write(HELP);
    return 0;
  }
  try {
    if (cli.ours || cli.theirs) {
      if (!cli.ours || !cli.theirs) throw new UsageError('--ours and --theirs go together');
      process.stdout.write(compareBench(cli.ours, cli.theirs).markdown);
      return 0;
    }
    const result = await runBench(cli.options);
    process.stdout.write('\n' + result.markdown);
    process.stdout.write(`\nWrote ${result.files.json}, ${result.files.markdown}, ${result.files.svg}\n`);
    const failed = result.report.rows.filter((r) => r.status === 'error').length;
    if (cli.compare) {
      const log = cli.options.log === null ? null : undefined;
      const theirs = await runPytorchBench(result.plan, result.dir, { python: cli.python, timmPath: cli.timmPath, log });
      if (theirs.status === 'ok') {
        const cmp = compareBench(result.report, theirs.report);
        writeFileSync(path.join(result.dir, 'compare.json'), JSON.stringify({ rows: cmp.rows, geomean: cmp.geomean }, null, 2) + '\n');
        writeFileSync(path.join(result.dir, 'compare.md'), cmp.markdown);
        process.stdout.write('\n' + cmp.markdown);
        process.stdout.write(`\nWrote ${theirs.file}, ${path.join(result.dir, 'compare.md')}\n`);
      } else if (theirs.status === 'skipped') {
        process.stdout.write(`\nPyTorch comparison skipped:\n${theirs.reason}\n`);
      } else {
        process.stderr.write(`\nPyTorch comparison failed: ${theirs.reason}\n`);
        return 1;
      }
    }
    return failed ? 1 : 0;
  } catch (e) {
    if (e instanceof UsageError || e instanceof RepAdapterError) {
      process.stderr.write(`${e.message}\n`);
      return 2;
    }
    throw e;
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  // `… | head` closes the pipe early: that is not an error, so exit 0 instead of throwing
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });
  main().then((code) => { process.exitCode = code; });
}
