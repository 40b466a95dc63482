/**
 * Progress of a training run: one redrawn line with a bar on a terminal, plain lines otherwise
 * (logs, CI). Shows loss, lr, images/s and the time left in the epoch.
 */
import type { EpochRecord } from './trainer.js';

export type ProgressMode = 'auto' | 'bar' | 'lines' | 'none';

function clock(seconds: number): string {
  if (!Number.isFinite(seconds)) return '--:--';
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n: number) => String(n).padStart(2, '0');
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${pad(m)}:${pad(s % 60)}`;
}

export class Progress {
  readonly #mode: Exclude<ProgressMode, 'auto'>;
  readonly #epochs: number;
  readonly #steps: number;
  #epoch = 0;
  #first = 0;
  #started = 0;
  #lastLine = 0;
  #drawn = false;

  constructor(mode: ProgressMode, epochs: number, stepsPerEpoch: number, stream = process.stderr) {
    this.#mode = mode === 'auto' ? (stream.isTTY ? 'bar' : 'lines') : mode;
    this.#epochs = epochs;
    this.#steps = stepsPerEpoch;
  }

  startEpoch(epoch: number, firstStep: number): void {
    this.#epoch = epoch;
    this.#first = firstStep;
    this.#started = performance.now();
    this.#lastLine = 0;
  }

  step(done: number, loss: number, lr: number, imagesPerSecond: number): void {
    if (this.#mode === 'none') return;
    const elapsed = (performance.now() - this.#started) / 1000;
    const rate = (done - this.#first) / Math.max(elapsed, 1e-9);
    const eta = (this.#steps - done) / rate;
    const text =
      `epoch ${this.#epoch + 1}/${this.#epochs} step ${done}/${this.#steps} loss ${loss.toFixed(4)} ` +
      `lr ${lr.toExponential(2)} ${imagesPerSecond.toFixed(1)} img/s ETA ${clock(eta)}`;
    if (this.#mode === 'bar') {
      const width = 20;
      const filled = Math.round((done / this.#steps) * width);
      process.stderr.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${text}\x1b[K`);
      this.#drawn = true;
    } else if (done === this.#steps || elapsed - this.#lastLine >= 10) {
      this.#lastLine = elapsed;
      process.stderr.write(`${text}\n`);
    }
  }

  endEpoch(r: EpochRecord): void {
    if (this.#mode === 'none') return;
    this.#clear();
    const evalText = r.eval ? ` | eval top-1 ${(100 * r.eval.top1).toFixed(2)}% loss ${r.eval.loss.toFixed(4)}` : '';
    process.stderr.write(
      `epoch ${r.epoch + 1}/${this.#epochs}: loss ${r.loss.toFixed(4)}, ${r.imagesPerSecond.toFixed(1)} img/s, ` +
        `${clock(r.seconds)}${evalText}\n`,
    );
  }

  note(text: string): void {
    if (this.#mode === 'none') return;
    this.#clear();
    process.stderr.write(`${text}\n`);
  }

  done(): void {
    this.#clear();
  }

  #clear(): void {
    if (this.#drawn) process.stderr.write('\r\x1b[K');
    this.#drawn = false;
  }
}
