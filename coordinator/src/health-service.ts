/**
 * Minimal grpc.health.v1.Health (Check and Watch) for load balancers and `grpc_health_probe`.
 * grpc-js ships no health service and its messages are two tiny protos, so they are encoded by
 * hand here instead of adding a generated package: HealthCheckRequest { string service = 1; },
 * HealthCheckResponse { ServingStatus status = 1; } (UNKNOWN 0, SERVING 1, NOT_SERVING 2,
 * SERVICE_UNKNOWN 3).
 */
import { status as grpcStatus, type ServiceDefinition, type UntypedServiceImplementation, type ServerUnaryCall, type ServerWritableStream, type sendUnaryData } from "@grpc/grpc-js";

/** Serving states of grpc.health.v1. */
export enum ServingStatus { UNKNOWN = 0, SERVING = 1, NOT_SERVING = 2, SERVICE_UNKNOWN = 3 }

interface CheckRequest { service: string }
interface CheckResponse { status: ServingStatus }

function decodeRequest(buf: Buffer): CheckRequest {
  // field 1, wire type 2 (tag byte 0x0a), varint length, utf-8 bytes; other fields skipped
  let service = "";
  let i = 0;
  while (i < buf.length) {
    const tag = buf[i++]!;
    if ((tag & 7) !== 2) break;
    let len = 0;
    let shift = 0;
    for (;;) {
      const b = buf[i++]!;
      len |= (b & 0x7f) << shift;
      shift += 7;
      if (!(b & 0x80)) break;
    }
    if (tag >> 3 === 1) service = buf.subarray(i, i + len).toString("utf8");
    i += len;
  }
  return { service };
}

const encodeResponse = (r: CheckResponse): Buffer => (r.status === 0 ? Buffer.alloc(0) : Buffer.from([0x08, r.status]));

/** grpc.health.v1.Health service definition for `server.addService`. */
export const HealthService: ServiceDefinition = {
  check: {
    path: "/grpc.health.v1.Health/Check", requestStream: false, responseStream: false,
    requestSerialize: () => Buffer.alloc(0), requestDeserialize: decodeRequest,
    responseSerialize: encodeResponse, responseDeserialize: (b: Buffer) => ({ status: b.length >= 2 ? b[1]! : 0 }),
  },
  watch: {
    path: "/grpc.health.v1.Health/Watch", requestStream: false, responseStream: true,
    requestSerialize: () => Buffer.alloc(0), requestDeserialize: decodeRequest,
    responseSerialize: encodeResponse, responseDeserialize: (b: Buffer) => ({ status: b.length >= 2 ? b[1]! : 0 }),
  },
};

/**
 * Health implementation: "" (the whole server) and the named services report SERVING while
 * `ready()` holds; unknown service names get NOT_FOUND as the spec says.
 */
export function createHealthService(ready: () => boolean, services: string[]): UntypedServiceImplementation {
  const known = new Set(["", ...services]);
  const statusOf = (): ServingStatus => (ready() ? ServingStatus.SERVING : ServingStatus.NOT_SERVING);
  return {
    check(call: ServerUnaryCall<CheckRequest, CheckResponse>, cb: sendUnaryData<CheckResponse>) {
      if (!known.has(call.request.service)) return cb({ code: grpcStatus.NOT_FOUND, details: `unknown service "${call.request.service}"` });
      cb(null, { status: statusOf() });
    },
    watch(call: ServerWritableStream<CheckRequest, CheckResponse>) {
      if (!known.has(call.request.service)) {
        call.write({ status: ServingStatus.SERVICE_UNKNOWN });
        return;
      }
      let last = -1;
      const send = () => {
        const s = statusOf();
        if (s !== last) call.write({ status: (last = s) });
      };
      send();
      const t = setInterval(send, 1000);
      call.on("cancelled", () => clearInterval(t));
      call.on("close", () => clearInterval(t));
    },
  };
}
