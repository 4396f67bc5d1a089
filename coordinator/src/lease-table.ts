// long-file: over 400 lines on purpose: the shard state machine and its indexes (by sweep, by lease, prompt homes) change together; the agents are in agent-pool.ts.
/**
 * The lease table: which shard is pending, leased (to which agent, until when), done or failed,
 * and which agent gets the next shard. Pure logic over an injected clock, so expiry, backoff,
 * attempt limits and cache affinity are unit-tested without timers; the coordinator persists
 * every entry this table reports as changed.
 */
import { randomUUID } from "node:crypto";
import { AgentHeap, AgentPool, type AgentInfo, type AgentSlot } from "./agent-pool.js";
import { COUNTED, ENTRY, FRESH, GONE, parseShardId, SweepSlots } from "./shard-slots.js";

/** Lifecycle of a shard: pending → leased → done, or back to pending (retry) or failed. */
export type ShardState = "pending" | "leased" | "done" | "failed";

/** The scheduling state of one shard (the shard's cells live in the state store, not here). */
export interface ShardEntry {
  shardId: string;
  sweepId: string;
  /** Engine cache key of the shard's prompt: the unit of cache affinity. */
  promptKey: string;
  cells: number;
  state: ShardState;
  /** Leases granted so far (a grant counts as an attempt). */
  attempts: number;
  leaseId: string;
  agentId: string;
  leaseExpiresMs: number;
  /** Backoff: not granted again before this time. */
  notBeforeMs: number;
  lastError: string;
  /** The shard's ShardResult was aggregated (only then does it count as done for the sweep). */
  resultConsumed: boolean;
  /** When the current lease was granted: it is revoked `maxLeaseMs` later, heartbeats or not (absent in older records). */
  leasedMs?: number;
  /** When an agent reported the shard done (its result not yet counted): re-leased after `uncountedTimeoutMs`. */
  doneMs?: number;
  /** Agents whose disconnect already cost this shard an attempt (a second one from the same agent is not counted). */
  disconnects?: string[];
}

/**
 * `notBeforeMs` of a shard held until an input another shard makes exists (an edit waiting for its
 * ROME covariance): never granted until {@link LeaseTable.release}; stored as is, so a restarted
 * coordinator holds it too.
 */
export const HELD_MS = Number.MAX_SAFE_INTEGER;

/** Grants and disconnecting agents remembered per shard. */
const HISTORY = 16;

/** A lease handed to an agent by `schedule`. */
export interface Grant {
  agentId: string;
  shardId: string;
  leaseId: string;
  attempt: number;
  ttlMs: number;
}

/** A lease the coordinator must tell an agent to drop (CancelLease). */
export interface Revocation {
  agentId: string;
  leaseId: string;
  shardId: string;
  reason: string;
}

/** What a table operation changed: entries to persist, leases to revoke, counters to bump. */
export interface Changes {
  changed: ShardEntry[];
  revoked: Revocation[];
  expirations: number;
  retries: number;
  newlyFailed: number;
  /** Done/failed reports for a lease the reporting agent does not hold (ignored). */
  ignored: number;
  /** Leases held past `maxLeaseMs`, revoked and re-queued. */
  overdue: number;
  /** Shards reported done whose result was not counted in time, re-queued. */
  uncounted: number;
}

/** Tunables of the lease table; `clock` is injected so tests control time. */
export interface LeaseTableOptions {
  clock?: () => number;
  leaseTtlMs: number;
  /** First retry waits this long; each further attempt doubles it. */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  newLeaseId?: () => string;
  /** A shard reported done whose result is not counted within this is leased again; default 3 lease TTLs. */
  uncountedTimeoutMs?: number;
  /** Longest a lease may be held, however often heartbeats renew it; then revoked and re-queued. 0: no limit. Default 0. */
  maxLeaseMs?: number;
  /** A sweep left waiting for a grant gains one priority level per this many ms (no sweep starves). Default 300,000. */
  priorityAgingMs?: number;
}

/** How a sweep shares the agents with others: see `schedule`. */
export interface SweepShare {
  /** Higher first. */
  priority: number;
  /** Share of the grants among sweeps of one priority, relative to the others' weights (> 0). */
  weight: number;
}

const DEFAULT_SHARE: SweepShare = { priority: 0, weight: 1 };

interface SweepSlot extends SweepShare {
  active: boolean;
  maxAttempts: number;
  /** Grants so far over weight, in "virtual time" (stride scheduling): the lowest is served next. */
  pass: number;
  /** When it was last granted a shard (or activated): its priority ages from here. */
  servedMs: number;
}

/** What a sweep's counts file a shard under: done only once its result is counted. */
type Tally = "pending" | "leased" | "done" | "failed";

/** A sweep's shards by tally, kept up to date on every change: counts() without a scan of the sweep. */
interface SweepTally {
  total: number;
  pending: number;
  leased: number;
  done: number;
  failed: number;
  doneCells: number;
  /** Attempts beyond each shard's first, summed (the sweep's retries). */
  retries: number;
  failedShards: Set<ShardEntry>;
}

/** The tally a shard is counted under (hidden from JSON: the entry is persisted as it is). */
const TALLY = Symbol("tally");
const RETRIES = Symbol("retries");
/** Its place in its sweep's grant queue (absolute; -1: not queued; IN_RANGE: in the slot range of its plan slot). */
const QPOS = Symbol("qpos");
/** Its slot in its sweep's {@link SweepSlots} (-1: its id has none, the entry alone holds it). */
const SLOT = Symbol("slot");
/** A copy made for a caller from a slot (not the table's: never tallied). */
const VIEW = Symbol("view");
type Tallied = ShardEntry & { [TALLY]?: Tally; [RETRIES]?: number; [QPOS]?: number; [SLOT]?: number; [VIEW]?: boolean };
const IN_RANGE = -2;

/** Where `schedule` is in a sweep's queue: item i, and slot j when item i is a slot range. */
interface Cursor {
  i: number;
  j: number;
  w: SweepShards;
}

/**
 * The table's own copy of an entry, every field (and the hidden ones) set at creation: one object of
 * one shape per shard. (A spread copy given the hidden fields later took a second allocation and a
 * shape change per shard: 10% of the time of adding 1M shards went to `tally` alone.)
 */
function ownEntry(r: ShardEntry): Tallied {
  return new OwnEntry(r);
}

