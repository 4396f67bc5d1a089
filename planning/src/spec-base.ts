/**
 * The fields every sweep spec has, whatever its kind: name, model, dataset, corruption, layers,
 * token groups, shard size, attempts. Kind modules see a spec through {@link BaseSpec} plus their
 * own fields, so they need not import the full schema (spec.ts), which is built from them.
 */
import { z } from "zod";
import { SITE_NAMES } from "./sites.js";
import { TOKEN_GROUP_SCHEMES } from "./token-groups.js";

const DTYPES = ["float32", "bfloat16", "float16"] as const;

const nonNegInt = z.number().int().min(0);
const posInt = z.number().int().min(1);
const path = z.string().min(1);

export const textPrompt = z.strictObject({
  text: z.string().min(1),
  subject: z.string().min(1),
  object: z.string().optional(),
  relation: z.string().optional(),
});
export const tokenizedPrompt = z.strictObject({
  input_ids: z.array(nonNegInt).min(1),
  subject: z.tuple([nonNegInt, nonNegInt], { error: "expected a token span [start, end)" }),
  corrupted_ids: z.array(nonNegInt).optional(),
  answer_id: nonNegInt.optional(),
  text: z.string().optional(),
  subject_text: z.string().optional(),
  object: z.string().optional(),
  relation: z.string().optional(),
});
export const promptInput = z.union([textPrompt, tokenizedPrompt], {
  error: "expected { text, subject, object? } or { input_ids: [...], subject: [start, end), corrupted_ids?: [...] }",
});

const dataset = z
  .strictObject({
    known: path.optional(),
    relations: z.union([path, z.array(path).min(1)], { error: "expected a relation file or folder, or a list of them" }).optional(),
    prompts: z.array(promptInput).min(1).optional(),
    template_index: nonNegInt.default(0),
    limit: posInt.optional(),
    per_relation: posInt.optional(), // relations: default 150 (the paper's n_trial); known: no cap unless given
    answer: z.enum(["argmax", "object"]).default("argmax"),
  })
  .superRefine((d, ctx) => {
    const given = (["known", "relations", "prompts"] as const).filter((k) => d[k] !== undefined);
    if (given.length !== 1) {
      ctx.addIssue({
        code: "custom",
        path: given.length > 1 ? [given[1]!] : [],
        message:
          given.length === 0
            ? "expected exactly one source: `known` (known_1000.json), `relations` (files or folders) or `prompts` (inline list)"
            : `expected exactly one source, got ${given.map((g) => `\`${g}\``).join(" and ")}; keep one`,
      });
    }
  });

const swap = z.strictObject({ kind: z.literal("swap"), seed: nonNegInt.default(1) });
const noise = z.strictObject({
  kind: z.literal("noise"),
  scale: z.number().positive().default(3),
  std: z.union([z.literal("auto"), z.number().positive()], { error: 'expected "auto" or a positive number' }).default("auto"),
  samples: posInt.max(1024).default(10),
  seed: nonNegInt.default(1),
});
const corruption = z.discriminatedUnion("kind", [swap, noise], { error: 'expected kind "swap" or "noise"' });

const layerList = z.union(
  [
    z.literal("all"),
    z.array(nonNegInt).min(1),
    z.string().regex(/^\s*\d*\s*:\s*\d*\s*(:\s*\d+\s*)?$/, { message: 'expected a range "start:end" or "start:end:step"' }),
  ],
  { error: 'expected "all", a list of layer numbers, or a range "start:end[:step]" (end exclusive)' },
);

/**
 * `edit` only: the layers come from a finished trace sweep (its id, or a run folder written by
 * `sweepctl local` / `sweepctl archive`: a value with a "/"). Each case is edited at the layer of
 * its fact's peak indirect effect at the last subject token on the site paired with its matrix, unless
 * `edit_layers` is given: then every case at those layers, the trace drawn beside them.
 */
export const fromTraceLayers = z.strictObject({
  from_trace: z.string().min(1).max(4096),
  /** The traced window to read when the trace has several for a site. */
  window: posInt.optional(),
  /** The traced site per edited matrix, where not the default (kinds/edit-trace.ts TRACE_SITE_OF_MATRIX), e.g. { W_a: in_ssm }. */
  sites: z.record(z.string().min(1), z.enum(SITE_NAMES)).optional(),
  edit_layers: layerList.optional(),
});
export type FromTraceLayers = z.infer<typeof fromTraceLayers>;

const layers = z.union([layerList, fromTraceLayers], {
  error: 'expected "all", a list of layer numbers, a range "start:end[:step]" (end exclusive), or (kind edit) { from_trace: <trace sweep id or run folder> }',
});

/**
 * `shard_cells` of `"prompt"` (the default): one shard per prompt, a prompt's whole grid, so a GPU
 * worker prepares each prompt once and runs its grid in one engine call (512-cell shards cost 30% of
 * a sweep's rate on an H200: each shard of a prompt prepares it again on its worker). A grid larger
 * than this still splits, so a shard's result stays far below NATS's default 1 MB message limit.
 */
export const PROMPT_SHARD_CELLS = 16_384;

const shardCells = z
  .union([posInt.max(1_000_000), z.literal("prompt")], { error: 'expected "prompt" (one shard per prompt) or a number of cells from 1 to 1000000' })
  .transform((v) => (v === "prompt" ? PROMPT_SHARD_CELLS : v))
  .default(PROMPT_SHARD_CELLS);

/** The fields of every sweep spec except `kind` (its enum comes from the kinds registry), in the spec's order. */
export const baseSpecFields = {
  name: z.string().min(1).max(200),
  model: z.strictObject({
    id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, { message: "expected a name of letters, digits, '.', '_', '-'" }),
    path,
    dtype: z.enum(DTYPES).default("float32"),
    tokenizer: path.optional(),
  }),
  dataset,
  corruption: corruption.default({ kind: "swap", seed: 1 }),
  layers: layers.default("all"),
  token_groups: z.enum(TOKEN_GROUP_SCHEMES).default("rome"),
  shard_cells: shardCells,
  max_attempts: posInt.max(100).default(3),
  /**
   * Sharing a cluster: sweeps of a higher `priority` are served first; sweeps of one priority share
   * the agents in proportion to their `weight` (weighted fair share of the grants).
   */
  priority: z.number().int().min(-100).max(100).default(0),
  weight: z.number().positive().max(1000).default(1),
  /** Tracing report: check the paper's findings (a replication: true) or not (false); left out: by model type. */
  findings: z.boolean().optional(),
};

/** A validated spec as every kind sees it: the common fields and the kind's name. */
export type BaseSpec = z.output<z.ZodObject<typeof baseSpecFields>> & { kind: string };
/** A prompt given inline in the spec. */
export type PromptInput = z.infer<typeof promptInput>;
export type TextPromptInput = z.infer<typeof textPrompt>;
export type TokenizedPromptInput = z.infer<typeof tokenizedPrompt>;
export type CorruptionSpec = BaseSpec["corruption"];
