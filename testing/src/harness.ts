/**
 * A real nats-server and a real coordinator on free loopback ports, with a SweepService client,
 * for tests. The coordinator is passed in (`Coordinator.start`), so this package does not depend
 * on the coordinator's code and the coordinator's own tests can use it.
 */
import * as grpc from "@grpc/grpc-js";
import { control } from "@factsweep/proto";
import { GOLDEN_DIR } from "./fixtures.js";
import { startNatsServer, type NatsServerHandle } from "./nats-server.js";

/** What the harness needs of a started coordinator. */
export interface CoordinatorProcess {
  readonly grpcPort: number;
  stop(): Promise<void>;
  crash(): Promise<void>;
}

/** The coordinator options the harness sets; the rest come from the caller. */
export interface HarnessDefaults {
  natsUrl: string;
  grpcHost?: string;
  grpcPort?: number;
  httpHost?: string;
  httpPort?: number;
  modelRoots: string[];
  leaseTtlMs?: number;
  heartbeatMs?: number;
  retryBackoffMs?: number;
  log?: (msg: string) => void;
}

/** A running nats-server and coordinator, with clients, torn down by `close`. */
export interface Harness<C extends CoordinatorProcess, O extends HarnessDefaults> {
  nats: NatsServerHandle;
  coord: C;
  addr: string;
  sweeps: control.SweepServiceClient;
  opts: O;
  /** Restart the coordinator over the same NATS (graceful, or `crash` without flushing). */
  restart(how?: "graceful" | "crash", samePort?: boolean): Promise<void>;
  close(): Promise<void>;
}

/** Starts nats-server and a coordinator (by `start`) whose model root is the golden folder. */
export async function startHarness<C extends CoordinatorProcess, O extends HarnessDefaults>(
  start: (opts: O) => Promise<C>,
  over: NoInfer<Partial<O>> = {},
): Promise<Harness<C, O>> {
  const nats = await startNatsServer();
  const defaults: HarnessDefaults = {
    natsUrl: nats.url,
    grpcHost: "127.0.0.1",
    grpcPort: 0,
    httpHost: "127.0.0.1",
    httpPort: 0,
    modelRoots: [GOLDEN_DIR],
    leaseTtlMs: 2000,
    heartbeatMs: 300,
    retryBackoffMs: 50,
    log: process.env.FACTSWEEP_TEST_LOG ? (m) => console.error(`[coordinator] ${m}`) : () => undefined,
  };
  const opts = { ...defaults, ...over } as O;
  let coord = await start(opts);
  const h: Harness<C, O> = {
    nats,
    coord,
    opts,
    addr: `127.0.0.1:${coord.grpcPort}`,
    sweeps: new control.SweepServiceClient(`127.0.0.1:${coord.grpcPort}`, grpc.credentials.createInsecure()),
    async restart(how = "graceful", samePort = false) {
      const port = coord.grpcPort;
      if (how === "crash") await coord.crash();
      else await coord.stop();
      h.sweeps.close();
      coord = await start({ ...opts, grpcPort: samePort ? port : 0 });
      h.coord = coord;
      h.addr = `127.0.0.1:${coord.grpcPort}`;
      h.sweeps = new control.SweepServiceClient(h.addr, grpc.credentials.createInsecure());
    },
    async close() {
      h.sweeps.close();
      await h.coord.stop();
      await nats.stop();
    },
  };
  return h;
}