class OwnEntry implements ShardEntry {
  shardId: string;
  sweepId: string;
  promptKey: string;
  cells: number;
  state: ShardState;
  attempts: number;
  leaseId: string;
  agentId: string;
  leaseExpiresMs: number;
  notBeforeMs: number;
  lastError: string;
  resultConsumed: boolean;
  leasedMs: number | undefined;
  doneMs: number | undefined;
  disconnects: string[] | undefined;
  [TALLY]: Tally | undefined = undefined;
  [RETRIES] = 0;
  [QPOS] = -1;
  [SLOT] = -1;
  constructor(r: ShardEntry) {
    this.shardId = r.shardId;
    this.sweepId = r.sweepId;
    this.promptKey = r.promptKey;
    this.cells = r.cells;
    this.state = r.state;
    this.attempts = r.attempts;
    this.leaseId = r.leaseId;
    this.agentId = r.agentId;
    this.leaseExpiresMs = r.leaseExpiresMs;
    this.notBeforeMs = r.notBeforeMs;
    this.lastError = r.lastError;
    this.resultConsumed = r.resultConsumed;
    this.leasedMs = r.leasedMs;
    this.doneMs = r.doneMs;
    this.disconnects = r.disconnects;
  }
}

/** Consecutive plan slots of a sweep queued in one place: those still FRESH, and entries made from them while `IN_RANGE`. */
class SlotRange {
  constructor(
    public from: number,
    public to: number,
  ) {}
}

/**
 * A sweep's grant queue: the shards that may be pending, first in first out, in an array (a Set of
 * 1M entries cost ~30 bytes and a hash insert each). Fresh plan shards are queued as slot ranges (no
 * object each); an entry knows its place, so removal is a slot cleared; cleared slots before the
 * head are dropped once they are half the array.
 */
class GrantQueue {
  items: (Tallied | SlotRange | undefined)[] = [];
  /** Absolute position of items[0]. */
  base = 0;
  size = 0;

  add(e: Tallied): void {
    const q = e[QPOS] ?? -1;
    if (q >= 0 || q === IN_RANGE) return;
    e[QPOS] = this.base + this.items.length;
    this.items.push(e);
    this.size++;
  }

  /** Queues a new FRESH slot (slots come in increasing order: the last range grows). */
  addSlot(slot: number): void {
    const last = this.items[this.items.length - 1];
    if (last instanceof SlotRange && last.to === slot) last.to++;
    else this.items.push(new SlotRange(slot, slot + 1));
    this.size++;
  }

  delete(e: Tallied): void {
    const p = e[QPOS] ?? -1;
    if (p === -1) return;
    e[QPOS] = -1;
    if (p >= 0) {
      const i = p - this.base;
      if (this.items[i] === e) this.items[i] = undefined;
    }
    this.size--;
  }

  /** Drops the cleared head (between schedule calls only: cursors are indexes into `items`). */
  compact(): void {
    const cleared = (x: Tallied | SlotRange | undefined) => x === undefined || (x instanceof SlotRange && x.from >= x.to);
    let h = 0;
    while (h < this.items.length && cleared(this.items[h])) h++;
    if (h === 0 || (h < this.items.length && h * 2 < this.items.length)) return;
    this.items = this.items.slice(h);
    this.base += h;
  }
}

/** A sweep's shards: plan slots, the entries made from them (by slot), and entries of ids with no slot. */
interface SweepShards {
  slots: SweepSlots;
  bySlot: Map<number, Tallied>;
  /** By shard id: a restore over one keeps its place. */
  others: Map<string, Tallied>;
}

function tallyOf(s: ShardEntry): Tally {
  if (s.state === "done") return s.resultConsumed ? "done" : "pending"; // done by the agent, result not yet counted
  return s.state;
}

const emptyChanges = (): Changes => ({ changed: [], revoked: [], expirations: 0, retries: 0, newlyFailed: 0, ignored: 0, uncounted: 0, overdue: 0 });

/** Shard and agent scheduling state of the coordinator. Not thread-safe by design: one owner. */
export class LeaseTable {
  readonly leaseTtlMs: number;
  readonly uncountedTimeoutMs: number;
  readonly maxLeaseMs: number;
  readonly priorityAgingMs: number;
  private readonly clock: () => number;
  private readonly backoffBaseMs: number;
  private readonly backoffMaxMs: number;
  private readonly newLeaseId: () => string;
  /** Entry objects by shard id: shards granted, held, retried, failed, or not yet settled after counting (fresh and counted plan shards are slots). */
  private readonly shards = new Map<string, Tallied>();
  /** Shards by sweep: plan slots and entries. */
  private readonly bySweep = new Map<string, SweepShards>();
  private readonly byLease = new Map<string, ShardEntry>();
  /** Leased shards by agent id, so an agent's load is a lookup, not a scan of every lease. */
  private readonly byAgent = new Map<string, Set<ShardEntry>>();
  /**
   * Each sweep's shards that may be pending, in the order they became so: `schedule` walks these,
   * not every shard, and drops what is no longer pending (lazily). An inactive sweep's queue is
   * not walked; activation queues its pending shards again.
   */
  private readonly queues = new Map<string, GrantQueue>();
  /** The pass of the sweep served last: a sweep that rejoins the competition starts at least here. */
  private virtualTime = 0;
  private readonly agents = new AgentPool();
  private readonly sweeps = new Map<string, SweepSlot>();
  /** Last agent a prompt was leased to: it is preparing or holds that prompt's runs. */
  private readonly promptHome = new Map<string, string>();
  /** Shards reported done whose result is not counted yet, by shard id. */
  private readonly uncounted = new Map<string, ShardEntry>();
  /** The same by agent (an agent's lease journal lists them). */
  private readonly uncountedByAgent = new Map<string, Set<ShardEntry>>();
  /** The lease each aggregated result came under, by shard id, until `resultConsumed` (see `resultFrom`). */
  private readonly resultLeases = new Map<string, string>();
  /** Each sweep's counts, updated by `tally` after every change (counts() was a scan per call: 61% of the coordinator's CPU at 1,000 agents). */
  private readonly tallies = new Map<string, SweepTally>();

