/**
 * The kind sections of a sweep spec: `knockout`, `sever`, `lre`, `edit` (the paper's experiments
 * besides tracing; planning/README.md documents every field). Defaults follow
 * ../shared/reference/paper-methods.md (§2 path blocking, §3 ROME, §4 LRE, §5 knockout, §9).
 */
import { z } from "zod";

/** Every kind of sweep. `trace` is causal tracing; the others run the engine's RunExperiment. */
export const ALL_SWEEP_KINDS = ["trace", "knockout", "sever", "lre", "edit"] as const;
export type SweepKind = (typeof ALL_SWEEP_KINDS)[number];
/** Kinds that run as engine experiments (RunExperiment) rather than cells. */
export const EXPERIMENT_KINDS = ["knockout", "sever", "lre", "edit"] as const;
export type ExperimentKind = (typeof EXPERIMENT_KINDS)[number];

/** Knockout token sets (engine/experiments/knockout.py). */
export const KNOCKOUT_SETS = ["subject", "subject_last", "non_subject", "last"] as const;

/** Paths a sever cell may freeze, per model type; `none` is plain restoration. */
export const SEVER_PATHS = { mamba: ["none", "ssm", "gate", "mixer", "in_ssm", "conv"], gpt_neox: ["none", "attn", "mlp"] } as const;
/** Default sever paths per model type (the paper's figure: none, s, g, the whole block o). */
export const DEFAULT_SEVER_PATHS = { mamba: ["none", "ssm", "gate", "mixer"], gpt_neox: ["none", "attn", "mlp"] } as const;

/** Editable matrices per model type (engine/experiments/rome.py). */
export const EDIT_MATRICES = { mamba: ["W_o", "W_a", "W_g"], gpt_neox: ["dense_4h_to_h"] } as const;

/** ROME hyperparameters the engine knows (rome.py HPARAMS); unknown keys are refused at spec time. */
export const EDIT_HPARAMS = [
  "v_num_grad_steps", "v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor", "v_loss_stop", "v_prob_stop", "v_prob_stop_after",
  "context_template_length_params", "context_seed", "context_top_k", "mom2_adjustment", "mom2_max_len", "mom2_batch_tokens", "cov_ridge",
] as const;

const posInt = z.number().int().min(1);
/** A text corpus: `dataset` (the dataset's prompt texts), or a file: .txt (one document per line) or .json (strings, {text} objects, or token-id lists). */
const corpus = z.union([z.literal("dataset"), z.string().min(1)], { error: 'expected "dataset" or the path of a .txt or .json corpus' });

const tokenSel = z.union([z.string().min(1), z.number().int()], { error: "expected a token group name or a token index" });

export const knockoutSection = z.strictObject({
  /** Layers knocked out around each centre (ROME's window: l − w//2 … l + ⌈w/2⌉ − 1). */
  window: posInt.max(1024).default(10),
  token_sets: z.array(z.enum(KNOCKOUT_SETS)).min(1).default([...KNOCKOUT_SETS]),
  /** Mamba only: the text the mean of a is taken over. */
  corpus: corpus.default("dataset"),
  /** At most this many corpus documents … */
  max_corpus: posInt.max(1024).default(128),
  /** … each cut to this many tokens (romba: 128). */
  corpus_tokens: posInt.max(2048).default(128),
});

export const severSection = z.strictObject({
  /** Paths to freeze; default per model type ({@link DEFAULT_SEVER_PATHS}). */
  paths: z.array(z.string().min(1)).min(1).optional(),
  /** Tokens whose residual state is restored (token groups, `subject`, or indices). */
  tokens: z.array(tokenSel).min(1).default(["subject_last", "last"]),
});

/** β grid of the paper's Mamba sweep: linspace(0, 12, 25). */
export const DEFAULT_BETAS = Array.from({ length: 25 }, (_, i) => i * 0.5);

export const lreSection = z.strictObject({
  /** n: training facts per trial; J and b are averaged over them (Hernandez et al.: 5). */
  icl: posInt.max(64).default(5),
  /** Prompts carry in-context examples (the other training facts, "template(s) object" lines). */
  in_context: z.boolean().default(true),
  betas: z.array(z.number().finite()).min(1).default(DEFAULT_BETAS),
  trials: posInt.max(100).default(3),
  /** At most this many test facts per trial. */
  test: posInt.max(10_000).default(30),
  /** Also fit at the token embedding (layer −1, "emb" in the paper). */
  embedding: z.boolean().default(true),
  seed: z.number().int().min(0).default(1),
  /** Output coordinates per backward batch (engine default when absent). */
  jacobian_rows: posInt.optional(),
});

export const editSection = z.strictObject({
  /** Default per model type ({@link EDIT_MATRICES}). */
  matrices: z.array(z.string().min(1)).min(1).optional(),
  /** Cases (facts to rewrite), taken round-robin over the relations. */
  cases: posInt.max(100_000).default(50),
  paraphrases: z.number().int().min(0).max(32).default(7),
  neighbours: z.number().int().min(0).max(64).default(10),
  /** Covariance corpus: "dataset", a text file, or a .json of token-id lists (then sent as a path agents read, like model.path). */
  corpus: corpus.default("dataset"),
  max_corpus: posInt.max(4096).default(256),
  corpus_tokens: posInt.max(2048).default(64),
  hparams: z.partialRecord(z.enum(EDIT_HPARAMS), z.unknown()).default({}),
  /** Sample continuations for generation entropy (slow; off by default as in the paper's sweeps). */
  generation: z.boolean().default(false),
  seed: z.number().int().min(0).default(1),
});

export type KnockoutSection = z.infer<typeof knockoutSection>;
export type SeverSection = z.infer<typeof severSection>;
export type LreSection = z.infer<typeof lreSection>;
export type EditSection = z.infer<typeof editSection>;

/** The optional kind sections, merged into the sweep spec schema. */
export const kindSectionsShape = {
  knockout: knockoutSection.optional(),
  sever: severSection.optional(),
  lre: lreSection.optional(),
  edit: editSection.optional(),
};

/** A section given for another kind is a mistake (it would be silently ignored). */
export function checkKindSections(spec: { kind: string } & Partial<Record<ExperimentKind, unknown>>, ctx: z.core.$RefinementCtx): void {
  for (const k of EXPERIMENT_KINDS) {
    if (spec[k] !== undefined && spec.kind !== k) {
      ctx.addIssue({ code: "custom", path: [k], message: `section \`${k}\` only applies to kind ${k} (this sweep is kind ${spec.kind}); remove it or set kind: ${k}` });
    }
  }
}

/** Fills the kind's section with its defaults when the spec left it out. */
export function applyKindDefaults<S extends { kind: string } & { knockout?: KnockoutSection; sever?: SeverSection; lre?: LreSection; edit?: EditSection }>(spec: S): S {
  if (spec.kind === "knockout") spec.knockout ??= knockoutSection.parse({});
  if (spec.kind === "sever") spec.sever ??= severSection.parse({});
  if (spec.kind === "lre") spec.lre ??= lreSection.parse({});
  if (spec.kind === "edit") spec.edit ??= editSection.parse({});
  return spec;
}
