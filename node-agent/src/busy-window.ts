/**
 * How busy an engine worker was over a recent window: the share of wall time in which it had at
 * least one request in flight. A worker serves its requests one after another in the order they
 * were sent, so "a request in flight" is "the engine is computing (or sending an answer)"; time
 * between the last answer and the agent's next request is idle. Read by the
 * `factsweep_agent_worker_busy_ratio{worker}` gauge.
 */

/** Busy intervals of one worker over the last `windowMs`. */
export class BusyWindow {
  /** Closed busy intervals [start, end), oldest first, trimmed to the window. */
  private readonly spans: [number, number][] = [];
  private openSince: number | undefined;
  private readonly createdAt: number;

  /** @param windowMs how far back {@link ratio} looks. Default 60 s. */
  constructor(
    readonly windowMs = 60_000,
    now = Date.now(),
  ) {
    this.createdAt = now;
  }

  /** The worker has `inFlight` requests in flight from `now` on (after a request was sent or answered). */
  update(inFlight: number, now = Date.now()): void {
    if (inFlight > 0 && this.openSince === undefined) {
      this.openSince = now;
    } else if (inFlight === 0 && this.openSince !== undefined) {
      this.spans.push([this.openSince, now]);
      this.openSince = undefined;
      this.trim(now);
    }
  }

  /**
   * Busy share of the last `windowMs` (of the time since this window was created, when that is
   * shorter), in [0, 1].
   */
  ratio(now = Date.now()): number {
    this.trim(now);
    const from = Math.max(now - this.windowMs, this.createdAt);
    const span = now - from;
    if (span <= 0) return 0;
    let busy = 0;
    for (const [s, e] of this.spans) busy += Math.max(0, e - Math.max(s, from));
    if (this.openSince !== undefined) busy += now - Math.max(this.openSince, from);
    return Math.min(1, Math.max(0, busy / span));
  }

  private trim(now: number): void {
    const from = now - this.windowMs;
    while (this.spans.length > 0 && this.spans[0]![1] <= from) this.spans.shift();
  }
}
