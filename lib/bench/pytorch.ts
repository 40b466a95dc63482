/**
 * Runs bench/pytorch_bench.py (the same workloads in PyTorch + timm) on a plan, with Debian's
 * python3 and a timm folder on PYTHONPATH, and reads back theirs.json. When PyTorch or timm is
 * missing the script (or this runner, when there is no python at all) says how to get them and
 * the PyTorch half is skipped.
 */
import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { toReport } from './compare.js';
import type { BenchPlan, BenchReport } from './types.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** lib/bench (or dist/bench) → the package root's bench/pytorch_bench.py. */
export const PYTORCH_SCRIPT = path.resolve(here, '..', '..', 'bench', 'pytorch_bench.py');

export const PYTORCH_INSTRUCTIONS = [
  'The PyTorch comparison needs PyTorch and timm. On Debian 12:',
  '  apt-get install -y python3-torch python3-torchvision libopenblas0-pthread',
  '  pip download --no-deps timm==1.0.29 && unzip timm-1.0.29-py3-none-any.whl -d /tmp/timm_site',
  'then run it with Debian\'s python3 (not a pyenv one without torch) and timm on PYTHONPATH:',
  '  PYTHONPATH=/tmp/timm_site /usr/bin/python3 bench/pytorch_bench.py --help',
  'or, from the benchmark: REPADAPTER_TIMM_PATH=/tmp/timm_site npm run bench -- --compare',
  '(REPADAPTER_PYTHON picks another interpreter; Debian\'s /usr/bin/python3 is the default).',
].join('\n');

export interface PytorchOptions {
  /** The interpreter (default: env REPADAPTER_PYTHON, else /usr/bin/python3 when present, else python3). */
  python?: string;
  /** A folder holding the timm package (default: env REPADAPTER_TIMM_PATH, else /tmp/timm_site when it has timm). */
  timmPath?: string;
  log?: ((line: string) => void) | null;
}

export type PytorchResult =
  | { status: 'ok'; report: BenchReport; file: string }
  | { status: 'skipped' | 'error'; reason: string };

export function findPython(explicit?: string): string {
  if (explicit) return explicit;
  if (process.env.REPADAPTER_PYTHON) return process.env.REPADAPTER_PYTHON;
  return existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
}

export function findTimm(explicit?: string): string | null {
  if (explicit) return explicit;
  if (process.env.REPADAPTER_TIMM_PATH) return process.env.REPADAPTER_TIMM_PATH;
  return existsSync('/tmp/timm_site/timm') ? '/tmp/timm_site' : null;
}

/** Runs the PyTorch half of `plan` in `dir` (writes plan.json there if missing, reads theirs.json). */
export async function runPytorchBench(plan: BenchPlan, dir: string, options: PytorchOptions = {}): Promise<PytorchResult> {
  const log = options.log === undefined ? (line: string) => process.stderr.write(line + '\n') : options.log ?? (() => {});
  const planFile = path.join(dir, 'plan.json');
  if (!existsSync(planFile)) writeFileSync(planFile, JSON.stringify(plan, null, 2));
  const outFile = path.join(dir, 'theirs.json');
  const python = findPython(options.python);
  const timm = findTimm(options.timmPath);
  const env = { ...process.env };
  if (timm) env.PYTHONPATH = [timm, env.PYTHONPATH].filter(Boolean).join(path.delimiter);
  log(`pytorch: ${python} ${path.relative(process.cwd(), PYTORCH_SCRIPT)}${timm ? ` (timm from ${timm})` : ''}`);

  const result = await new Promise<{ code: number | null; signal: string | null; output: string; spawnError?: Error }>((resolve) => {
    let output = '';
    const child = spawn(python, [PYTORCH_SCRIPT, '--plan', planFile, '--out', outFile], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const take = (chunk: Buffer) => {
      const text = chunk.toString();
      output += text;
      for (const line of text.split('\n')) if (line.trim()) log(`  ${line}`);
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.on('error', (spawnError) => resolve({ code: null, signal: null, output, spawnError }));
    child.on('close', (code, signal) => resolve({ code, signal, output }));
  });
  if (result.spawnError)
    return { status: 'skipped', reason: `cannot run ${python} (${result.spawnError.message}).\n${PYTORCH_INSTRUCTIONS}` };
  if (result.code !== 0)
    return { status: 'error', reason: `${python} ${PYTORCH_SCRIPT} exited with ${result.code ?? result.signal}:\n${result.output.slice(-2000)}` };
  if (!existsSync(outFile)) {
    const skip = result.output.split('\n').filter((l) => l.startsWith('SKIP')).join('\n');
    return { status: 'skipped', reason: skip || `the PyTorch benchmark wrote no ${outFile}.\n${PYTORCH_INSTRUCTIONS}` };
  }
  return { status: 'ok', report: toReport(outFile, outFile), file: outFile };
}
