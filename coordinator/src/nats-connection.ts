/** The coordinator's NATS connection (its credentials, TLS and own reply subjects). */
import { readFileSync } from "node:fs";
import { connect, credsAuthenticator, type NatsConnection, type ConnectionOptions } from "@nats-io/transport-node";

/** Where the coordinator's NATS is and how it logs in (part of `CoordinatorOptions`). */
export interface NatsConnectOptions {
  natsUrl: string;
  /** NATS credentials: a .creds file, or user/password, or a token. */
  natsCreds?: string;
  natsUser?: string;
  natsPass?: string;
  natsToken?: string;
  /** CA (PEM file) of the NATS server's certificate: TLS to NATS (a tls:// URL, or a server that requires it). */
  natsTlsCa?: string;
}

/**
 * The NATS connection of the coordinator: reconnects forever, waits for the first connect (NATS may
 * start after it). A refusal of its credentials ends the start, naming the flags to check.
 */
export async function connectNats(o: NatsConnectOptions): Promise<NatsConnection> {
  const natsOpts: ConnectionOptions = {
    servers: o.natsUrl,
    name: "factsweep-coordinator",
    // Its own reply subjects: agents may subscribe to _INBOX.> (their publish acks) and must not see
    // the coordinator's replies (KV reads) there (deploy/nats/accounts.conf).
    inboxPrefix: "_INBOX_coordinator",
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    waitOnFirstConnect: true,
    // No stack-carrying error built ahead of every request (each KV write is one): that took 19% of
    // the coordinator's CPU under load (bench/coordinator-load); a failed request still says what failed.
    noAsyncTraces: true,
  };
  if (o.natsCreds) natsOpts.authenticator = credsAuthenticator(readFileSync(o.natsCreds));
  if (o.natsUser) Object.assign(natsOpts, { user: o.natsUser, pass: o.natsPass ?? "" });
  if (o.natsToken) natsOpts.token = o.natsToken;
  if (o.natsTlsCa) natsOpts.tls = { ca: readFileSync(o.natsTlsCa, "utf8") };
  try {
    return await connect(natsOpts);
  } catch (err) {
    const msg = (err as Error).message;
    if (!/authori[sz]ation|authentication/i.test(msg)) throw err;
    throw new Error(
      `NATS at ${o.natsUrl} refused the coordinator's credentials (${msg}); check --nats-user with --nats-pass, --nats-pass-file or FACTSWEEP_NATS_PASS, or --nats-creds`,
      {
        cause: err,
      },
    );
  }
}