  constructor(opts: LeaseTableOptions) {
    this.clock = opts.clock ?? Date.now;
    this.leaseTtlMs = opts.leaseTtlMs;
    this.backoffBaseMs = opts.backoffBaseMs ?? 1000;
    this.backoffMaxMs = opts.backoffMaxMs ?? 60_000;
    this.newLeaseId = opts.newLeaseId ?? randomUUID;
    this.uncountedTimeoutMs = opts.uncountedTimeoutMs ?? 3 * opts.leaseTtlMs;
    this.maxLeaseMs = opts.maxLeaseMs ?? 0;
    this.priorityAgingMs = opts.priorityAgingMs ?? 300_000;
  }

  /**
   * Registers a sweep's scheduling policy; inactive sweeps (cancelled, finished) get no grants.
   * `share` left out keeps the sweep's earlier one (default priority 0, weight 1).
   */
  setSweep(sweepId: string, active: boolean, maxAttempts: number, share?: SweepShare): void {
    const prev = this.sweeps.get(sweepId);
    const was = prev?.active ?? false;
    const { priority, weight } = share ?? prev ?? DEFAULT_SHARE;
    const slot: SweepSlot = {
      active,
      maxAttempts: Math.max(1, maxAttempts),
      priority,
      weight: weight > 0 ? weight : 1,
      pass: prev?.pass ?? 0,
      servedMs: prev?.servedMs ?? 0,
    };
    if (active && !was) {
      // Arriving or resuming, it starts level with the sweeps being served: no burst to catch up
      // on the grants it did not get while away (nor a debt for the ones it had before).
      slot.pass = this.virtualTime;
      slot.servedMs = this.clock();
      // Its pending entries (a queue is not walked while inactive, nor kept exact) queue again; fresh slots never leave their ranges.
      for (const s of this.entriesOfSweep(sweepId)) if (s.state === "pending") this.enqueue(s);
    }
    this.sweeps.set(sweepId, slot);
  }

  /** The sweep's priority and weight (default ones if it is not registered). */
  shareOf(sweepId: string): SweepShare {
    const s = this.sweeps.get(sweepId);
    return s ? { priority: s.priority, weight: s.weight } : { ...DEFAULT_SHARE };
  }

  /** The sweep's part of the leases in flight (0 when none is in flight). */
  leaseShare(sweepId: string): number {
    let all = 0;
    for (const [id, s] of this.sweeps) if (s.active) all += this.tallies.get(id)?.leased ?? 0;
    return all === 0 ? 0 : (this.tallies.get(sweepId)?.leased ?? 0) / all;
  }

  private queueOf(sweepId: string): GrantQueue {
    let q = this.queues.get(sweepId);
    if (!q) this.queues.set(sweepId, (q = new GrantQueue()));
    return q;
  }

  private enqueue(s: ShardEntry): void {
    this.queueOf(s.sweepId).add(s);
  }

  private shardsIn(sweepId: string): SweepShards {
    let w = this.bySweep.get(sweepId);
    if (!w) this.bySweep.set(sweepId, (w = { slots: new SweepSlots(sweepId), bySlot: new Map(), others: new Map() }));
    return w;
  }

  private tallyOf(sweepId: string): SweepTally {
    let t = this.tallies.get(sweepId);
    if (!t) this.tallies.set(sweepId, (t = { total: 0, pending: 0, leased: 0, done: 0, failed: 0, doneCells: 0, retries: 0, failedShards: new Set() }));
    return t;
  }

  /** The entry objects of a sweep (not its fresh or counted slots), in plan order, then the others in insertion order. */
  private entriesOfSweep(sweepId: string): Tallied[] {
    const w = this.bySweep.get(sweepId);
    if (!w) return [];
    const bySlot = [...w.bySlot].sort((a, b) => a[0] - b[0]);
    return [...bySlot.map((x) => x[1]), ...w.others.values()];
  }

  /** Where a shard id's plan slot is, if it has one. */
  private slotOf(shardId: string): { w: SweepShards; slot: number } | undefined {
    const id = parseShardId(shardId);
    const w = id && this.bySweep.get(id.sweepId);
    if (!w) return undefined;
    const slot = w.slots.find(id.prompt, id.part);
    return slot < 0 ? undefined : { w, slot };
  }

  /** A FRESH slot's entry object, made when something happens to it (a grant, a hold); it keeps the slot's place in the queue. */
  private materialize(w: SweepShards, slot: number): Tallied {
    const e = ownEntry(LeaseTable.pending(w.slots.shardId(slot), w.slots.sweepId, w.slots.promptKey(slot), w.slots.cells(slot)));
    e[TALLY] = "pending"; // counted as pending while a slot
    e[QPOS] = IN_RANGE;
    e[SLOT] = slot;
    w.slots.setMark(slot, ENTRY);
    w.bySlot.set(slot, e);
    this.shards.set(e.shardId, e);
    return e;
  }

  /**
   * A counted shard's entry goes, its slot marked COUNTED, once nothing waits on it: its lease ended
   * and its agent's done arrived (or never will: revoked, or counted from another attempt).
   */
  private settle(e: Tallied): void {
    const slot = e[SLOT] ?? -1;
    if (slot < 0 || e.state !== "done" || !e.resultConsumed || e.attempts > 255) return;
    const w = this.bySweep.get(e.sweepId);
    if (!w || w.bySlot.get(slot) !== e) return;
    this.dropLease(e);
    this.unsetUncounted(e.shardId);
    this.resultLeases.delete(e.shardId);
    this.queues.get(e.sweepId)?.delete(e);
    w.slots.setAttempts(slot, e.attempts);
    w.slots.setMark(slot, COUNTED);
    w.bySlot.delete(slot);
    this.shards.delete(e.shardId);
  }

  /** A copy of a slot's shard as an entry (fresh pending, or counted). */
  private view(w: SweepShards, slot: number): ShardEntry | undefined {
    const m = w.slots.mark(slot);
    if (m !== FRESH && m !== COUNTED) return undefined;
    const e: Tallied = LeaseTable.pending(w.slots.shardId(slot), w.slots.sweepId, w.slots.promptKey(slot), w.slots.cells(slot));
    if (m === COUNTED) {
      e.state = "done";
      e.resultConsumed = true;
      e.attempts = w.slots.attempts(slot);
    }
    e[VIEW] = true;
    return e;
  }

