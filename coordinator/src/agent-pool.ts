/**
 * The lease table's agents: connected or not, credit, draining, the prompt keys each holds in its
 * cache, and the order of grants that breaks ties round-robin. Pure state, no clock.
 */

/** One agent as the lease table sees it. */
export interface AgentSlot {
  agentId: string;
  connected: boolean;
  credit: number;
  draining: boolean;
  cachedPromptKeys: Set<string>;
  /** Credit plus leases held never exceed this: the agent's workers × CREDIT_PER_WORKER. */
  maxCredit: number;
  /** Order of connection. */
  seq: number;
  /** Order of the agent's last grant, the round-robin tie-break among equally loaded agents. */
  lastGrantSeq: number;
  shardsDone: number;
}

/** A connected agent as the Agents RPC and the metrics show it. */
export interface AgentInfo {
  agentId: string;
  credit: number;
  leases: number;
  cachedPrompts: number;
  draining: boolean;
  shardsDone: number;
}

/**
 * Leases an agent may hold or be owed per advertised worker: one running and up to three
 * prefetched (the node agent's default `--prefetch 1` asks for two). Credit beyond it is refused,
 * so one agent (or a forged one) cannot hold every pending shard by sending Credit 2^32−1.
 */
export const CREDIT_PER_WORKER = 4;
/** Workers counted per agent at most (a hello may list any number). */
export const MAX_WORKERS_COUNTED = 256;

/** The agents known to a lease table (a disconnected agent keeps its counters for when it returns). */
export class AgentPool {
  private readonly slots = new Map<string, AgentSlot>();
  /** Agents by the prompt keys they cache (the reverse of `cachedPromptKeys`), for affinity without a scan. */
  private readonly holders = new Map<string, Set<AgentSlot>>();
  private seq = 0;
  private grantSeq = 0;

  get(agentId: string): AgentSlot | undefined {
    return this.slots.get(agentId);
  }

  /** An agent said hello (or reconnected): its credit starts at zero until it sends Credit. */
  connect(agentId: string, cachedPromptKeys: Iterable<string>, workers = 1): void {
    const prev = this.slots.get(agentId);
    if (prev) this.index(prev, []);
    const slot: AgentSlot = {
      agentId,
      connected: true,
      credit: 0,
      draining: false,
      cachedPromptKeys: new Set(),
      maxCredit: Math.max(1, Math.min(MAX_WORKERS_COUNTED, Math.floor(workers))) * CREDIT_PER_WORKER,
      seq: this.seq++,
      lastGrantSeq: prev?.lastGrantSeq ?? -1,
      shardsDone: prev?.shardsDone ?? 0,
    };
    this.slots.set(agentId, slot);
    this.index(slot, cachedPromptKeys);
  }

  /** Replaces the agent's cached prompt keys, keeping the reverse index in step. */
  private index(a: AgentSlot, keys: Iterable<string>): void {
    for (const k of a.cachedPromptKeys) {
      const set = this.holders.get(k);
      if (set?.delete(a) && set.size === 0) this.holders.delete(k);
    }
    a.cachedPromptKeys = new Set(keys);
    for (const k of a.cachedPromptKeys) {
      let set = this.holders.get(k);
      if (!set) this.holders.set(k, (set = new Set()));
      set.add(a);
    }
  }

  /** The agent's stream ended: no credit until it connects again. */
  disconnect(agentId: string): void {
    const a = this.slots.get(agentId);
    if (a) {
      a.connected = false;
      a.credit = 0;
    }
  }

  /**
   * Adds Credit.slots to a connected agent's credit, so that credit plus the `held` leases stay
   * within its `maxCredit`; returns the slots refused.
   */
  addCredit(agentId: string, slots: number, held = 0): number {
    const a = this.slots.get(agentId);
    if (!a?.connected) return 0;
    const room = Math.max(0, a.maxCredit - held - a.credit);
    const taken = Math.min(room, Math.max(0, slots));
    a.credit += taken;
    return slots - taken;
  }

