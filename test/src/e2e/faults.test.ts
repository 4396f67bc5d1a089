import assert from "node:assert/strict";
import { test } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { AGENT_PROTOCOL_VERSION, agent as agentProto } from "@factsweep/proto";
import { Cluster, engineReference, goldenMambaSpec, type SweepStatus } from "./cluster.js";
import { assertCompleteAndEqual } from "./assertions.js";

const midway = (s: SweepStatus): boolean => s.counts.doneCells > 0.1 * s.counts.plannedCells && s.counts.doneCells < 0.6 * s.counts.plannedCells;

/** Launches a sweep big enough to be interrupted, runs `fault` midway, and checks the end state. */
async function sweepThrough(name: string, fault: (c: Cluster, sweepId: string) => Promise<void>, t: { diagnostic(m: string): void }): Promise<SweepStatus> {
  const cluster = await new Cluster({ agents: 3, leaseTtlMs: 2000 }).start();
  try {
    // 30 prompts (5,760 cells): the engine runs ~1,000 cells/s here, so a smaller sweep can finish
    // between two status polls (~0.5 s each) and never be seen midway.
    const spec = cluster.writeSpec(`${name}.yaml`, goldenMambaSpec({ prompts: 30, name }));
    const launched = await cluster.sweepctl("launch", spec, "--id", name, "--detach");
    assert.equal(launched.exitCode, 0, launched.stderr);
    const before = await cluster.waitFor(name, midway);
    const started = Date.now();
    await fault(cluster, name);
    const done = await cluster.waitFor(name, (s) => s.state === "done", 240_000);
    t.diagnostic(
      `fault at ${before.counts.doneCells}/${before.counts.plannedCells} cells; recovered and finished ${Date.now() - started} ms later; retries ${done.counts.retries}`,
    );
    await assertCompleteAndEqual(cluster, name, await engineReference(spec), done.counts.shardsTotal);
    return done;
  } catch (err) {
    console.error(cluster.logs());
    throw err;
  } finally {
    await cluster.stop();
  }
}

/** The agent currently holding the most leases. */
async function busyAgent(c: Cluster): Promise<string> {
  const r = JSON.parse((await c.sweepctl("agents", "--json")).stdout) as { agents: { agentId: string; leases: number }[] };
  const a = [...r.agents].sort((x, y) => y.leases - x.leases)[0];
  assert.ok(a && a.leases > 0, `no agent holds a lease: ${JSON.stringify(r)}`);
  return a.agentId;
}

test("an agent SIGKILLed mid-shard: its shards are re-leased and every cell completes once", async (t) => {
  const done = await sweepThrough(
    "fault-agent",
    async (c) => {
      const id = await busyAgent(c);
      c.agents.find((a) => a.id === id)!.child.kill("SIGKILL");
    },
    t,
  );
  assert.ok(done.counts.retries >= 1, "the killed agent's lease should have been retried");
});

test("the coordinator SIGKILLed mid-sweep and restarted carries on from JetStream and completes every cell once", async (t) => {
  await sweepThrough(
    "fault-coordinator",
    async (c) => {
      c.coordinator.kill("SIGKILL");
      await c.coordinator.catch(() => undefined);
      await new Promise((r) => setTimeout(r, 500));
      await c.startCoordinator();
    },
    t,
  );
});

test("a nats-server restart mid-sweep loses no result and the sweep completes every cell once", async (t) => {
  await sweepThrough(
    "fault-nats",
    async (c) => {
      await c.nats.restart();
    },
    t,
  );
});

test("an engine worker killed mid-shard is restarted by its agent and the sweep completes every cell once", async (t) => {
  await sweepThrough(
    "fault-worker",
    async (c) => {
      const id = await busyAgent(c);
      const a = c.agents.find((x) => x.id === id)!;
      const pids = c.workerPids(a);
      assert.ok(pids.length > 0, `no engine worker found under agent ${id}`);
      for (const pid of pids) process.kill(pid, "SIGKILL");
    },
    t,
  );
});

test("an agent speaking another protocol version is refused with a message naming both versions", async () => {
  const cluster = await new Cluster({ agents: 0 }).start();
  try {
    const Client = grpc.makeGenericClientConstructor(agentProto.AgentServiceService, "AgentService");
    const client = new Client(cluster.address, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
      connect(): grpc.ClientDuplexStream<agentProto.AgentMessage, agentProto.CoordinatorMessage>;
    };
    const stream = client.connect();
    const err = await new Promise<grpc.ServiceError>((res, rej) => {
      stream.on("error", res);
      stream.on("data", (m: agentProto.CoordinatorMessage) => rej(new Error(`expected a refusal, got ${JSON.stringify(m)}`)));
      stream.write({
        body: { $case: "hello", hello: { protocolVersion: 999, agentId: "old-agent", hostname: "h", workers: [], cachedPromptKeys: [], token: "" } },
      });
    });
    assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
    assert.match(err.details, /999/);
    assert.match(err.details, new RegExp(`\\bversion ${AGENT_PROTOCOL_VERSION}\\b`));
    client.close();
    assert.equal((await cluster.sweepctl("list")).exitCode, 0, "the coordinator keeps serving");
  } finally {
    await cluster.stop();
  }
});
