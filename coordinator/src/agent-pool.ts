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
  private seq = 0;
  private grantSeq = 0;

  get(agentId: string): AgentSlot | undefined {
    return this.slots.get(agentId);
  }

  /** An agent said hello (or reconnected): its credit starts at zero until it sends Credit. */
  connect(agentId: string, cachedPromptKeys: Iterable<string>, workers = 1): void {
    const prev = this.slots.get(agentId);
    this.slots.set(agentId, {
      agentId,
      connected: true,
      credit: 0,
      draining: false,
      cachedPromptKeys: new Set(cachedPromptKeys),
      maxCredit: Math.max(1, Math.min(MAX_WORKERS_COUNTED, Math.floor(workers))) * CREDIT_PER_WORKER,
      seq: this.seq++,
      lastGrantSeq: prev?.lastGrantSeq ?? -1,
      shardsDone: prev?.shardsDone ?? 0,
    });
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
    if (a) a.cachedPromptKeys = new Set(keys);
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

  /** Fewest leases first (`load`); among equals the one granted to longest ago (round-robin). */
  leastLoaded(cands: AgentSlot[], load: (a: AgentSlot) => number): AgentSlot {
    return cands.reduce((best, a) => {
      const d = load(a) - load(best);
      return d < 0 || (d === 0 && a.lastGrantSeq < best.lastGrantSeq) ? a : best;
    });
  }

  /** The agent was granted a lease: one credit spent, last in the round-robin order. */
  granted(a: AgentSlot): void {
    a.credit -= 1;
    a.lastGrantSeq = this.grantSeq++;
  }
}
