/** Clients for tests: promise-form gRPC calls, an agent stream, Prometheus text samples. */
import { connect } from "node:net";
import { networkInterfaces } from "node:os";
import * as grpc from "@grpc/grpc-js";
import { agent, control } from "@factsweep/proto";

/** Promise form of a unary SweepService call; rejects with the grpc ServiceError. */
export function call<Req, Res>(
  c: control.SweepServiceClient,
  m: (req: Req, md: grpc.Metadata, cb: (e: grpc.ServiceError | null, r: Res) => void) => unknown,
  req: Req,
  md = new grpc.Metadata(),
): Promise<Res> {
  return new Promise((res, rej) => m.call(c, req, md, (e, r) => (e ? rej(e) : res(r))));
}

/** Opens an AgentService stream. */
export function agentStream(
  addr: string,
  creds: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
): grpc.ClientDuplexStream<agent.AgentMessage, agent.CoordinatorMessage> & { client: agent.AgentServiceClient } {
  const client = new agent.AgentServiceClient(addr, creds);
  const s = client.connect() as grpc.ClientDuplexStream<agent.AgentMessage, agent.CoordinatorMessage> & { client: agent.AgentServiceClient };
  s.client = client;
  return s;
}

/** The value of a metric sample in Prometheus text whose labels include `labels`; undefined if absent. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][\w:]*)(\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[3] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[4]);
  }
  return undefined;
}

/** This host's first IPv4 address other than loopback, if it has one (to show a server is not reachable there). */
export const outsideAddress = (): string | undefined =>
  Object.values(networkInterfaces())
    .flat()
    .find((a) => a && a.family === "IPv4" && !a.internal)?.address;

/** Whether a TCP connection to host:port is accepted. */
export const reachable = (host: string, port: number) =>
  new Promise<boolean>((res) => {
    const s = connect({ host, port }, () => {
      s.destroy();
      res(true);
    });
    s.on("error", () => res(false));
  });
