/**
 * grpc.health.v1.Health (Check, Watch, List) for load balancers and `grpc_health_probe`, served by
 * grpc-node's own `grpc-health-check`. "" (the whole server) and the named services are SERVING
 * while the coordinator is ready and NOT_SERVING otherwise; unknown names get NOT_FOUND (Check) or
 * SERVICE_UNKNOWN (Watch). The library keeps a status map that watchers are told about on every
 * change, so readiness (a function of the coordinator) is copied into it by `refresh()`: at each
 * transition the coordinator knows of, and once a second for the ones it does not (NATS closed).
 */
import type { Server } from "@grpc/grpc-js";
import { HealthImplementation, type ServingStatus } from "grpc-health-check";

/** The health service of one gRPC server, following a readiness function. */
export class Health {
  private readonly impl: HealthImplementation;
  private readonly names: string[];
  private last: ServingStatus = "NOT_SERVING";
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly ready: () => boolean,
    services: string[],
  ) {
    this.names = ["", ...services];
    this.impl = new HealthImplementation(Object.fromEntries(this.names.map((n) => [n, this.last])));
  }

  /** Adds the service to `server` and starts following readiness. */
  addToServer(server: Server): void {
    this.impl.addToServer(server);
    this.timer ??= setInterval(() => this.refresh(), 1000);
    this.timer.unref();
  }

  /** Copies readiness into the status map; watchers hear of a change at once. */
  refresh(): void {
    const s: ServingStatus = this.ready() ? "SERVING" : "NOT_SERVING";
    if (s === this.last) return;
    this.last = s;
    for (const n of this.names) this.impl.setStatus(n, s);
  }

  /** Final refresh (watchers learn NOT_SERVING) and stop following. */
  close(): void {
    this.refresh();
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
