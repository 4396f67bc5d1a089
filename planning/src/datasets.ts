/**
 * Dataset loaders for ROME's `known_1000.json` and the relation files of Hernandez et al.
 * (`relations/factual/*.json`; docs/methods.md says where to get both), turned into uniform {@link Fact}s.
 */
import { readdirSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { z } from "zod";
import { DatasetError } from "./errors.js";
import { parseJsonFile, readRegularFile, typeOfValue } from "./files.js";
import { DEFAULT_PLAN_LIMITS } from "./limits.js";

/** One fact of a dataset, rendered to prompt text. */
export interface Fact {
  /** Rendered prompt text (contains `subject`). */
  text: string;
  subject: string;
  /** Expected answer (known_1000 `attribute`, relation sample `object`). */
  object: string;
  /** Relation key: known_1000 `relation_id` (e.g. "P30"), relation file name (e.g. "company_hq"). */
  relation: string;
  /** Where it came from, for messages: "known_1000.json#12", "company_hq.json#3". */
  source: string;
}

/** A record of ROME's known_1000.json. */
export interface KnownFact {
  knownId: number;
  subject: string;
  attribute: string;
  template: string;
  prompt: string;
  relationId: string;
}

/** A relation file of Hernandez et al. */
export interface Relation {
  /** File name without `.json`, e.g. "country_capital_city". */
  key: string;
  name: string;
  file: string;
  promptTemplates: string[];
  samples: { subject: string; object: string }[];
}

const knownSchema = z.array(
  z.object({
    known_id: z.number().int(),
    subject: z.string().min(1),
    attribute: z.string(),
    template: z.string(),
    prompt: z.string().min(1),
    relation_id: z.string(),
  }),
);

const relationSchema = z.object({
  name: z.string(),
  prompt_templates: z.array(z.string().includes("{}", { message: 'expected a template containing "{}"' })).min(1),
  samples: z.array(z.object({ subject: z.string().min(1), object: z.string() })),
});

function readJson(file: string, what: string, maxBytes: number): unknown {
  const fail = (msg: string, cause?: unknown) => new DatasetError(`${msg}; check the path in the spec's dataset section`, file, { cause });
  return parseJsonFile(readRegularFile(file, what, maxBytes, fail), what, file, (msg, cause) => new DatasetError(msg, file, { cause }));
}

/** The first schema problem of a dataset file: field path and expectation, never the file's bytes. */
function zodToDatasetError(file: string, what: string, error: z.ZodError, data: unknown): DatasetError {
  const issue = error.issues[0]!;
  let v: unknown = data;
  for (const k of issue.path) v = v !== null && typeof v === "object" ? (v as Record<PropertyKey, unknown>)[k] : undefined;
  const where = issue.path.map((k) => (typeof k === "number" ? `[${k}]` : `.${String(k)}`)).join("") || "(root)";
  const expected = issue.message.replace(/^Invalid input: /, "").replace(/, received \w+$/, "");
  return new DatasetError(`${what} ${file}: field ${where}: ${expected}, got ${v === undefined ? "nothing" : typeOfValue(v)}`, file);
}

/** Load ROME's known_1000.json. @throws DatasetError naming the file and the bad record. */
export function loadKnownFacts(file: string, maxBytes = DEFAULT_PLAN_LIMITS.maxFileBytes): KnownFact[] {
  const data = readJson(file, "known facts file", maxBytes);
  const res = knownSchema.safeParse(data);
  if (!res.success) throw zodToDatasetError(file, "known facts file", res.error, data);
  return res.data.map((r) => ({
    knownId: r.known_id,
    subject: r.subject,
    attribute: r.attribute,
    template: r.template,
    prompt: r.prompt,
    relationId: r.relation_id,
  }));
}

/** Load one relation file. @throws DatasetError naming the file and the bad field. */
export function loadRelation(file: string, maxBytes = DEFAULT_PLAN_LIMITS.maxFileBytes): Relation {
  const data = readJson(file, "relation file", maxBytes);
  const res = relationSchema.safeParse(data);
  if (!res.success) throw zodToDatasetError(file, "relation file", res.error, data);
  return { key: basename(file).replace(/\.json$/i, ""), name: res.data.name, file, promptTemplates: res.data.prompt_templates, samples: res.data.samples };
}

/** Load relation files; a folder contributes its `*.json` files in name order. */
export function loadRelations(paths: string[], maxBytes = DEFAULT_PLAN_LIMITS.maxFileBytes): Relation[] {
  const files: string[] = [];
  for (const p of paths) {
    let isDir: boolean;
    try {
      isDir = statSync(p).isDirectory();
    } catch (err) {
      throw new DatasetError(`relation path ${p} does not exist; give relation files or folders of them (e.g. shared/data/relations/factual)`, p, {
        cause: err,
      });
    }
    if (isDir) {
      const inside = readdirSync(p)
        .filter((f) => f.toLowerCase().endsWith(".json"))
        .sort();
      if (inside.length === 0) throw new DatasetError(`relation folder ${p} has no .json files`, p);
      files.push(...inside.map((f) => join(p, f)));
    } else {
      files.push(p);
    }
  }
  return files.map((f) => loadRelation(f, maxBytes));
}

/** Known facts as {@link Fact}s (text = the record's `prompt`, relation = `relation_id`). */
export function knownFactsToFacts(facts: KnownFact[], file = "known_1000.json"): Fact[] {
  return facts.map((f, i) => ({ text: f.prompt, subject: f.subject, object: f.attribute, relation: f.relationId, source: `${basename(file)}#${i}` }));
}

/**
 * A relation's samples as {@link Fact}s, rendered with template `templateIndex` (the paper uses the
 * first). @throws DatasetError when the relation has no such template.
 */
export function relationToFacts(rel: Relation, templateIndex = 0): Fact[] {
  const template = rel.promptTemplates[templateIndex];
  if (template === undefined) {
    throw new DatasetError(
      `relation file ${rel.file} has ${rel.promptTemplates.length} prompt template(s); dataset.template_index ${templateIndex} does not exist (valid 0..${rel.promptTemplates.length - 1})`,
      rel.file,
    );
  }
  return rel.samples.map((s, i) => ({
    text: template.replace("{}", s.subject),
    subject: s.subject,
    object: s.object,
    relation: rel.key,
    source: `${basename(rel.file)}#${i}`,
  }));
}
