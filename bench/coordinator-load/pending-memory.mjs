#!/usr/bin/env node
// Memory a pending shard costs the coordinator (issue 16, RSS at 1M against 100k): S pending entries
// of the load sweep's shape (ids `<sweep>.<prompt>.<part>`, 512 parts a prompt, the prompt key shared
// per prompt as a launch shares it) restored into the real LeaseTable, and a 50-byte body each into
// ShardBodies; heap and array-buffer bytes after a forced GC, per shard.
//
//   node --expose-gc bench/coordinator-load/pending-memory.mjs [--shards 1000000]
import { parseArgs } from "node:util";
import { LeaseTable } from "@factsweep/coordinator";
import { ShardBodies } from "../../coordinator/dist/shard-bodies.js"; // internal to the scheduler: not exported

const { values: opt } = parseArgs({ options: { shards: { type: "string", default: "1000000" } } });
const n = Number(opt.shards);
if (typeof global.gc !== "function") throw new Error("run with node --expose-gc");
const mem = () => {
  global.gc();
  const m = process.memoryUsage();
  return { heap: m.heapUsed, buffers: m.arrayBuffers };
};
const sweepId = "coordinator-load-abc123";
const m0 = mem();
const table = new LeaseTable({ leaseTtlMs: 15_000 });
const bodies = new ShardBodies();
const body = new Uint8Array(50);
let key = "";
for (let i = 0; i < n; i++) {
  const prompt = Math.floor(i / 512);
  if (i % 512 === 0) key = `${sweepId}/${prompt}`;
  const e = LeaseTable.pending(`${sweepId}.${prompt}.${i % 512}`, sweepId, key, 1);
  table.restore(e);
  bodies.set(sweepId, e.shardId, body);
}
const m1 = mem();
// Keeps both alive past the measurement.
if (table.counts(sweepId).total !== n || !bodies.get(sweepId, `${sweepId}.0.0`)) throw new Error("entries missing");
const per = (b) => Math.round(b / n);
console.log(JSON.stringify({ shards: n, heap_bytes_per_shard: per(m1.heap - m0.heap), buffer_bytes_per_shard: per(m1.buffers - m0.buffers) }));