  /** Takes a shard out of the table (before `restore` replaces it); returns its slot if it had one. */
  private remove(shardId: string, sweepId: string): { w: SweepShards; slot: number } | undefined {
    const prev = this.shards.get(shardId);
    if (prev) {
      this.dropLease(prev);
      this.queues.get(prev.sweepId)?.delete(prev);
      this.untally(prev);
      this.shards.delete(shardId);
      const w = this.bySweep.get(prev.sweepId);
      const slot = prev[SLOT] ?? -1;
      if (w && slot >= 0 && w.bySlot.get(slot) === prev) {
        w.bySlot.delete(slot);
        w.slots.setMark(slot, GONE);
        return { w, slot };
      }
      if (prev.sweepId !== sweepId) w?.others.delete(shardId); // else the new entry takes its place there
      return undefined;
    }
    const at = this.slotOf(shardId);
    if (!at) return undefined;
    const { w, slot } = at;
    const m = w.slots.mark(slot);
    const t = this.tallyOf(w.slots.sweepId);
    if (m === FRESH) {
      t.pending--;
      t.total--;
      this.queueOf(w.slots.sweepId).size--; // its range skips it from now on
    } else if (m === COUNTED) {
      this.count(t, w.slots.cells(slot), "done", -1);
      t.total--;
      t.retries -= Math.max(0, w.slots.attempts(slot) - 1);
    } else return undefined;
    w.slots.setMark(slot, GONE);
    return at;
  }

  /** Whether the sweep is registered and active. */
  sweepActive(sweepId: string): boolean {
    return this.sweeps.get(sweepId)?.active ?? false;
  }

  /**
   * Adds a shard (new, or loaded from the state store after a restart). A restored lease gets a
   * fresh TTL: its agent has that long to reconnect and heartbeat it before it is re-leased.
   */
  restore(entry: ShardEntry): void {
    const was = this.remove(entry.shardId, entry.sweepId);
    const w = this.shardsIn(entry.sweepId);
    let slot = was && was.w === w ? was.slot : -1;
    if (slot < 0 && this.isPlain(entry)) {
      // A fresh pending shard, or a counted one with nothing open: a slot and no object.
      slot = w.slots.add(entry.shardId, entry.promptKey, entry.cells);
      if (slot >= 0) {
        if (w.others.size > 0) w.others.delete(entry.shardId); // it had no slot before
        const t = this.tallyOf(entry.sweepId);
        t.total++;
        if (entry.state === "pending") {
          w.slots.setMark(slot, FRESH);
          this.queueOf(entry.sweepId).addSlot(slot);
          t.pending++;
        } else {
          w.slots.setMark(slot, COUNTED);
          w.slots.setAttempts(slot, entry.attempts);
          this.count(t, entry.cells, "done", 1);
          t.retries += Math.max(0, entry.attempts - 1);
        }
        return;
      }
    } else if (slot < 0) slot = w.slots.add(entry.shardId, entry.promptKey, entry.cells);
    const e = ownEntry(entry);
    if (e.state === "leased") {
      e.leaseExpiresMs = this.clock() + this.leaseTtlMs;
      e.leasedMs ??= this.clock();
      this.addLease(e);
      this.promptHome.set(e.promptKey, e.agentId);
    }
    this.unsetUncounted(e.shardId);
    if (e.state === "done" && !e.resultConsumed) {
      e.doneMs = this.clock(); // a fresh timeout, as for restored leases
      this.setUncounted(e);
    }
    if (e.state === "pending") this.enqueue(e);
    this.shards.set(e.shardId, e);
    if (slot >= 0) {
      if (w.others.size > 0) w.others.delete(e.shardId);
      e[SLOT] = slot;
      w.slots.setMark(slot, ENTRY);
      w.bySlot.set(slot, e);
    } else w.others.set(e.shardId, e);
    this.tally(e);
  }

  /** Whether the entry is a fresh pending shard as planned, or a counted one with no lease, error or history: a slot holds all of it. */
  private isPlain(e: ShardEntry): boolean {
    const open =
      e.state === "pending" ? !e.resultConsumed && e.attempts === 0 && e.notBeforeMs === 0 : e.state === "done" && e.resultConsumed && e.attempts <= 255;
    return (
      open &&
      e.leaseId === "" &&
      e.agentId === "" &&
      e.lastError === "" &&
      e.leaseExpiresMs === 0 &&
      e.leasedMs === undefined &&
      e.doneMs === undefined &&
      (e.disconnects === undefined || e.disconnects.length === 0)
    );
  }

  /**
   * Counts `shards` shards of `cells` cells as done without an entry each: shards a restart finds
   * counted (their results stored) need nothing more than their place in the sweep's counts.
   */
  addCounted(sweepId: string, shards: number, cells: number): void {
    const t = this.tallyOf(sweepId);
    t.total += shards;
    t.done += shards;
    t.doneCells += cells;
  }

  /** Files the shard under its current tally in its sweep's counts (call after any change of state or resultConsumed). */
  private tally(s: ShardEntry): void {
    const e = s as Tallied;
    if (e[VIEW]) return; // a slot's copy: the table counted its change itself
    const now = tallyOf(e);
    const was = e[TALLY];
    const retries = Math.max(0, e.attempts - 1);
    if (was === now && e[RETRIES] === retries) return;
    const t = this.tallyOf(e.sweepId);
    t.retries += retries - (e[RETRIES] ?? 0);
    e[RETRIES] = retries;
    if (was === now) return;
    if (was === undefined) t.total++;
    else this.count(t, e.cells, was, -1, e);
    this.count(t, e.cells, now, 1, e);
    e[TALLY] = now;
  }

  /** Takes the shard out of its sweep's counts (replaced or forgotten). */
  private untally(s: ShardEntry): void {
    const e = s as Tallied;
    const t = this.tallies.get(e.sweepId);
    if (!t || e[TALLY] === undefined) return;
    this.count(t, e.cells, e[TALLY], -1, e);
    t.total--;
    t.retries -= e[RETRIES] ?? 0;
    e[TALLY] = undefined;
    e[RETRIES] = 0;
  }

  private count(t: SweepTally, cells: number, k: Tally, d: 1 | -1, e?: ShardEntry): void {
    t[k] += d;
    if (k === "done") t.doneCells += d * cells;
    if (k === "failed" && e) {
      if (d > 0) t.failedShards.add(e);
      else t.failedShards.delete(e);
    }
  }

