/**
 * Typed errors of planning: specs, datasets, model configs, tokenization, prompts and results.
 * Each names the field, file or prompt a user must fix.
 */
import { FactsweepError } from "@factsweep/shared";

/** A sweep spec that does not validate. `path` is the field path, e.g. `grid[1].site`. */
export class SpecError extends FactsweepError {
  readonly path: string;
  readonly expected: string | undefined;
  readonly received: unknown;
  /** Every problem found, when the spec had several (the message lists them all). */
  readonly issues: { path: string; message: string }[];
  constructor(
    message: string,
    details: { path?: string; expected?: string; received?: unknown; issues?: { path: string; message: string }[] } = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "SpecError";
    this.path = details.path ?? "";
    this.expected = details.expected;
    this.received = details.received;
    this.issues = details.issues ?? [{ path: this.path, message }];
  }
}

/** A dataset file (known_1000.json, relation file) that is missing or malformed. */
export class DatasetError extends FactsweepError {
  readonly file: string;
  constructor(message: string, file: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "DatasetError";
    this.file = file;
  }
}

/** A checkpoint folder or config.json that cannot be used. */
export class ModelConfigError extends FactsweepError {
  readonly modelPath: string;
  constructor(message: string, modelPath: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ModelConfigError";
    this.modelPath = modelPath;
  }
}

/** A tokenizer.json that cannot be loaded or used. */
export class TokenizerError extends FactsweepError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TokenizerError";
  }
}

/** The subject string does not occur in the prompt text (or not on token boundaries we can map). */
export class SubjectNotFoundError extends TokenizerError {
  readonly text: string;
  readonly subject: string;
  constructor(text: string, subject: string, detail?: string) {
    super(
      `subject ${JSON.stringify(subject)} does not occur in prompt ${JSON.stringify(text)}` +
        (detail ? ` (${detail})` : "") +
        "; fix the dataset entry so the prompt text contains the subject exactly (case-sensitive)",
    );
    this.name = "SubjectNotFoundError";
    this.text = text;
    this.subject = subject;
  }
}

/** A prompt that cannot be planned (no swap partner, bad span, ...). Carries the prompt index. */
export class PromptError extends FactsweepError {
  readonly promptIndex: number;
  constructor(message: string, promptIndex: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "PromptError";
    this.promptIndex = promptIndex;
  }
}

/** A ShardResult that does not fit its sweep (unknown prompt, cell count mismatch). */
export class ResultError extends FactsweepError {
  readonly shardId: string;
  constructor(message: string, shardId: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ResultError";
    this.shardId = shardId;
  }
}
