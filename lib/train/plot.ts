/**
 * The end-of-run plot: training loss and evaluation top-1 per epoch, as a self-contained SVG
 * (opens in any browser, no dependency).
 */
import { writeFile } from 'node:fs/promises';

import type { EpochRecord } from './trainer.js';

const W = 720, H = 360, M = { left: 56, right: 56, top: 28, bottom: 44 };

function polyline(points: [number, number][], colour: string): string {
  if (points.length === 0) return '';
  const d = points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ');
  const dots = points.map(([x, y]) => `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="2.5" fill="${colour}"/>`).join('');
  return `<polyline fill="none" stroke="${colour}" stroke-width="2" points="${d}"/>${dots}`;
}

export function plotSvg(history: readonly EpochRecord[]): string {
  const n = history.length;
  const x = (i: number) => M.left + (n > 1 ? (i / (n - 1)) * (W - M.left - M.right) : (W - M.left - M.right) / 2);
  const maxLoss = Math.max(...history.map((r) => r.loss), 1e-9);
  const yLoss = (v: number) => H - M.bottom - (v / maxLoss) * (H - M.top - M.bottom);
  const yAcc = (v: number) => H - M.bottom - v * (H - M.top - M.bottom);
  const loss = polyline(history.map((r, i) => [x(i), yLoss(r.loss)]), '#1f77b4');
  const acc = polyline(
    history.flatMap((r, i) => (r.eval ? [[x(i), yAcc(r.eval.top1)] as [number, number]] : [])),
    '#d62728',
  );
  const ticks = [0, 0.25, 0.5, 0.75, 1]
    .map((f) => {
      const y = H - M.bottom - f * (H - M.top - M.bottom);
      return (
        `<line x1="${M.left}" x2="${W - M.right}" y1="${y}" y2="${y}" stroke="#eee"/>` +
        `<text x="${M.left - 6}" y="${y + 4}" text-anchor="end" fill="#1f77b4">${(f * maxLoss).toFixed(2)}</text>` +
        `<text x="${W - M.right + 6}" y="${y + 4}" fill="#d62728">${(100 * f).toFixed(0)}%</text>`
      );
    })
    .join('');
  const epochs = history
    .map((r, i) => `<text x="${x(i)}" y="${H - M.bottom + 16}" text-anchor="middle">${r.epoch + 1}</text>`)
    .filter((_, i) => n <= 20 || i % Math.ceil(n / 20) === 0)
    .join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">
<rect width="${W}" height="${H}" fill="white"/>${ticks}
<line x1="${M.left}" x2="${W - M.right}" y1="${H - M.bottom}" y2="${H - M.bottom}" stroke="#444"/>${epochs}
<text x="${W / 2}" y="${H - 8}" text-anchor="middle">epoch</text>
<text x="${M.left}" y="16" fill="#1f77b4">training loss</text>
<text x="${W - M.right}" y="16" text-anchor="end" fill="#d62728">evaluation top-1</text>
${loss}${acc}
</svg>
`;
}

export async function writePlot(path: string, history: readonly EpochRecord[]): Promise<void> {
  await writeFile(path, plotSvg(history));
}
