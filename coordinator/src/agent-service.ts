/**
 * gRPC AgentService: one long-lived bidi stream per node agent. The first message must be a
 * hello with the agent protocol version (a mismatch is refused with FAILED_PRECONDITION naming
 * both versions) and, when the coordinator has one, the API token; the coordinator answers with
 * a welcome (lease TTL, heartbeat interval). Then credit, heartbeats, done and failed flow in,
 * lease grants, cancels and drains flow out. When the stream ends the agent's leases are re-queued.
 */
import { randomUUID } from "node:crypto";
import type { PeerCertificate } from "node:tls";
import { status, type ServerDuplexStream } from "@grpc/grpc-js";
import { agent, AGENT_PROTOCOL_VERSION } from "@factsweep/proto";
import { RESULTS_SUBJECT_PREFIX } from "@factsweep/shared";
import { ProtocolVersionError, UnauthenticatedError } from "./errors.js";
import { tokenFromMetadata, tokenMatches } from "./auth.js";

/** One agent's stream as the scheduler sees it. */
export interface AgentSession {
  readonly agentId: string;
  readonly sessionId: string;
  readonly hostname: string;
  readonly workers: number;
  lastSeenMs: number;
  send(msg: agent.CoordinatorMessage): void;
  /** Ends the stream (e.g. a newer session of the same agent replaced it). */
  close(reason: string): void;
}

/** What the AgentService calls with each stream's messages (the scheduler). */
export interface AgentStreams {
  /** A hello was accepted. */
  attach(session: AgentSession, cachedPromptKeys: string[]): void;
  /** The stream ended. */
  detach(session: AgentSession, reason: string): void;
  credit(session: AgentSession, slots: number): void;
  heartbeat(session: AgentSession, hb: agent.Heartbeat): void;
  done(session: AgentSession, d: agent.ShardDone): void;
  failed(session: AgentSession, f: agent.ShardFailed): void;
}

/** Options of {@link createAgentService}. */
export interface AgentServiceOptions {
  scheduler: AgentStreams;
  leaseTtlMs: number;
  heartbeatMs: number;
  /** When set, agents must present it (hello.token or `authorization: Bearer`). */
  token?: string;
  /** Protocol version this coordinator speaks; default AGENT_PROTOCOL_VERSION (tests override). */
  protocolVersion?: number;
  /**
   * mTLS: an agent's hello.agent_id must be its client certificate's subject CN or a DNS name of its
   * subjectAltName, so that a certificate is one agent and no client can take another's id.
   */
  agentIdFromCertificate?: boolean;
  /** False while the coordinator loads its state: agents are told to come back later. */
  isReady?: () => boolean;
  log?: (msg: string) => void;
}

type Call = ServerDuplexStream<agent.AgentMessage, agent.CoordinatorMessage>;

