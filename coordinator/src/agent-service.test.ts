import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { AGENT_PROTOCOL_VERSION, type agent } from "@factsweep/proto";
import { agentStream, startHarness, type Harness } from "@factsweep/testing";
import { Coordinator, type CoordinatorOptions } from "./coordinator.js";

let h: Harness<Coordinator, CoordinatorOptions>;
before(async () => {
  h = await startHarness(Coordinator.start, { token: "agent-token" });
});
after(async () => {
  await h.close();
});

const hello = (over: Partial<agent.AgentHello> = {}): agent.AgentMessage => ({
  body: {
    $case: "hello",
    hello: {
      protocolVersion: AGENT_PROTOCOL_VERSION,
      agentId: "a1",
      hostname: "h",
      workers: [{ device: "cpu:0", memoryBytes: 0, ready: true }],
      cachedPromptKeys: [],
      token: "agent-token",
      ...over,
    },
  },
});

/** First message or the stream's error. */
function firstReply(msg: agent.AgentMessage): Promise<{ msg?: agent.CoordinatorMessage; err?: grpc.ServiceError; s: ReturnType<typeof agentStream> }> {
  const s = agentStream(h.addr);
  return new Promise((res) => {
    s.on("data", (m: agent.CoordinatorMessage) => res({ msg: m, s }));
    s.on("error", (e: grpc.ServiceError) => res({ err: e, s }));
    s.write(msg);
  });
}

test("an agent of another protocol version is refused with FAILED_PRECONDITION naming both versions", async () => {
  const { err, s } = await firstReply(hello({ protocolVersion: AGENT_PROTOCOL_VERSION + 1 }));
  s.client.close();
  assert.equal(err?.code, grpc.status.FAILED_PRECONDITION);
  assert.match(err!.details, new RegExp(`version ${AGENT_PROTOCOL_VERSION + 1}.*version ${AGENT_PROTOCOL_VERSION}`));
  assert.equal(h.coord.agents().length, 0, "the refused agent is not registered");
});

test("an agent without the token is refused with UNAUTHENTICATED", async () => {
  const { err, s } = await firstReply(hello({ token: "" }));
  s.client.close();
  assert.equal(err?.code, grpc.status.UNAUTHENTICATED);
});

test("an agent of the same version is welcomed with the lease TTL and heartbeat interval and listed", async () => {
  const { msg, s } = await firstReply(hello());
  assert.equal(msg?.body?.$case, "welcome");
  if (msg?.body?.$case === "welcome") {
    assert.equal(msg.body.welcome.leaseTtlMs, 2000);
    assert.equal(msg.body.welcome.heartbeatIntervalMs, 300);
    assert.equal(msg.body.welcome.natsResultsSubjectPrefix, "factsweep.results");
  }
  assert.deepEqual(
    h.coord.agents().map((a) => a.agentId),
    ["a1"],
  );
  s.end();
  s.client.close();
  for (let i = 0; i < 50 && h.coord.agents().length > 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(h.coord.agents().length, 0, "a closed stream unregisters the agent");
});
