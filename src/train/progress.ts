export interface ProgressUpdate {
  /** Completed updates. */
  step: number;
  loss: number;
  evalLoss?: number;
  tokensPerSec: number;
  lr?: number;
}

export interface ProgressStream {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressOptions {
  total: number;
  /** Updates already done when this process started (a resumed run): the ETA uses only this run's pace. */
  startStep?: number;
  /** Without a TTY, one line every `logEvery` steps (and at the last). */
  logEvery?: number;
  stream?: ProgressStream;
  now?: () => number;
}

export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '?';
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600);
  const mi = Math.floor((s % 3600) / 60);
  const se = s % 60;
  return h > 0 ? `${h}h${String(mi).padStart(2, '0')}m` : mi > 0 ? `${mi}m${String(se).padStart(2, '0')}s` : `${se}s`;
}

function formatRate(r: number): string {
  return r >= 1e6 ? `${(r / 1e6).toFixed(2)}M` : r >= 1e3 ? `${(r / 1e3).toFixed(1)}k` : r.toFixed(0);
}

/**
 * Progress of the training loop on stderr. On a terminal: one line redrawn in
 * place (carriage return + clear to end of line) with a bar; otherwise (a file,
 * a pipe, CI) plain lines every `logEvery` steps, which log collectors keep readable.
 */
export class Progress {
  private readonly total: number;
  private readonly startStep: number;
  private readonly logEvery: number;
  private readonly stream: ProgressStream;
  private readonly now: () => number;
  private readonly t0: number;
  private drawn = false;

  constructor(o: ProgressOptions) {
    this.total = o.total;
    this.startStep = o.startStep ?? 0;
    this.logEvery = Math.max(1, o.logEvery ?? 1);
    this.stream = o.stream ?? process.stderr;
    this.now = o.now ?? (() => Date.now());
    this.t0 = this.now();
  }

  get tty(): boolean {
    return this.stream.isTTY === true;
  }

  /** Estimated time to the last step, from this process's average pace. */
  eta(step: number): number {
    const done = step - this.startStep;
    if (done <= 0) return NaN;
    return ((this.now() - this.t0) / done) * (this.total - step);
  }

  line(u: ProgressUpdate, barWidth: number): string {
    const w = String(this.total).length;
    const parts = [`step ${String(u.step).padStart(w)}/${this.total}`, `loss ${u.loss.toFixed(4)}`];
    if (u.evalLoss !== undefined) parts.push(`eval ${u.evalLoss.toFixed(4)}`);
    parts.push(`${formatRate(u.tokensPerSec)} tok/s`);
    if (u.lr !== undefined) parts.push(`lr ${u.lr.toExponential(2)}`);
    parts.push(`ETA ${formatDuration(this.eta(u.step))}`);
    const text = parts.join(' | ');
    if (barWidth <= 0) return text;
    const filled = Math.round((Math.min(u.step, this.total) / this.total) * barWidth);
    return `[${'#'.repeat(filled)}${'-'.repeat(barWidth - filled)}] ${text}`;
  }

  update(u: ProgressUpdate): void {
    if (this.tty) {
      const cols = this.stream.columns ?? 100;
      const bar = Math.max(0, Math.min(30, cols - 90));
      this.stream.write(`\r${this.line(u, bar).slice(0, Math.max(10, cols - 1))}\x1b[K`);
      this.drawn = true;
    } else if (u.step % this.logEvery === 0 || u.step === this.total || u.evalLoss !== undefined) {
      this.stream.write(this.line(u, 0) + '\n');
    }
  }

  /** Ends the redrawn line so whatever is printed next starts on a fresh one. */
  done(): void {
    if (this.tty && this.drawn) this.stream.write('\n');
    this.drawn = false;
  }
}
