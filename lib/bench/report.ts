/** Markdown tables and the SVG plot of a benchmark report. */
import type { BenchReport, BenchRow, CompareRow } from './types.js';

/** Three significant digits without exponents: 1234 → "1234", 12.345 → "12.3", 0.01234 → "0.0123". */
export function fmt(v: number | null | undefined, digits = 3): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a === 0) return '0';
  const decimals = Math.max(0, digits - 1 - Math.floor(Math.log10(a)));
  return v.toFixed(Math.min(decimals, 6));
}

const cell = (s: string) => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');

function table(header: string[], rows: string[][], align?: string[]): string {
  const lines = [`| ${header.join(' | ')} |`, `| ${(align ?? header.map(() => '---')).join(' | ')} |`];
  for (const r of rows) lines.push(`| ${r.map(cell).join(' | ')} |`);
  return lines.join('\n');
}

function params(row: BenchRow): string {
  if (!row.params) return '–';
  const m = (n: number) => (n >= 1e6 ? `${fmt(n / 1e6)}M` : n >= 1e3 ? `${fmt(n / 1e3)}k` : String(n));
  return `${m(row.params.trainable)} / ${m(row.params.total)}`;
}

export function settingsLine(report: BenchReport): string {
  const s = report.settings;
  const opt = s.optimizer === 'adamw' ? `AdamW (lr ${s.lr}, weight decay ${s.weightDecay})` : 'no optimizer (forward + backward)';
  return (
    `${report.implementation} on ${s.device}, ${s.dtype}; warm-up ${s.warmup}, repeats ${s.repeats}; ` +
    `training step = forward + backward + ${opt}; adapters hidden ${s.adapter.hidden}, groups ${s.adapter.groups}, ` +
    `scale ${s.adapter.scale}, dropout ${s.adapter.dropout}; ${s.numClasses} classes` +
    (s.profile ? '; with per-op profiling (adds overhead)' : '')
  );
}

/** The results table (and, with profiles, the top ops of every row). */
export function markdownReport(report: BenchReport, options: { topOps?: number } = {}): string {
  const out: string[] = [`# Benchmark: ${report.implementation}`, '', settingsLine(report) + '.', ''];
  const host = Object.entries(report.host)
    .filter(([, v]) => v !== null && v !== '')
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  out.push(`Host: ${host}.`, '');
  for (const note of report.notes) out.push(`- ${note}`);
  if (report.notes.length) out.push('');
  out.push(
    table(
      ['method', 'model', 'batch', 'ms/step (median)', 'min – max', 'IQR', 'images/s', 'peak RSS (MB)', 'trainable / total params', 'status'],
      report.rows.map((r) => [
        r.method,
        r.model,
        String(r.batch),
        fmt(r.stepMs?.median),
        r.stepMs ? `${fmt(r.stepMs.min)} – ${fmt(r.stepMs.max)}` : '–',
        fmt(r.stepMs?.iqr),
        fmt(r.imagesPerSec),
        r.peakRssMB === undefined ? '–' : r.peakRssMB.toFixed(0),
        params(r),
        r.status === 'ok' ? (r.note ? `ok (${r.note})` : 'ok') : `${r.status}${r.note ? `: ${r.note}` : ''}`,
      ]),
      ['---', '---', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---'],
    ),
  );
  const top = options.topOps ?? 12;
  const profiled = report.rows.filter((r) => r.profile?.length);
  if (profiled.length) {
    out.push('', '## Per-op profile (per step)');
    for (const r of profiled) {
      out.push('', `### ${r.id}`, '');
      out.push(
        table(
          ['op', 'ms', 'calls', 'GFLOP/s', 'share'],
          r.profile!.slice(0, top).map((e) => [
            e.op,
            fmt(e.seconds * 1e3),
            Number.isInteger(e.calls) ? String(e.calls) : fmt(e.calls),
            e.gflops ? fmt(e.gflops) : '–',
            `${(e.share * 100).toFixed(1)}%`,
          ]),
          ['---', '---:', '---:', '---:', '---:'],
        ),
      );
    }
  }
  return out.join('\n') + '\n';
}

export function markdownCompare(rows: CompareRow[], geomean: { train: number | null; infer: number | null; all: number | null }): string {
  const out = [
    '# repadapter vs PyTorch',
    '',
    'time ratio = our median step time / theirs (below 1: we are faster); RSS ratio = our peak RSS / theirs.',
    '',
    table(
      ['method', 'model', 'batch', 'ours ms', 'theirs ms', 'time ratio', 'ours img/s', 'theirs img/s', 'ours RSS MB', 'theirs RSS MB', 'RSS ratio', 'note'],
      rows.map((r) => [
        r.method,
        r.model,
        String(r.batch),
        fmt(r.oursMs),
        fmt(r.theirsMs),
        fmt(r.timeRatio),
        fmt(r.oursImagesPerSec),
        fmt(r.theirsImagesPerSec),
        r.oursRssMB === null ? '–' : r.oursRssMB.toFixed(0),
        r.theirsRssMB === null ? '–' : r.theirsRssMB.toFixed(0),
        fmt(r.rssRatio),
        r.note ?? '',
      ]),
      ['---', '---', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---'],
    ),
    '',
    `Geometric mean time ratio: training ${fmt(geomean.train)}, inference ${fmt(geomean.infer)}, all ${fmt(geomean.all)}.`,
  ];
  return out.join('\n') + '\n';
}

// ---- SVG ---------------------------------------------------------------------------------------

interface Series {
  name: string;
  points: { x: number; y: number; label?: string }[];
}

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** Ticks of a log axis: 1-2-5 steps per decade, thinned to at most ~8. */
function logTicks(lo: number, hi: number): number[] {
  const ticks: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++)
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v >= lo * 0.999 && v <= hi * 1.001) ticks.push(v);
    }
  if (ticks.length > 8) return ticks.filter((v) => Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9);
  if (ticks.length < 2) return [lo, hi];
  return ticks;
}

