import { rng } from '../lib/bench/stats.js';
import type { ParamInfo, ViT } from '../lib/index.js';

/** Small numeric helpers shared by the tests. */

/** max |a − b| / max |b|: an error relative to the reference's scale. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return scale === 0 ? diff : diff / scale;
}

/** The seeded generator (mulberry32) the benchmark uses too. */
export { rng };

/** n standard-normal values (Box–Muller) scaled by std. */
export function randn(random: () => number, n: number, std = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = 1 - random();
    const v = random();
    out[i] = std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return out;
}

/** Fills parameters with random values of a realistic scale (1/√fan-in for matrices). */
export function randomise(vit: ViT, seed: number, which: (p: ParamInfo) => boolean = () => true): void {
  const random = rng(seed);
  for (const p of vit.parameters()) {
    if (!which(p)) continue;
    const n = p.shape.reduce((a, b) => a * b, 1);
    const fanIn = p.shape.length > 1 ? n / p.shape[0] : 1;
    const std = p.shape.length > 1 ? 1 / Math.sqrt(fanIn) : 0.1;
    const values = randn(random, n, p.name.includes('conv_B') ? 0.3 : std);
    if (p.role === 'norm' && p.name.endsWith('weight')) for (let i = 0; i < n; i++) values[i] += 1;
    vit.setParam(p.name, values);
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** x rounded to bf16 (nearest, ties to even) and widened back: written independently of the native code. */
export function bf16Round(x: number): number {
  f32[0] = x;
  const u = u32[0];
  if ((u & 0x7fffffff) > 0x7f800000) return x; // NaN
  const lower = u & 0xffff;
  let upper = u >>> 16;
  if (lower > 0x8000 || (lower === 0x8000 && (upper & 1) === 1)) upper += 1;
  u32[0] = (upper << 16) >>> 0;
  return f32[0];
}
