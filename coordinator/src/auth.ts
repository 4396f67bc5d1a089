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
