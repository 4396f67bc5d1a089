/**
 * The agent's side of ROME covariances once per cluster (shared/covariance.ts): a covariance shard's
 * engine writes its partial moment to a file here, which is uploaded to the object store as the
 * shard's part; an edit shard's C is fetched from the object store once per agent process, checked
 * (size, metadata; the client checks the digest), kept as a file under `dir`, and handed to the
 * engine as `covariance_file` (a 5120² float32 C is 105 MB: a path, not a frame).
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Objm, type ObjectStore } from "@nats-io/obj";
import type { NatsConnection } from "@nats-io/transport-node";
import { COVARIANCE_BUCKET, covariancePartName, covarianceRefOf, MAX_COVARIANCE_DIM, type CovarianceRef } from "@factsweep/shared";
import type { Counter } from "prom-client";

/** What the engine reads instead of computing C (rome params `covariance_file`). */
export interface CovarianceFile {
  path: string;
  sha256: string;
  dim: number;
  tokens: number;
}

/** A shard's params made ready for the engine, and what to do with its result. */
export interface PreparedParams {
  paramsJson: string;
  /** Covariance shards: uploads the moment the engine wrote, given the engine's result_json. */
  finish?: (resultJson: string) => Promise<void>;
}

/** Object store access and the local copies of one agent process. */
export class AgentCovariances {
  private os: Promise<ObjectStore> | undefined;
  private readonly files = new Map<string, Promise<CovarianceFile>>();

  constructor(
    private readonly nc: Promise<NatsConnection>,
    private readonly dir: string,
    /** factsweep_agent_covariances_total{source}. */
    private readonly counter: Counter<"source">,
  ) {}

  private store(): Promise<ObjectStore> {
    this.os ??= this.nc.then((nc) => new Objm(nc).open(COVARIANCE_BUCKET));
    this.os.catch(() => (this.os = undefined)); // opened again next time
    return this.os;
  }

  /**
   * An edit shard's params for the engine: an edit gets `covariance_file` (its C, fetched), a
   * covariance shard `moment_path` (and `finish` uploads that file). Others are returned as they are.
   * @throws Error naming `params.covariance` for a malformed reference (input from outside).
   */
  async prepare(paramsJson: string): Promise<PreparedParams> {
    const ref = covarianceRefOf(paramsJson);
    if (!ref) return { paramsJson };
    const params = JSON.parse(paramsJson) as Record<string, unknown>;
    mkdirSync(this.dir, { recursive: true });
    if (ref.parts === undefined) {
      const file = await this.fetch(ref.object);
      return { paramsJson: JSON.stringify({ ...params, covariance_file: file }) };
    }
    const path = join(this.dir, `${covariancePartName(ref.object, ref.part!, ref.parts)}.${randomBytes(4).toString("hex")}.f32`);
    return { paramsJson: JSON.stringify({ ...params, moment_path: path }), finish: (r) => this.upload(ref, path, r) };
  }

  /** Uploads a covariance shard's moment file as its part (the engine's hash checked first), then removes the file. */
  private async upload(ref: CovarianceRef, path: string, resultJson: string): Promise<void> {
    try {
      const r = JSON.parse(resultJson) as { moment_sha256?: string; covariance?: { tokens?: number; dim?: number } };
      const blob = readFileSync(path);
      const sha = createHash("sha256").update(blob).digest("hex");
      if (sha !== r.moment_sha256) throw new Error(`the moment file ${path} has sha256 ${sha}, the engine reported ${String(r.moment_sha256)}`);
      const { tokens, dim } = r.covariance ?? {};
      if (!Number.isSafeInteger(tokens) || !Number.isSafeInteger(dim) || dim! * dim! * 4 !== blob.byteLength) {
        throw new Error(`the engine's covariance summary (tokens ${tokens}, dim ${dim}) does not match the ${blob.byteLength}-byte moment`);
      }
      const os = await this.store();
      await os.putBlob({ name: covariancePartName(ref.object, ref.part!, ref.parts!), metadata: { tokens: String(tokens), dim: String(dim) } }, blob);
    } finally {
      rmSync(path, { force: true });
    }
  }

  /** C as a local file: from this process' copy, else from the object store (checked, written whole, then renamed). */
  private fetch(object: string): Promise<CovarianceFile> {
    const have = this.files.get(object);
    if (have) {
      return have.then((f) => {
        this.counter.inc({ source: "local" });
        return f;
      });
    }
    const p = (async (): Promise<CovarianceFile> => {
      const os = await this.store();
      const info = await os.info(object);
      if (!info || info.deleted) throw new Error(`ROME covariance ${object} is not in the object store ${COVARIANCE_BUCKET}`);
      const blob = await os.getBlob(object); // the client checks the object's SHA-256 digest
      if (!blob) throw new Error(`ROME covariance ${object} vanished from the object store while being read`);
      const dim = Number(info.metadata?.dim);
      const tokens = Number(info.metadata?.tokens);
      if (
        !Number.isSafeInteger(dim) ||
        dim < 1 ||
        dim > MAX_COVARIANCE_DIM ||
        dim * dim * 4 !== blob.byteLength ||
        !Number.isSafeInteger(tokens) ||
        tokens < 1
      ) {
        throw new Error(
          `ROME covariance ${object}: ${blob.byteLength} bytes with metadata dim ${info.metadata?.dim}, tokens ${info.metadata?.tokens}: not a float32 dim x dim matrix`,
        );
      }
      const path = join(this.dir, `${object}.f32`);
      const tmp = `${path}.${randomBytes(4).toString("hex")}.tmp`;
      writeFileSync(tmp, blob);
      renameSync(tmp, path);
      this.counter.inc({ source: "fetched" });
      return { path, sha256: createHash("sha256").update(blob).digest("hex"), dim, tokens };
    })();
    this.files.set(object, p);
    p.catch(() => this.files.delete(object)); // fetched again at the next shard
    return p;
  }
}