  private tallyAll(ch: Changes): Changes {
    for (const s of ch.changed) this.tally(s);
    return ch;
  }

  /** A new pending shard entry. */
  static pending(shardId: string, sweepId: string, promptKey: string, cells: number): ShardEntry {
    return {
      shardId,
      sweepId,
      promptKey,
      cells,
      state: "pending",
      attempts: 0,
      leaseId: "",
      agentId: "",
      leaseExpiresMs: 0,
      notBeforeMs: 0,
      lastError: "",
      resultConsumed: false,
    };
  }

  /**
   * The shard's entry: the table's own object while it has one (granted, held, retried, failed, or
   * just counted), else a copy made from its slot (fresh pending, or counted): read it, do not keep it.
   */
  get(shardId: string): ShardEntry | undefined {
    const e = this.shards.get(shardId);
    if (e) return e;
    const at = this.slotOf(shardId);
    return at && this.view(at.w, at.slot);
  }

  /** Shards of one sweep: those of plan slots in plan order, then the others in insertion order (copies for slots without an entry). */
  shardsOf(sweepId: string): ShardEntry[] {
    const w = this.bySweep.get(sweepId);
    if (!w) return [];
    const out: ShardEntry[] = [];
    for (let slot = 0; slot < w.slots.length; slot++) {
      const e = w.bySlot.get(slot) ?? this.view(w, slot);
      if (e) out.push(e);
    }
    return [...out, ...w.others.values()];
  }

  /** Drops a sweep's shards from memory (they stay in the state store). */
  forgetSweep(sweepId: string): void {
    for (const s of this.entriesOfSweep(sweepId)) {
      this.shards.delete(s.shardId);
      this.unsetUncounted(s.shardId);
      this.dropLease(s);
      this.promptHome.delete(s.promptKey);
      this.resultLeases.delete(s.shardId);
    }
    for (const key of this.bySweep.get(sweepId)?.slots.promptKeys() ?? []) this.promptHome.delete(key);
    this.bySweep.delete(sweepId);
    this.queues.delete(sweepId);
    this.sweeps.delete(sweepId);
    this.tallies.delete(sweepId);
  }

  /** Shards waiting for a lease in active sweeps (the queue depth). */
  queueDepth(): number {
    let n = 0;
    for (const [id, w] of this.bySweep) if (this.sweepActive(id)) n += w.slots.fresh;
    for (const s of this.shards.values()) if (s.state === "pending" && this.sweepActive(s.sweepId)) n++;
    return n;
  }

  /** Leased shards (in flight). */
  inFlight(): number {
    return this.byLease.size;
  }

  /** The agent's open leases: held now, or reported done with the result not yet counted (what its lease journals hold). */
  openLeasesOf(agentId: string): ShardEntry[] {
    const out = [...(this.byAgent.get(agentId) ?? [])];
    const done = this.uncountedByAgent.get(agentId);
    for (const s of done ?? []) {
      if (s.state === "done" && !s.resultConsumed && s.agentId === agentId && this.uncounted.get(s.shardId) === s) out.push(s);
      else done!.delete(s);
    }
    if (done?.size === 0) this.uncountedByAgent.delete(agentId);
    return out;
  }

  /** The shard waits for its result to be counted (reported done by its agent). */
  private setUncounted(s: ShardEntry): void {
    this.uncounted.set(s.shardId, s);
    let set = this.uncountedByAgent.get(s.agentId);
    if (!set) this.uncountedByAgent.set(s.agentId, (set = new Set()));
    set.add(s);
  }

  private unsetUncounted(shardId: string): void {
    const s = this.uncounted.get(shardId);
    if (!s) return;
    this.uncounted.delete(shardId);
    const set = this.uncountedByAgent.get(s.agentId);
    if (set?.delete(s) && set.size === 0) this.uncountedByAgent.delete(s.agentId);
  }

  // ---- agents ---------------------------------------------------------------------------

  /** An agent said hello (or reconnected): its credit starts at zero until it sends Credit. */
  connectAgent(agentId: string, cachedPromptKeys: Iterable<string> = [], workers = 1): void {
    this.agents.connect(agentId, cachedPromptKeys, workers);
  }

  /** Whether the agent has a live connection (as far as the table knows). */
  agentConnected(agentId: string): boolean {
    return this.agents.get(agentId)?.connected ?? false;
  }

  /** Adds Credit.slots to the agent's credit, capped (see AgentPool.addCredit); returns the slots refused. */
  addCredit(agentId: string, slots: number): number {
    return this.agents.addCredit(agentId, slots, this.leaseCount(agentId));
  }

  /** Replaces the agent's cached prompt keys (from a heartbeat). */
  setCache(agentId: string, keys: Iterable<string>): void {
    this.agents.setCache(agentId, keys);
  }

  /** The agent gets no new leases; it finishes the ones it holds. */
  drainAgent(agentId: string): void {
    this.agents.drain(agentId);
  }

  /** Connected agents with their lease counts, for the Agents RPC and metrics. */
  agentList(): AgentInfo[] {
    return this.agents.list((id) => this.leaseCount(id));
  }

  /** Shards currently leased to the agent. */
  leasesOf(agentId: string): ShardEntry[] {
    return [...(this.byAgent.get(agentId) ?? [])];
  }

  /** Number of shards leased to the agent. */
  leaseCount(agentId: string): number {
    return this.byAgent.get(agentId)?.size ?? 0;
  }

  private addLease(s: ShardEntry): void {
    this.byLease.set(s.leaseId, s);
    let set = this.byAgent.get(s.agentId);
    if (!set) this.byAgent.set(s.agentId, (set = new Set()));
    set.add(s);
  }

  /** The shard's lease (if any) ends in the indexes; the entry keeps its last lease id and agent. */
  private dropLease(s: ShardEntry): void {
    if (s.leaseId && this.byLease.get(s.leaseId) === s) this.byLease.delete(s.leaseId);
    const set = this.byAgent.get(s.agentId);
    if (set?.delete(s) && set.size === 0) this.byAgent.delete(s.agentId);
  }

  /** The shard is pending again: it joins the end of the grant queue. */
  private requeue(s: ShardEntry): void {
    s.state = "pending";
    this.enqueue(s);
  }

