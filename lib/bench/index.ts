/**
 * The benchmark: training steps (RepAdapter attn / block, full fine-tuning, linear probe) and
 * inference (plain, unfolded adapters, folded) of ViTs, every workload (method × model × batch)
 * in a child process of its own so that its peak RSS is its own. Writes
 * <out>/<timestamp>/ours.json, ours.md and plot.svg. bench/pytorch_bench.py runs the same plan in
 * PyTorch (theirs.json), and compareBench pairs the two.
 *
 * ```ts
 * import { runBench, compareBench } from './lib/bench/index.js';
 * const { report, dir } = await runBench({ model: 'vit_small_patch16_224', methods: ['repadapter-attn', 'infer-folded'] });
 * ```
 */
import { fork } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { makePlan } from './plan.js';
import { markdownReport, svgPlot } from './report.js';
import type { BenchOptions, BenchPlan, BenchReport, BenchRow, BenchSettings, Workload } from './types.js';
import type { WorkerReply, WorkerRequest } from './worker.js';

export { compareBench, toReport } from './compare.js';
export { makePlan, workloadId, DEFAULTS, METHOD_SPECS, parseDType, sizePreset } from './plan.js';
export { markdownReport, markdownCompare, svgPlot, fmt } from './report.js';
export { runPytorchBench, findPython, findTimm, PYTORCH_SCRIPT, PYTORCH_INSTRUCTIONS, type PytorchOptions, type PytorchResult } from './pytorch.js';
export { spread, quantile, geomean } from './stats.js';
export * from './types.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const ext = path.extname(fileURLToPath(import.meta.url)); // .ts under tsx, .js when built
const WORKER = path.join(here, `worker${ext}`);

export interface BenchResult {
  /** The run's folder. */
  dir: string;
  report: BenchReport;
  markdown: string;
  plan: BenchPlan;
  files: { json: string; markdown: string; svg: string; plan: string };
}

/** A folder name from the time: 2025-01-31T12-00-00Z (with -2, -3… when taken). */
export function runFolder(root: string, date = new Date()): string {
  const stamp = date.toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-');
  let dir = path.join(root, stamp);
  for (let i = 2; existsSync(dir); i++) dir = path.join(root, `${stamp}-${i}`);
  return dir;
}

/** Node flags for the worker: ours, without inspector flags, with tsx when running .ts. */
function workerExecArgv(): string[] {
  const args = process.execArgv.filter((a) => !/^--inspect/.test(a) && !/^--debug/.test(a));
  if (ext === '.ts' && !args.some((a) => a.includes('tsx'))) args.push('--import=tsx');
  return args;
}

