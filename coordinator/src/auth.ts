/** API token checks: `authorization: Bearer <token>` metadata on every gRPC call when configured. */
import { timingSafeEqual } from "node:crypto";
import type { Metadata } from "@grpc/grpc-js";
import { UnauthenticatedError } from "./errors.js";

/** The bearer token of a call's metadata, or undefined. */
export function tokenFromMetadata(md: Metadata): string | undefined {
  const v = md.get("authorization")[0];
  if (typeof v !== "string") return undefined;
  const m = /^Bearer\s+(.+)$/i.exec(v.trim());
  return m?.[1];
}

/** Constant-time comparison of a presented token with the expected one. */
export function tokenMatches(got: string | undefined, expected: string): boolean {
  if (got === undefined) return false;
  const a = Buffer.from(got);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Throws UnauthenticatedError unless the call carries the expected token (no-op when none is configured). */
export function checkToken(md: Metadata, expected: string | undefined): void {
  if (!expected) return;
  const got = tokenFromMetadata(md);
  if (got === undefined)
    throw new UnauthenticatedError("missing API token: this coordinator requires `authorization: Bearer <token>` (sweepctl --token or FACTSWEEP_TOKEN)");
  if (!tokenMatches(got, expected)) throw new UnauthenticatedError("wrong API token (sweepctl --token or FACTSWEEP_TOKEN)");
}

/** Whether a listen address reaches only this host (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
  const h = host
    .trim()
    .replace(/^\[(.*)\]$/, "$1")
    .toLowerCase();
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || h === "::ffff:127.0.0.1";
}

/** What the coordinator's gRPC listener is given: where it binds, TLS, both tokens, the override. */
export interface ListenSecurity {
  grpcHost: string;
  tls: boolean;
  userToken?: string;
  agentToken?: string;
  /** --insecure-listen: a closed network; plaintext gRPC on a non-loopback address is allowed (tokens are still required). */
  insecureListen?: boolean;
}

/**
 * Why this gRPC listener must not start, or undefined when it may. Loopback: anything goes (the
 * local demo, tests). Any other address: both tokens, and TLS unless --insecure-listen.
 */
export function listenRefusal(s: ListenSecurity): string | undefined {
  if (isLoopbackHost(s.grpcHost)) return undefined;
  const missing: string[] = [];
  if (!s.tls && !s.insecureListen) missing.push("TLS (--tls-cert and --tls-key, and --tls-ca for mTLS)");
  if (!s.userToken) missing.push("a user token for sweepctl (--user-token or FACTSWEEP_USER_TOKEN)");
  if (!s.agentToken) missing.push("an agent token for node agents (--agent-token or FACTSWEEP_AGENT_TOKEN)");
  if (missing.length === 0) return undefined;
  return (
    `refusing to serve gRPC on ${s.grpcHost}, reachable from other hosts, without ${missing.join(" and ")}. ` +
    `--token / FACTSWEEP_TOKEN sets both tokens at once. ` +
    `Keep --grpc-host 127.0.0.1 (the default) to serve this host only` +
    (s.tls ? "" : `; on a closed network --insecure-listen allows plaintext gRPC (the tokens are still required)`) +
    ` (deploy/README.md, "Security")`
  );
}