  /**
   * The agent's stream ended: its leases go back to the queue (with backoff, and to `failed`
   * once attempts are spent), since whatever it was computing is lost with it. An agent's
   * disconnect costs a shard one attempt at most: when the same agent id disconnects again
   * holding it (a flapping agent, or one reconnecting on purpose to burn attempts), the attempt
   * is given back, as for a cancelled lease.
   */
  disconnectAgent(agentId: string, reason = "agent disconnected"): Changes {
    const out = emptyChanges();
    this.agents.disconnect(agentId);
    for (const s of this.leasesOf(agentId)) {
      const error = `${reason} (agent ${agentId}) while holding the lease`;
      if (s.disconnects?.includes(agentId)) {
        this.dropLease(s);
        s.attempts = Math.max(0, s.attempts - 1);
        this.requeue(s);
        s.lastError = `${error}; not counted as an attempt (this agent's disconnect already cost one)`;
        s.notBeforeMs = this.clock() + this.backoffMs(Math.max(1, s.attempts));
        out.changed.push(s);
      } else {
        s.disconnects = [...(s.disconnects ?? []), agentId].slice(-HISTORY);
        this.retryOrFail(s, error, out);
      }
    }
    return this.tallyAll(out);
  }

  // ---- leases ---------------------------------------------------------------------------

  /**
   * Grants pending shards to agents with credit. The sweep served next is, among the active sweeps
   * with a shard that may be granted now, the one of the highest priority (aged: +1 per
   * `priorityAgingMs` since it was last served), then the lowest pass (grants over weight: stride
   * scheduling, so weights 3:1 get 3 grants of 4 and 1); its oldest pending shard goes to an agent
   * that holds (or is preparing) its prompt's runs when one has credit, otherwise to the
   * least-loaded agent, ties broken round-robin. The cost is proportional to the shards walked and
   * the grants made times the sweeps competing (each grant a heap operation over the ready agents,
   * plus the agents caching its prompt), never agents × grants × leases.
   */
  schedule(): Grant[] {
    const now = this.clock();
    const grants: Grant[] = [];
    const ready = this.agents.ready();
    if (ready.length === 0) return grants;
    const load = (a: AgentSlot) => this.leaseCount(a.agentId);
    const heap = new AgentHeap(load);
    for (const a of ready) heap.push(a);
    let withCredit = ready.length;
    // One cursor per competing sweep: each queue is walked at most once a call.
    const competing: { slot: SweepSlot; queue: GrantQueue; cursor: Cursor; rank: number }[] = [];
    for (const [id, queue] of this.queues) {
      const slot = this.sweeps.get(id);
      if (!slot?.active || queue.size === 0) continue;
      slot.pass = Math.max(slot.pass, this.virtualTime); // idle a while (nothing to grant): no burst after
      queue.compact();
      competing.push({ slot, queue, cursor: { i: 0, j: -1, w: this.shardsIn(id) }, rank: this.rank(slot, now) });
    }
    while (withCredit > 0 && competing.length > 0) {
      let i = 0;
      for (let j = 1; j < competing.length; j++) {
        const a = competing[j]!;
        const b = competing[i]!;
        if (a.rank > b.rank || (a.rank === b.rank && a.slot.pass < b.slot.pass)) i = j;
      }
      const c = competing[i]!;
      const s = this.nextGrantable(c.queue, c.cursor, now);
      if (!s) {
        competing.splice(i, 1); // nothing of this sweep may be granted now
        continue;
      }
      const agent = this.agents.affine(s.promptKey, this.promptHome.get(s.promptKey), load) ?? heap.pop();
      if (!agent) break;
      c.queue.delete(s);
      const leaseId = this.newLeaseId();
      s.state = "leased";
      s.attempts += 1;
      s.leaseId = leaseId;
      s.agentId = agent.agentId;
      s.leaseExpiresMs = now + this.leaseTtlMs;
      s.leasedMs = now;
      this.addLease(s);
      this.promptHome.set(s.promptKey, agent.agentId);
      this.agents.granted(agent);
      this.tally(s);
      this.virtualTime = c.slot.pass;
      c.slot.pass += 1 / c.slot.weight;
      c.slot.servedMs = now;
      c.rank = c.slot.priority; // served: its aging starts again
      grants.push({ agentId: agent.agentId, shardId: s.shardId, leaseId, attempt: s.attempts, ttlMs: this.leaseTtlMs });
      if (agent.credit > 0)
        heap.push(agent); // its new load and round-robin place (an older entry of it is now stale)
      else withCredit--;
    }
    return grants;
  }

  /** A sweep's priority, aged by how long it has waited for a grant. */
  private rank(slot: SweepSlot, now: number): number {
    return slot.priority + (this.priorityAgingMs > 0 ? Math.floor(Math.max(0, now - slot.servedMs) / this.priorityAgingMs) : 0);
  }

  /**
   * The queue's next shard that may be granted now, dropping those no longer pending; undefined at
   * its end. A fresh slot found gets its entry (in its range's place until the grant takes it).
   */
  private nextGrantable(queue: GrantQueue, cursor: Cursor, now: number): Tallied | undefined {
    const items = queue.items;
    while (cursor.i < items.length) {
      const it = items[cursor.i];
      if (it instanceof SlotRange) {
        const { slots, bySlot } = cursor.w;
        if (cursor.j < it.from) cursor.j = it.from;
        while (cursor.j < it.to) {
          const k = cursor.j++;
          const m = slots.mark(k);
          if (m === FRESH) return this.materialize(cursor.w, k);
          const e = m === ENTRY ? bySlot.get(k) : undefined;
          if (e && e[QPOS] === IN_RANGE) {
            if (e.state !== "pending") queue.delete(e);
            else if (e.notBeforeMs <= now) return e;
            else continue; // held or backing off: keeps its place
          }
          if (k === it.from) it.from++; // nothing of the range's is left up to here
        }
        if (it.from >= it.to) items[cursor.i] = undefined;
        cursor.i++;
        cursor.j = -1;
        continue;
      }
      cursor.i++;
      const s = it;
      if (!s) continue;
      if (s.state !== "pending") queue.delete(s);
      else if (s.notBeforeMs <= now) return s;
    }
    return undefined;
  }

  /** Entries changed by `schedule` (call after it to persist the grants). */
  entriesOf(grants: Grant[]): ShardEntry[] {
    return grants.map((g) => this.shards.get(g.shardId)!).filter(Boolean);
  }

