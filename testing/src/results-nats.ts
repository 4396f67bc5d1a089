/** A real nats-server with the results stream, and reading back what was stored in it. */
import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { connect, nanos, type NatsConnection } from "@nats-io/transport-node";
import { sweep } from "@factsweep/proto";
import { RESULTS_STREAM, RESULTS_SUBJECT_PREFIX } from "@factsweep/shared";
import { startNatsServer, type NatsServerHandle } from "./nats-server.js";

/** A real nats-server -js with the results stream created as the coordinator creates it. */
export async function startResultsNats(): Promise<{ server: NatsServerHandle; nc: NatsConnection; jsm: JetStreamManager; stop(): Promise<void> }> {
  const server = await startNatsServer();
  const nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 200 });
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: RESULTS_STREAM, subjects: [`${RESULTS_SUBJECT_PREFIX}.>`], duplicate_window: nanos(120_000) });
  return {
    server,
    nc,
    jsm,
    async stop() {
      await nc.close().catch(() => undefined);
      await server.stop();
    },
  };
}

/** Every ShardResult stored for a sweep, in stream order. */
export async function storedResults(jsm: JetStreamManager, sweepId: string): Promise<{ seq: number; msgId: string | undefined; result: sweep.ShardResult }[]> {
  // Right after a nats-server restart JetStream may still be recovering its streams (seconds on a
  // loaded machine): retry the read for a bounded while instead of failing on the first timeout.
  let info: Awaited<ReturnType<JetStreamManager["streams"]["info"]>> | undefined;
  for (let attempt = 0; !info; attempt++) {
    try {
      info = await jsm.streams.info(RESULTS_STREAM);
    } catch (err) {
      if (attempt >= 10) throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  const out: { seq: number; msgId: string | undefined; result: sweep.ShardResult }[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const m = await jsm.streams.getMessage(RESULTS_STREAM, { seq }).catch(() => null);
    if (!m || m.subject !== `${RESULTS_SUBJECT_PREFIX}.${sweepId}`) continue;
    out.push({ seq, msgId: m.header?.get("Nats-Msg-Id"), result: sweep.ShardResult.decode(m.data) });
  }
  return out;
}