const tickLabel = (v: number) => (v >= 1e6 || v < 1e-3 ? v.toExponential(0) : v >= 100 ? String(Math.round(v)) : fmt(v, 2).replace(/\.0+$/, ''));

/** One log-log panel at (x0, y0) of size w × h. */
function panel(
  x0: number,
  y0: number,
  w: number,
  h: number,
  title: string,
  xLabel: string,
  yLabel: string,
  series: Series[],
  colors: Map<string, string>,
  xTicks?: { x: number; label: string }[],
): string {
  const m = { l: 58, r: 12, t: 28, b: 44 };
  const pw = w - m.l - m.r;
  const ph = h - m.t - m.b;
  const out: string[] = [`<g transform="translate(${x0},${y0})">`];
  out.push(`<text x="${m.l + pw / 2}" y="16" text-anchor="middle" font-weight="600">${esc(title)}</text>`);
  const pts = series.flatMap((s) => s.points).filter((p) => p.x > 0 && p.y > 0 && Number.isFinite(p.x) && Number.isFinite(p.y));
  out.push(`<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`);
  if (!pts.length) {
    out.push(`<text x="${m.l + pw / 2}" y="${m.t + ph / 2}" text-anchor="middle" fill="#777">no data</text></g>`);
    return out.join('\n');
  }
  let [xlo, xhi] = [Math.min(...pts.map((p) => p.x)), Math.max(...pts.map((p) => p.x))];
  let [ylo, yhi] = [Math.min(...pts.map((p) => p.y)), Math.max(...pts.map((p) => p.y))];
  if (xhi / xlo < 1.5) [xlo, xhi] = [xlo / 1.5, xhi * 1.5];
  if (yhi / ylo < 1.5) [ylo, yhi] = [ylo / 1.5, yhi * 1.5];
  const pad = (lo: number, hi: number): [number, number] => {
    const r = Math.log10(hi / lo) * 0.06;
    return [lo / 10 ** r, hi * 10 ** r];
  };
  [xlo, xhi] = pad(xlo, xhi);
  [ylo, yhi] = pad(ylo, yhi);
  const sx = (x: number) => m.l + (Math.log(x / xlo) / Math.log(xhi / xlo)) * pw;
  const sy = (y: number) => m.t + ph - (Math.log(y / ylo) / Math.log(yhi / ylo)) * ph;
  for (const t of logTicks(ylo, yhi)) {
    const y = sy(t).toFixed(1);
    out.push(`<line x1="${m.l}" x2="${m.l + pw}" y1="${y}" y2="${y}" stroke="#eee"/>`);
    out.push(`<text x="${m.l - 5}" y="${y}" text-anchor="end" dominant-baseline="middle">${tickLabel(t)}</text>`);
  }
  const xt = xTicks ?? logTicks(xlo, xhi).map((x) => ({ x, label: tickLabel(x) }));
  for (const t of xt) {
    const x = sx(t.x).toFixed(1);
    out.push(`<line x1="${x}" x2="${x}" y1="${m.t}" y2="${m.t + ph}" stroke="#eee"/>`);
    out.push(`<text x="${x}" y="${m.t + ph + 14}" text-anchor="middle">${esc(t.label)}</text>`);
  }
  out.push(`<text x="${m.l + pw / 2}" y="${h - 6}" text-anchor="middle">${esc(xLabel)}</text>`);
  out.push(`<text transform="translate(13,${m.t + ph / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}</text>`);
  for (const s of series) {
    const color = colors.get(s.name) ?? '#333';
    const p = s.points.filter((q) => q.x > 0 && q.y > 0).sort((a, b) => a.x - b.x);
    if (p.length > 1)
      out.push(`<polyline fill="none" stroke="${color}" stroke-width="1.6" points="${p.map((q) => `${sx(q.x).toFixed(1)},${sy(q.y).toFixed(1)}`).join(' ')}"/>`);
    for (const q of p)
      out.push(
        `<circle cx="${sx(q.x).toFixed(1)}" cy="${sy(q.y).toFixed(1)}" r="2.6" fill="${color}"><title>${esc(`${s.name}: ${q.label ?? q.x} → ${fmt(q.y)} ms`)}</title></circle>`,
      );
  }
  out.push('</g>');
  return out.join('\n');
}

