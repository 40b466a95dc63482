#!/usr/bin/env node
// Runs the ava suite with TAP output, echoes it, and ends with the line CI reads:
// "N passed, N failed, N skipped". Exits with ava's exit code, and fails if ava failed without
// reporting a failing test (a crash, a timeout, an uncaught exception).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const avaCli = path.join(root, 'node_modules', 'ava', 'entrypoints', 'cli.mjs');
const child = spawn(process.execPath, [avaCli, '--tap', ...process.argv.slice(2)], {
  stdio: ['ignore', 'pipe', 'inherit'],
  env: { ...process.env, FORCE_COLOR: '0' },
});

let passed = 0, failed = 0, skipped = 0, buffer = '';
function line(text) {
  const m = /^(not ok|ok)\b(.*)$/.exec(text);
  if (!m) return;
  if (/#\s*(SKIP|TODO)\b/i.test(m[2])) skipped++;
  else if (m[1] === 'ok') passed++;
  else failed++;
}
child.stdout.on('data', (chunk) => {
  process.stdout.write(chunk);
  buffer += chunk;
  const lines = buffer.split('\n');
  buffer = lines.pop();
  lines.forEach(line);
});
child.on('close', (code, signal) => {
  if (buffer) line(buffer);
  if ((code !== 0 || signal) && failed === 0) failed = 1;  // ava failed outside any test
  console.log(`\n${passed} passed, ${failed} failed, ${skipped} skipped`);
  process.exit(code ?? 1);
});
