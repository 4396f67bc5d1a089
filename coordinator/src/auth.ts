/** API token checks: `authorization: Bearer <token>` metadata on every gRPC call when configured. */
import { timingSafeEqual } from "node:crypto";
import type { Metadata } from "@grpc/grpc-js";
import { isLoopbackHost } from "@factsweep/shared";
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

export { isLoopbackHost }; // listen addresses; shared with the node agent's dial check

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

/** Shortest token the coordinator accepts (`openssl rand -hex 32` makes 64 characters). */
export const MIN_TOKEN_LENGTH = 16;

/** Words of the placeholder values the deployment files ship (and their usual kin). */
const PLACEHOLDER = /placeholder|replace|change[-_ ]?me|example|your[-_ ]?token|<[^>]*>|todo|xxxx/i;

/**
 * Why a configured token must not be used, or undefined when it may: a placeholder left from the
 * deployment files, or one too short to resist guessing. `name` is the flag or variable it came from.
 */
export function weakTokenRefusal(name: string, token: string | undefined): string | undefined {
  if (token === undefined) return undefined;
  const t = token.trim();
  if (PLACEHOLDER.test(t)) {
    return `${name} is a placeholder (${JSON.stringify(t.slice(0, 24))}${t.length > 24 ? "..." : ""}), not a secret: replace it with a random token (openssl rand -hex 32) in your secret or environment file`;
  }
  if (t.length < MIN_TOKEN_LENGTH || /^(.)\1*$/.test(t)) {
    return `${name} is ${t.length} character(s) long (or one character repeated): give at least ${MIN_TOKEN_LENGTH} random characters (openssl rand -hex 32)`;
  }
  return undefined;
}