function runWorker(workload: Workload, settings: BenchSettings): Promise<WorkerReply> {
  return new Promise((resolve) => {
    const child = fork(WORKER, [], { execArgv: workerExecArgv(), stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    let reply: WorkerReply | null = null;
    let output = '';
    let timedOut = false;
    const keep = (chunk: Buffer) => {
      output = (output + chunk.toString()).slice(-4000);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    const timer = settings.timeout > 0 ? setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, settings.timeout * 1000) : null;
    child.on('message', (m) => { reply = m as WorkerReply; });
    const fail = (note: string): WorkerReply => ({ row: { ...workload, status: 'error', note }, backend: '', optimizer: null });
    child.on('error', (e) => {
      if (timer) clearTimeout(timer);
      resolve(fail(`cannot start the worker: ${e.message}`));
    });
    child.on('exit', (code, signal) => {
      if (timer) clearTimeout(timer);
      if (reply) return resolve(reply);
      const tail = output.trim().split('\n').slice(-3).join(' ').slice(-600);
      if (timedOut) return resolve(fail(`timed out after ${settings.timeout} s`));
      if (signal === 'SIGKILL') return resolve(fail(`killed (SIGKILL: out of memory?)${tail ? ` ${tail}` : ''}`));
      resolve(fail(`the worker exited with ${code ?? signal}${tail ? `: ${tail}` : ''}`));
    });
    child.send({ workload, settings } satisfies WorkerRequest);
  });
}

function hostInfo(): BenchReport['host'] {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model.trim() ?? null,
    cpuCount: cpus.length,
    totalMemMB: Math.round(os.totalmem() / 2 ** 20),
    platform: `${os.platform()} ${os.release()}`,
    arch: os.arch(),
    node: process.version,
    backend: null,
    OMP_NUM_THREADS: process.env.OMP_NUM_THREADS ?? null,
    OMP_WAIT_POLICY: process.env.OMP_WAIT_POLICY ?? null,
  };
}

/**
 * Runs every workload of `options` (see BenchOptions; defaults: vit_base_patch16_224, all
 * methods, training batches 8 and 32, inference batches 1 and 32, warm-up 1, repeats 5) and writes
 * ours.json, ours.md, plot.svg and plan.json into `<out>/<timestamp>/` (or `runDir`).
 */
export async function runBench(options: BenchOptions = {}): Promise<BenchResult> {
  const log = options.log === undefined ? (line: string) => process.stderr.write(line + '\n') : options.log ?? (() => {});
  const plan = makePlan(options);
  const { settings, workloads } = plan;
  const hasOptim = existsSync(path.join(here, '..', 'optim', `index${ext}`));
  settings.optimizer = hasOptim ? 'adamw' : 'none';
  const dir = options.runDir ?? runFolder(options.out ?? 'results');
  mkdirSync(dir, { recursive: true });
  const files = {
    json: path.join(dir, 'ours.json'),
    markdown: path.join(dir, 'ours.md'),
    svg: path.join(dir, 'plot.svg'),
    plan: path.join(dir, 'plan.json'),
  };
  writeFileSync(files.plan, JSON.stringify(plan, null, 2));

  const host = hostInfo();
  const notes: string[] = [
    'peak RSS = the maximum resident set of the workload\'s own process (process.resourceUsage().maxRSS), runtime included; baselineRssMB is the process before the model was made',
    'images are random normal floats (normalised-image statistics), labels random; adapters have random non-zero weights',
  ];
  if (!hasOptim) notes.push('this build has no lib/optim: a training step is forward + backward only (no optimizer update)');
  if (settings.dtype === 'bfloat16')
    notes.push('bfloat16: the backbone\'s Linears multiply bf16 copies of their weights with bf16-rounded activations, accumulating in float32; everything else is float32');
  if (settings.device !== 'cpu') notes.push(`device ${settings.device}: rows are skipped when this build cannot create a model there`);
  if (settings.profile) notes.push('per-op profiling was on: every op is timed, which adds overhead to the step times');

  const rows: BenchRow[] = [];
  for (const [i, workload] of workloads.entries()) {
    const tag = `[${i + 1}/${workloads.length}] ${workload.id}`;
    const reply = await runWorker(workload, settings);
    const row = reply.row;
    if (reply.backend && host.backend === null) host.backend = reply.backend;
    if (reply.optimizer === 'none' && settings.optimizer === 'adamw') settings.optimizer = 'none';
    rows.push(row);
    log(
      row.status === 'ok'
        ? `${tag}: ${row.stepMs!.median.toFixed(1)} ms/step, ${row.imagesPerSec!.toFixed(1)} images/s, peak RSS ${row.peakRssMB!.toFixed(0)} MB`
        : `${tag}: ${row.status}${row.note ? ` (${row.note})` : ''}`,
    );
  }

  const report: BenchReport = {
    schema: plan.schema,
    implementation: 'repadapter',
    createdAt: new Date().toISOString(),
    host,
    settings,
    notes,
    rows,
  };
  const markdown = markdownReport(report);
  writeFileSync(files.json, JSON.stringify(report, null, 2) + '\n');
  writeFileSync(files.markdown, markdown);
  writeFileSync(files.svg, svgPlot(report));
  return { dir, report, markdown, plan, files };
}
