/**
 * A sweep's progress rate for status and ETA: cells per second over a recent window of time, so
 * the rate falls to 0 when results stop arriving (no agent serves the sweep); time while the sweep
 * was not running (cancelled, failed) is not counted after a resume; and no ETA until enough
 * results arrived for the rate to mean something.
 */

/** The window the rate is measured over, and what an ETA needs. */
export interface ProgressRateOptions {
  /** Rate window (ms). Default 30 s. */
  windowMs?: number;
  /** No ETA before this many ms of results since the first result after (re)starting. Default 5 s. */
  minEtaMs?: number;
  /** No ETA before this many cells arrived since (re)starting. Default 1. */
  minEtaCells?: number;
}

/** Samples closer together than this are merged into one (the rate's resolution). */
const SAMPLE_SPACING_MS = 100;

/** What {@link ProgressRate.at} says. */
export interface ProgressEstimate {
  /** Cells per second over the window; 0 when none arrived within it. */
  rate: number;
  /** Seconds left at that rate; 0 when unknown (not running, no rate, too few results yet). */
  eta: number;
}

/**
 * Samples (time, done cells) while a sweep runs. The first sample after `start` is where cells
 * begin to arrive: time before the first result (model load, first lease) is not part of the rate.
 *
 * @example
 * const r = new ProgressRate();
 * r.start(Date.now(), 0);            // launch or resume
 * r.sample(Date.now(), doneCells);   // on every change
 * const { rate, eta } = r.at(Date.now(), doneCells, plannedCells);
 * r.stop();                          // cancelled / failed / done: the paused time never counts
 */
export class ProgressRate {
  private readonly windowMs: number;
  private readonly minEtaMs: number;
  private readonly minEtaCells: number;
  private samples: { t: number; cells: number }[] = [];
  private running = false;
  /** Cells when (re)started and the time the first result after it came. */
  private base = { cells: 0, firstResultMs: 0 };

  constructor(o: ProgressRateOptions = {}) {
    this.windowMs = o.windowMs ?? 30_000;
    this.minEtaMs = o.minEtaMs ?? 5_000;
    this.minEtaCells = o.minEtaCells ?? 1;
  }

  /** The sweep runs from `now` with `cells` already done (launch, resume, a restarted coordinator). */
  start(now: number, cells: number): void {
    this.running = true;
    this.samples = [{ t: now, cells }];
    this.base = { cells, firstResultMs: 0 };
  }

  /** The sweep stopped running (done, failed, cancelled): no rate until `start` again. */
  stop(): void {
    this.running = false;
    this.samples = [];
  }

  /** Done cells changed (or not) at `now`. */
  sample(now: number, cells: number): void {
    if (!this.running) return;
    const last = this.samples.at(-1);
    if (last && cells > last.cells && this.base.firstResultMs === 0) {
      this.base.firstResultMs = now;
      this.samples = [{ t: now, cells: last.cells }]; // the wait for the first result is not the rate
    }
    // Samples closer than SAMPLE_SPACING_MS to the one before are merged: a coordinator samples on
    // every grant and result, and an array of every sample of the window, shifted one at a time,
    // took 14% of its CPU at 1,000 agents (bench/coordinator-load).
    const cur = this.samples.at(-1);
    const prev = this.samples.at(-2);
    if (cur && prev && now - prev.t < SAMPLE_SPACING_MS && this.samples.length > 2) {
      cur.t = now;
      cur.cells = cells;
    } else this.samples.push({ t: now, cells });
    // Keep one sample at or before the window's start, so the window is always covered.
    let drop = 0;
    while (this.samples.length - drop > 2 && now - this.samples[drop + 1]!.t >= this.windowMs) drop++;
    if (drop > 0) this.samples.splice(0, drop);
  }

  /** Rate over the last window ending `now`, and the ETA for `planned` cells. */
  at(now: number, done: number, planned: number): ProgressEstimate {
    if (!this.running || this.samples.length === 0 || this.base.firstResultMs === 0) return { rate: 0, eta: 0 };
    const from = Math.max(now - this.windowMs, this.samples[0]!.t);
    // Cells done at `from`: the last sample at or before it (step function: cells arrive in shards).
    let cellsAtFrom = this.samples[0]!.cells;
    for (const s of this.samples) if (s.t <= from) cellsAtFrom = s.cells;
    const dt = (now - from) / 1000;
    const rate = dt >= 1 ? Math.max(0, done - cellsAtFrom) / dt : 0; // under a second: no rate yet
    const enough = now - this.base.firstResultMs >= this.minEtaMs && done - this.base.cells >= this.minEtaCells;
    return { rate, eta: rate > 0 && enough ? Math.max(0, planned - done) / rate : 0 };
  }
}