/**
 * Two log-log panels: median step time vs batch size (for the first model), and vs model size
 * (total parameters; each method at the largest batch every model ran).
 */
export function svgPlot(report: BenchReport): string {
  const ok = report.rows.filter((r) => r.status === 'ok' && r.stepMs);
  const methods = [...new Set(report.rows.map((r) => r.method))];
  const colors = new Map(methods.map((m, i) => [m, PALETTE[i % PALETTE.length]]));
  const models = [...new Set(report.rows.map((r) => r.model))];
  const first = models[0] ?? '';

  const byBatch: Series[] = methods.map((name) => ({
    name,
    points: ok.filter((r) => r.method === name && r.model === first).map((r) => ({ x: r.batch, y: r.stepMs!.median, label: `batch ${r.batch}` })),
  }));
  const batches = [...new Set(ok.filter((r) => r.model === first).map((r) => r.batch))].sort((a, b) => a - b);

  const sizeOf = new Map<string, number>();
  for (const r of report.rows) if (r.params && r.method !== 'infer-folded' && !sizeOf.has(r.model) && !r.placement) sizeOf.set(r.model, r.params.total);
  for (const r of report.rows) if (r.params && !sizeOf.has(r.model)) sizeOf.set(r.model, r.params.total);
  const bySize: Series[] = [];
  for (const name of methods) {
    const rows = ok.filter((r) => r.method === name && sizeOf.has(r.model));
    const common = [...new Set(rows.map((r) => r.batch))].filter((b) => models.every((m) => rows.some((r) => r.model === m && r.batch === b)));
    const b = common.length ? Math.max(...common) : null;
    if (b === null) continue;
    bySize.push({
      name,
      points: rows.filter((r) => r.batch === b).map((r) => ({ x: sizeOf.get(r.model)! / 1e6, y: r.stepMs!.median, label: `${r.model}, batch ${b}` })),
    });
  }
  const sizeTicks = [...sizeOf.entries()].map(([m, n]) => ({ x: n / 1e6, label: fmt(n / 1e6, 2) }));

  const W = 920;
  const H = 340;
  const legendH = 22 * Math.ceil(methods.length / 4) + 8;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H + legendH}" viewBox="0 0 ${W} ${H + legendH}" font-family="system-ui, sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    panel(0, 0, W / 2, H, `Step time vs batch (${first})`, 'batch size', 'ms / step (median)', byBatch, colors,
      batches.map((b) => ({ x: b, label: String(b) }))),
    models.length > 1
      ? panel(W / 2, 0, W / 2, H, 'Step time vs model size (largest common batch)', 'parameters (M)', 'ms / step (median)', bySize, colors, sizeTicks)
      : `<g transform="translate(${W / 2},0)"><text x="${W / 4}" y="${H / 2}" text-anchor="middle" fill="#777">one model: run with --sizes tiny,small,base for the size sweep</text></g>`,
  ];
  methods.forEach((m, i) => {
    const x = 20 + (i % 4) * (W / 4);
    const y = H + 14 + Math.floor(i / 4) * 22;
    parts.push(`<line x1="${x}" x2="${x + 18}" y1="${y}" y2="${y}" stroke="${colors.get(m)}" stroke-width="2"/>`);
    parts.push(`<circle cx="${x + 9}" cy="${y}" r="2.6" fill="${colors.get(m)}"/>`);
    parts.push(`<text x="${x + 24}" y="${y}" dominant-baseline="middle">${esc(m)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