  /** Replaces the agent's cached prompt keys (from a heartbeat). */
  setCache(agentId: string, keys: Iterable<string>): void {
    const a = this.slots.get(agentId);
    if (a) this.index(a, keys);
  }

  /** The agent gets no new leases. */
  drain(agentId: string): void {
    const a = this.slots.get(agentId);
    if (a) a.draining = true;
  }

  /** Connected agents with their lease counts (`leases` of an agent id). */
  list(leases: (agentId: string) => number): AgentInfo[] {
    return this.connected().map((a) => ({
      agentId: a.agentId,
      credit: a.credit,
      leases: leases(a.agentId),
      cachedPrompts: a.cachedPromptKeys.size,
      draining: a.draining,
      shardsDone: a.shardsDone,
    }));
  }

  /** Connected agents. */
  connected(): AgentSlot[] {
    return [...this.slots.values()].filter((a) => a.connected);
  }

  /** Connected agents that take grants now: not draining, with credit. */
  ready(): AgentSlot[] {
    return this.connected().filter((a) => !a.draining && a.credit > 0);
  }

  /**
   * The agent to take a shard of `promptKey` for cache affinity: among the ready agents that cache
   * the prompt or are its `home` (last granted it), the least loaded; undefined when none is ready.
   * Costs the number of agents caching the prompt, not the number of agents.
   */
  affine(promptKey: string, home: string | undefined, load: (a: AgentSlot) => number): AgentSlot | undefined {
    let best: AgentSlot | undefined;
    const consider = (a: AgentSlot | undefined) => {
      if (!a || !a.connected || a.draining || a.credit <= 0) return;
      if (!best || before(a, best, load)) best = a;
    };
    for (const a of this.holders.get(promptKey) ?? []) consider(a);
    if (home !== undefined) consider(this.slots.get(home));
    return best;
  }

  /** The agent was granted a lease: one credit spent, last in the round-robin order. */
  granted(a: AgentSlot): void {
    a.credit -= 1;
    a.lastGrantSeq = this.grantSeq++;
  }
}

/** Whether `a` comes before `b`: fewer leases, then granted to longer ago (round-robin). */
function before(a: AgentSlot, b: AgentSlot, load: (a: AgentSlot) => number): boolean {
  const d = load(a) - load(b);
  return d < 0 || (d === 0 && a.lastGrantSeq < b.lastGrantSeq);
}

/**
 * Ready agents ordered by load then round-robin place: a binary heap of snapshots. An agent whose
 * load or place changed since it was pushed (granted elsewhere) is stale and skipped on `pop`;
 * the caller pushes it again with its new key. O(log agents) a grant.
 */
export class AgentHeap {
  private readonly items: { a: AgentSlot; load: number; seq: number }[] = [];

  constructor(private readonly load: (a: AgentSlot) => number) {}

  push(a: AgentSlot): void {
    this.items.push({ a, load: this.load(a), seq: a.lastGrantSeq });
    let i = this.items.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }

  /** The least-loaded ready agent (removed from the heap), or undefined. */
  pop(): AgentSlot | undefined {
    while (this.items.length > 0) {
      const top = this.items[0]!;
      const last = this.items.pop()!;
      if (this.items.length > 0) {
        this.items[0] = last;
        this.sift(0);
      }
      const a = top.a;
      const current = a.connected && !a.draining && a.credit > 0 && top.load === this.load(a) && top.seq === a.lastGrantSeq;
      if (current) return a;
    }
    return undefined;
  }

  private sift(i: number): void {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < this.items.length && this.less(l, m)) m = l;
      if (r < this.items.length && this.less(r, m)) m = r;
      if (m === i) return;
      this.swap(i, m);
      i = m;
    }
  }

  private less(i: number, j: number): boolean {
    const x = this.items[i]!;
    const y = this.items[j]!;
    return x.load < y.load || (x.load === y.load && x.seq < y.seq);
  }

  private swap(i: number, j: number): void {
    [this.items[i], this.items[j]] = [this.items[j]!, this.items[i]!];
  }
}