  /**
   * The aggregator took the shard's result, published under `leaseId` by that lease's holder (the
   * results check): when it is counted while that lease is still open, the lease ends without a
   * revocation (at 1,000 simulated agents nearly every shard got a CancelLease and an ignored done).
   */
  resultFrom(shardId: string, leaseId: string): void {
    if (this.shards.has(shardId)) this.resultLeases.set(shardId, leaseId);
  }

  /** A heartbeat renews the listed leases the agent holds; others are ignored. */
  renew(agentId: string, leaseIds: Iterable<string>): number {
    const now = this.clock();
    let n = 0;
    for (const id of leaseIds) {
      const s = this.byLease.get(id);
      if (s && s.agentId === agentId) {
        s.leaseExpiresMs = now + this.leaseTtlMs;
        n++;
      }
    }
    return n;
  }

  /**
   * Leases past their TTL, leases held longer than `maxLeaseMs` (revoked: a hung or hostile agent
   * that keeps heartbeating must not hold a shard forever), and shards reported done whose result
   * was not counted within `uncountedTimeoutMs` (rejected, lost, or a crash between the agent's
   * publication and its consumption): re-queued with exponential backoff, or failed after max attempts.
   */
  expire(): Changes {
    const now = this.clock();
    const out = emptyChanges();
    for (const s of [...this.byLease.values()]) {
      if (this.maxLeaseMs > 0 && (s.leasedMs ?? now) + this.maxLeaseMs <= now) {
        out.overdue++;
        this.revoke(s, `lease held longer than the maximum lease time (${this.maxLeaseMs} ms)`, out);
        this.retryOrFail(s, `lease ${s.leaseId} of agent ${s.agentId} revoked after the maximum lease time (${this.maxLeaseMs} ms, --max-lease-ms)`, out);
        continue;
      }
      if (s.leaseExpiresMs > now) continue;
      out.expirations++;
      this.retryOrFail(s, `lease ${s.leaseId} of agent ${s.agentId} expired (no heartbeat for ${this.leaseTtlMs} ms)`, out);
    }
    for (const s of [...this.uncounted.values()]) {
      if (s.state !== "done" || s.resultConsumed) {
        this.unsetUncounted(s.shardId);
        continue;
      }
      if ((s.doneMs ?? 0) + this.uncountedTimeoutMs > now) continue;
      out.uncounted++;
      this.retryOrFail(s, `agent ${s.agentId} reported the shard done but no valid result of it was counted within ${this.uncountedTimeoutMs} ms`, out);
    }
    return this.tallyAll(out);
  }

  /**
   * Whether a result published by `agentId` under `leaseId` comes from the shard's current lease:
   * the lease is the last one granted for the shard, the agent holds it, and it is still live or
   * reported done (its result not yet counted). A result of an expired, revoked, re-leased or
   * never granted lease is refused; the shard's current holder publishes it again.
   */
  holdsLease(shardId: string, agentId: string, leaseId: string): boolean {
    const s = this.shards.get(shardId);
    if (!s || !leaseId || !agentId) return false;
    return s.leaseId === leaseId && s.agentId === agentId && (s.state === "leased" || (s.state === "done" && !s.resultConsumed));
  }

  /**
   * The agent reports the shard done (its result is published). The lease ends; the shard counts
   * as done for the sweep once the results consumer has aggregated it (`resultConsumed`).
   */
  complete(agentId: string, leaseId: string, shardId: string): Changes {
    const out = emptyChanges();
    const s = this.shards.get(shardId);
    if (s && s.state === "done" && s.resultConsumed && s.leaseId === leaseId && s.agentId === agentId) {
      // Its result, from this lease, was counted before this done arrived: nothing left to do.
      const a = this.agents.get(agentId);
      if (a) a.shardsDone++;
      this.settle(s); // the done it waited for
      return this.tallyAll(out);
    }
    if (!s || s.leaseId !== leaseId || s.state !== "leased" || s.agentId !== agentId) {
      // Not this agent's lease (stale after a re-lease, or another agent's): ignored.
      out.ignored++;
      return this.tallyAll(out);
    }
    const a = this.agents.get(agentId);
    if (a) a.shardsDone++;
    this.dropLease(s);
    s.state = "done";
    s.lastError = "";
    s.doneMs = this.clock();
    this.setUncounted(s);
    // The agent reports done only after JetStream acked the publication, so the result is durable
    // in the stream and the consumer will deliver it; a re-run would be dropped as a duplicate anyway.
    out.changed.push(s);
    return this.tallyAll(out);
  }

  /**
   * The results consumer aggregated the shard's result: it is done, whoever computed it. Another
   * agent still holding a lease on it (after a re-lease) is told to drop it.
   */
  resultConsumed(shardId: string): Changes {
    const out = emptyChanges();
    const s = this.shards.get(shardId);
    const own = this.resultLeases.get(shardId);
    this.resultLeases.delete(shardId);
    if (!s) {
      // A fresh slot counted (a result of a lease a restart did not know): counted as a slot, no entry.
      const at = this.slotOf(shardId);
      if (at && at.w.slots.mark(at.slot) === FRESH) {
        const { w, slot } = at;
        const t = this.tallyOf(w.slots.sweepId);
        t.pending--;
        this.count(t, w.slots.cells(slot), "done", 1);
        this.queueOf(w.slots.sweepId).size--; // its range skips it from now on
        w.slots.setAttempts(slot, 0);
        w.slots.setMark(slot, COUNTED);
        out.changed.push(this.view(w, slot)!);
      }
      return this.tallyAll(out);
    }
    // Counted from its current lease before the holder's done arrived (the usual order when results
    // are consumed fast): the lease just ends, no CancelLease; the done that follows is accepted.
    const awaitingDone = s.state === "leased" && own !== undefined && own === s.leaseId;
    if (awaitingDone) this.dropLease(s);
    else if (s.state === "leased") this.revoke(s, "result already received from another attempt", out);
    this.unsetUncounted(shardId);
    if (s.state !== "done" || !s.resultConsumed) {
      s.state = "done";
      s.resultConsumed = true;
      s.lastError = "";
      out.changed.push(s);
    }
    this.tallyAll(out);
    if (!awaitingDone) this.settle(s);
    return out;
  }