/** The AgentService implementation for `server.addService(agent.AgentServiceService, ...)`. */
export function createAgentService(opts: AgentServiceOptions): agent.AgentServiceServer {
  const version = opts.protocolVersion ?? AGENT_PROTOCOL_VERSION;
  const log = opts.log ?? (() => undefined);
  return {
    connect(call: Call): void {
      let session: (AgentSession & { ended: boolean }) | undefined;
      const fail = (code: status, details: string): void => {
        call.emit("error", { code, details });
      };
      const end = (reason: string): void => {
        if (session && !session.ended) {
          session.ended = true;
          opts.scheduler.detach(session, reason);
        }
      };
      call.on("data", (msg: agent.AgentMessage) => {
        const body = msg.body;
        if (!body) return;
        if (!session) {
          if (body.$case !== "hello") {
            fail(status.FAILED_PRECONDITION, `AgentService/Connect: the first message must be a hello, got ${body.$case}`);
            return;
          }
          const h = body.hello;
          if (h.protocolVersion !== version) {
            const err = new ProtocolVersionError(h.agentId || "(no id)", h.protocolVersion, version);
            log(err.message);
            fail(err.code, err.message);
            return;
          }
          if (opts.token && !tokenMatches(h.token, opts.token) && !tokenMatches(tokenFromMetadata(call.metadata), opts.token)) {
            const err = new UnauthenticatedError(`agent "${h.agentId}" refused: missing or wrong token; start the agent with the coordinator's --token`);
            fail(err.code, err.message);
            return;
          }
          if (!h.agentId) {
            fail(status.INVALID_ARGUMENT, "AgentService/Connect: hello.agent_id is empty; give every agent a unique id (--agent-id)");
            return;
          }
          if (opts.agentIdFromCertificate) {
            const refusal = certificateRefusal(h.agentId, call.getAuthContext().sslPeerCertificate);
            if (refusal) {
              log(refusal.details);
              fail(refusal.code, refusal.details);
              return;
            }
          }
          if (opts.isReady && !opts.isReady()) {
            fail(status.UNAVAILABLE, "coordinator is starting (loading state); retry shortly");
            return;
          }
          const sessionId = randomUUID();
          session = {
            agentId: h.agentId,
            sessionId,
            hostname: h.hostname,
            workers: h.workers.length,
            lastSeenMs: Date.now(),
            ended: false,
            send: (m) => {
              if (!session?.ended && !call.writableEnded) call.write(m);
            },
            close: (reason) => {
              if (session) session.ended = true;
              fail(status.ABORTED, reason);
            },
          };
          try {
            opts.scheduler.attach(session, h.cachedPromptKeys);
          } catch (err) {
            // Refused (e.g. ALREADY_EXISTS: the agent id has a live stream): the session never began.
            const e = err as Error & { code?: status };
            session.ended = true;
            fail(e.code ?? status.INTERNAL, e.message);
            return;
          }
          call.write({
            body: {
              $case: "welcome",
              welcome: { sessionId, leaseTtlMs: opts.leaseTtlMs, heartbeatIntervalMs: opts.heartbeatMs, natsResultsSubjectPrefix: RESULTS_SUBJECT_PREFIX },
            },
          });
          return;
        }
        if (session.ended) return; // refused, replaced or closed: its messages change nothing
        switch (body.$case) {
          case "credit":
            opts.scheduler.credit(session, body.credit.slots);
            break;
          case "heartbeat":
            opts.scheduler.heartbeat(session, body.heartbeat);
            break;
          case "done":
            opts.scheduler.done(session, body.done);
            break;
          case "failed":
            opts.scheduler.failed(session, body.failed);
            break;
          case "hello":
            break; // a repeated hello changes nothing
        }
      });
      call.on("end", () => {
        end("stream closed by the agent");
        if (!call.writableEnded) call.end();
      });
      call.on("cancelled", () => end("stream cancelled"));
      call.on("error", () => end("stream error"));
      call.on("close", () => end("stream closed"));
    },
  };
}

/** The names a client certificate vouches for: its subject CN and the DNS names of its subjectAltName. */
export function certificateNames(cert: PeerCertificate | undefined): string[] {
  if (!cert || !cert.subject) return [];
  const cn = cert.subject.CN;
  const names = Array.isArray(cn) ? [...cn] : cn ? [cn] : [];
  for (const entry of (cert.subjectaltname ?? "").split(",")) {
    const m = /^\s*DNS:(.+?)\s*$/.exec(entry);
    if (m) names.push(m[1]!);
  }
  return names;
}

/** Why an agent may not use `agentId` with this client certificate (undefined: it may). */
export function certificateRefusal(agentId: string, cert: PeerCertificate | undefined): { code: status; details: string } | undefined {
  const names = certificateNames(cert);
  if (names.length === 0) {
    return {
      code: status.UNAUTHENTICATED,
      details: `agent "${agentId}" refused: the coordinator binds agent ids to client certificates (--agent-id-from-cert) and this connection presented none with a CN or DNS name; start the agent with --tls-cert/--tls-key`,
    };
  }
  if (names.includes(agentId)) return undefined;
  return {
    code: status.PERMISSION_DENIED,
    details: `agent "${agentId}" refused: its client certificate names ${names.map((n) => `"${n}"`).join(", ")}; an agent's id must be one of them (--agent-id-from-cert): start it with --agent-id ${names[0]} or issue it a certificate for its id`,
  };
}
