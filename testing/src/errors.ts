import { FactsweepError } from "@factsweep/shared";

/** The nats-server child could not be started, or stopped unexpectedly. */
export class NatsServerError extends FactsweepError {
  readonly port: number | undefined;
  constructor(message: string, port?: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "NatsServerError";
    this.port = port;
  }
}