  /**
   * The agent reports the shard failed. Retryable failures are re-queued with backoff (up to the
   * sweep's max attempts); a non-retryable one (bad input) fails the shard at once with its error.
   */
  fail(agentId: string, leaseId: string, shardId: string, error: string, retryable: boolean): Changes {
    const out = emptyChanges();
    const s = this.shards.get(shardId);
    if (!s || s.leaseId !== leaseId || s.state !== "leased" || s.agentId !== agentId) {
      out.ignored++;
      return this.tallyAll(out);
    }
    if (retryable) this.retryOrFail(s, error, out);
    else {
      this.dropLease(s);
      s.state = "failed";
      s.lastError = error;
      out.newlyFailed++;
      out.changed.push(s);
    }
    return this.tallyAll(out);
  }

  /**
   * The agent hands the lease back unrun or unfinished (drain, shutdown, drain timeout): no failure
   * of the shard's, so the attempt its grant counted is given back and it is re-queued without
   * backoff (another agent takes it at once). A lease the agent does not hold is ignored.
   */
  handBack(agentId: string, leaseId: string, shardId: string, reason: string): Changes {
    const out = emptyChanges();
    const s = this.shards.get(shardId);
    if (!s || s.leaseId !== leaseId || s.state !== "leased" || s.agentId !== agentId) {
      out.ignored++;
      return this.tallyAll(out);
    }
    this.dropLease(s);
    s.attempts = Math.max(0, s.attempts - 1);
    s.notBeforeMs = 0;
    s.lastError = `handed back by agent ${agentId}: ${reason} (not counted as an attempt)`;
    this.requeue(s);
    out.changed.push(s);
    return this.tallyAll(out);
  }

  private retryOrFail(s: ShardEntry, error: string, out: Changes): void {
    this.dropLease(s);
    this.unsetUncounted(s.shardId);
    s.lastError = error;
    const max = this.sweeps.get(s.sweepId)?.maxAttempts ?? 3;
    if (s.attempts >= max) {
      s.state = "failed";
      s.lastError = `${error}; gave up after ${s.attempts} attempt(s) (max_attempts ${max})`;
      out.newlyFailed++;
    } else {
      this.requeue(s);
      s.notBeforeMs = this.clock() + this.backoffMs(s.attempts);
      out.retries++;
    }
    out.changed.push(s);
  }

  /** Held shards ({@link HELD_MS}) become grantable now, or, given `error`, fail with it (their input cannot be made). */
  release(shardIds: Iterable<string>, error?: string): Changes {
    const out = emptyChanges();
    for (const id of shardIds) {
      const s = this.shards.get(id);
      if (!s || s.state !== "pending" || s.notBeforeMs !== HELD_MS) continue;
      s.notBeforeMs = 0;
      if (error !== undefined) {
        s.state = "failed";
        s.lastError = error;
        this.queues.get(s.sweepId)?.delete(s as Tallied);
        out.newlyFailed++;
      }
      out.changed.push(s);
    }
    return this.tallyAll(out);
  }

  /** Pending shards are held ({@link HELD_MS}) until `release`: their input must be made (again) first. */
  hold(shardIds: Iterable<string>): Changes {
    const out = emptyChanges();
    for (const id of shardIds) {
      let s = this.shards.get(id);
      if (!s) {
        const at = this.slotOf(id);
        if (at && at.w.slots.mark(at.slot) === FRESH) s = this.materialize(at.w, at.slot); // held: state a slot cannot hold
      }
      if (!s || s.state !== "pending" || s.notBeforeMs === HELD_MS) continue;
      s.notBeforeMs = HELD_MS;
      out.changed.push(s);
    }
    return this.tallyAll(out);
  }

  /** Backoff before the next attempt after `attempts` failed ones: base · 2^(attempts−1), capped. */
  backoffMs(attempts: number): number {
    return Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** Math.max(0, attempts - 1));
  }

  /** The agent holding the shard's lease is told to drop it; the lease ends. */
  private revoke(s: ShardEntry, reason: string, out: Changes): void {
    out.revoked.push({ agentId: s.agentId, leaseId: s.leaseId, shardId: s.shardId, reason });
    this.dropLease(s);
  }

  /** Marks a registered sweep active or not; returns its shards that are in `state`. */
  private activate(sweepId: string, active: boolean, state: ShardState): ShardEntry[] {
    this.setSweep(sweepId, active, this.sweeps.get(sweepId)?.maxAttempts ?? 3);
    return this.entriesOfSweep(sweepId).filter((s) => s.state === state); // fresh and counted slots are in neither state asked for
  }

  /** Cancels a sweep: no more grants, its leases are revoked and go back to pending (attempt not counted). */
  cancelSweep(sweepId: string): Changes {
    const out = emptyChanges();
    for (const s of this.activate(sweepId, false, "leased")) {
      this.revoke(s, "sweep cancelled", out);
      this.requeue(s);
      s.attempts = Math.max(0, s.attempts - 1);
      out.changed.push(s);
    }
    return this.tallyAll(out);
  }

  /**
   * Resumes a sweep: active again; failed shards, and shards reported done whose result was
   * never counted, re-queued with a fresh attempt budget.
   */
  resumeSweep(sweepId: string): Changes {
    const out = emptyChanges();
    const uncounted = this.activate(sweepId, true, "done").filter((s) => !s.resultConsumed);
    for (const s of [...this.activate(sweepId, true, "failed"), ...uncounted]) {
      this.unsetUncounted(s.shardId);
      this.requeue(s);
      s.attempts = 0;
      s.notBeforeMs = 0;
      out.changed.push(s);
    }
    return this.tallyAll(out);
  }

  /** Counts of a sweep's shards by state, and its cells aggregated (kept up to date by `tally`: no scan). */
  counts(sweepId: string): {
    total: number;
    pending: number;
    leased: number;
    done: number;
    failed: number;
    doneCells: number;
    retries: number;
    failedShards: string[];
  } {
    const t = this.tallies.get(sweepId);
    if (!t) return { total: 0, pending: 0, leased: 0, done: 0, failed: 0, doneCells: 0, retries: 0, failedShards: [] };
    const failedShards = [...t.failedShards].map((s) => s.shardId);
    return { total: t.total, pending: t.pending, leased: t.leased, done: t.done, failed: t.failed, doneCells: t.doneCells, retries: t.retries, failedShards };
  }
}
