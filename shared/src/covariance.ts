/**
 * ROME's key covariance C, computed once per cluster (issue 17 item 2): the names and the shard
 * parameters the planner, the coordinator and the agents agree on. C of (model, layer, module,
 * corpus, max length) is the object {@link covarianceObjectName} in the JetStream object store
 * {@link COVARIANCE_BUCKET}: the sum of its covariance shards' partial moments (objects
 * {@link covariancePartName}, uploaded by the agents) over their token count, merged by the coordinator.
 */

/** JetStream object store bucket of the merged covariances and their partial moments. */
export const COVARIANCE_BUCKET = "factsweep-cov";

/** An object name: `cov.<model fingerprint>.l<layer>.<module>.<corpus hash>.m<max len>` (letters, digits, `._-`). */
const OBJECT_NAME = /^cov\.[0-9a-f]{16}\.l\d{1,5}\.[A-Za-z0-9_]{1,40}\.[0-9a-f]{16}\.m\d{1,7}$/;

/** The object name of C (see the module comment); every part is checked. */
export function covarianceObjectName(modelFingerprint: string, layer: number, module: string, corpusHash: string, maxLen: number): string {
  const name = `cov.${modelFingerprint}.l${layer}.${module}.${corpusHash}.m${maxLen}`;
  if (!OBJECT_NAME.test(name)) throw new Error(`bad covariance object name ${JSON.stringify(name)}`);
  return name;
}

/** Whether a name (from a shard's params: input from outside) is a covariance object's. */
export const isCovarianceObjectName = (name: unknown): name is string => typeof name === "string" && OBJECT_NAME.test(name);

/** The object of covariance shard `part` (0-based) of `parts`: its float32 Σ k kᵀ, row-major. */
export const covariancePartName = (object: string, part: number, parts: number): string => `${object}.part${part}of${parts}`;

/** Most covariance shards per C. */
export const MAX_COVARIANCE_PARTS = 256;
/** Widest key a C may have (mamba-2.8b's W_o key is 5120 wide: 105 MB of float32). */
export const MAX_COVARIANCE_DIM = 16384;

/** `params.covariance` of an edit sweep's shards: which C an edit uses, or which part a covariance shard computes. */
export interface CovarianceRef {
  object: string;
  /** Covariance shards only: this shard's part and the number of parts. */
  part?: number;
  parts?: number;
}

/**
 * The `covariance` of a shard's params_json, checked (input from outside), or undefined when it has
 * none (or the params are not JSON); a malformed one throws, naming the field.
 */
export function covarianceRefOf(paramsJson: string): CovarianceRef | undefined {
  let params: unknown;
  try {
    params = JSON.parse(paramsJson);
  } catch {
    return undefined;
  }
  const c = (params as { covariance?: unknown } | null)?.covariance;
  if (c === undefined || c === null) return undefined;
  const { object, part, parts } = c as CovarianceRef;
  if (!isCovarianceObjectName(object))
    throw new Error(
      `params.covariance.object: expected a covariance object name (cov.<model>.l<layer>.<module>.<corpus>.m<len>), got ${JSON.stringify(object)?.slice(0, 120)}`,
    );
  if (part === undefined && parts === undefined) return { object };
  if (!Number.isInteger(parts) || parts! < 1 || parts! > MAX_COVARIANCE_PARTS || !Number.isInteger(part) || part! < 0 || part! >= parts!) {
    throw new Error(`params.covariance: expected part in [0, parts) and parts in [1, ${MAX_COVARIANCE_PARTS}], got part ${part}, parts ${parts}`);
  }
  return { object, part, parts };
}
