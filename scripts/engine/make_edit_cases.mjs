// Builds CounterFact-style ROME edit cases from relation files (the layout of
// shared/data/relations/factual/*.json and models/world/relations/*.json), tokenized with the
// model's tokenizer.json, as the pre-tokenized params of the engine's "edit" experiment
// (engine/experiments/rome/__init__.py documents the schema).
//
// Per case (subject s, true object o, relation r):
//   rewrite      = prompt_templates[0] with s;  target_new = " " + another object of r (its first
//                  token differs from o's), target_true = " " + o
//   paraphrases  = the other templates of r with s
//   neighbourhood= the first template with other subjects of r whose object is also o
//   kl_prompts   = "{s} is a" (ROME's essence prompt)
//   in_context   = ". " + rewrite prompt, the form that follows a generated context prefix
// plus one corpus (token-id lists) for the covariance: filler sentences and fact sentences.
//
// Usage: node scripts/engine/make_edit_cases.mjs [--world models/world] [--cases 64]
//          [--neighbours 10] [--paraphrases 7] [--corpus-filler 1200] [--corpus-facts 600]
//          [--seed 1] [--out engine/tests/fixtures/edit_cases_world.json]
import { Tokenizer } from "@huggingface/tokenizers";
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values: opt } = parseArgs({
  options: {
    world: { type: "string", default: "models/world" },
    tokenizer: { type: "string" },
    cases: { type: "string", default: "64" },
    neighbours: { type: "string", default: "10" },
    paraphrases: { type: "string", default: "7" },
    "corpus-filler": { type: "string", default: "1200" },
    "corpus-facts": { type: "string", default: "600" },
    seed: { type: "string", default: "1" },
    out: { type: "string", default: "engine/tests/fixtures/edit_cases_world.json" },
  },
});
const num = (name) => {
  const v = Number(opt[name]);
  if (!Number.isInteger(v) || v < 0) throw new Error(`--${name}: expected a non-negative integer, got ${JSON.stringify(opt[name])}`);
  return v;
};

const tokPath = opt.tokenizer ?? join(opt.world, "tokenizer.json");
const tok = new Tokenizer(JSON.parse(readFileSync(tokPath, "utf8")), {});
const enc = (text) => tok.encode(text, { add_special_tokens: false }).ids;
const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

// mulberry32: a small seeded PRNG, so the fixture is reproducible.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(num("seed"));
const shuffle = (xs) => {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
};

/** Tokens of template(subject) and the subject's half-open token span, or null where the
 * subject's tokens are not a clean piece of the whole prompt's tokens. `lead` is text put before
 * the prompt (". " for the in-context form). */
function promptWithSpan(template, subject, lead = "") {
  const at = template.indexOf("{}");
  if (at < 0) throw new Error(`template ${JSON.stringify(template)} has no {}`);
  const before = lead + template.slice(0, at);
  // Byte-level BPE attaches a space to the word after it: the subject owns the space before it.
  const spaced = before.endsWith(" ");
  const preIds = before.length === 0 ? [] : enc(spaced ? before.slice(0, -1) : before);
  const subjIds = enc((spaced ? " " : "") + subject);
  const text = before + subject + template.slice(at + 2);
  const ids = enc(text);
  if (!same(ids.slice(0, preIds.length + subjIds.length), [...preIds, ...subjIds])) return null;
  return { ids, subject: [preIds.length, preIds.length + subjIds.length], text };
}

const relDir = join(opt.world, "relations");
const relations = readdirSync(relDir).filter((f) => f.endsWith(".json")).sort()
  .map((f) => ({ file: f, ...JSON.parse(readFileSync(join(relDir, f), "utf8")) }));

const nCases = num("cases");
const perRelation = Math.ceil(nCases / relations.length);
const cases = [];
let skipped = 0;
for (const rel of relations) {
  const templates = rel.prompt_templates;
  const objects = [...new Set(rel.samples.map((s) => s.object))];
  let made = 0;
  for (const sample of shuffle(rel.samples)) {
    if (made >= perRelation || cases.length >= nCases) break;
    const trueIds = enc(" " + sample.object);
    const others = shuffle(objects.filter((o) => o !== sample.object && enc(" " + o)[0] !== trueIds[0]));
    if (others.length === 0) { skipped++; continue; }
    const newObject = others[0];
    const rewrite = promptWithSpan(templates[0], sample.subject);
    const inContext = promptWithSpan(templates[0], sample.subject, ". ");
    const kl = promptWithSpan("{} is a", sample.subject);
    const paraphrases = templates.slice(1, 1 + num("paraphrases")).map((t) => promptWithSpan(t, sample.subject));
    const neighbours = shuffle(rel.samples.filter((s) => s.object === sample.object && s.subject !== sample.subject))
      .slice(0, num("neighbours")).map((s) => promptWithSpan(templates[0], s.subject));
    if (!rewrite || !inContext || !kl || paraphrases.some((p) => !p) || neighbours.some((p) => !p) || neighbours.length === 0) {
      skipped++;
      continue;
    }
    const subjectIds = rewrite.ids.slice(...rewrite.subject);
    cases.push({
      case_id: cases.length,
      relation: rel.file.replace(/\.json$/, ""),
      subject: sample.subject,
      target_true: sample.object,
      target_new: newObject,
      rewrite_text: rewrite.text,
      params: {
        subject_ids: subjectIds,
        rewrite: { ids: rewrite.ids, subject: rewrite.subject, in_context: { ids: inContext.ids, subject: inContext.subject } },
        target_new_ids: enc(" " + newObject),
        target_true_ids: trueIds,
        paraphrases: paraphrases.map((p) => p.ids),
        neighbourhood: neighbours.map((p) => p.ids),
        kl_prompts: [{ ids: kl.ids, subject: kl.subject }],
      },
    });
    made++;
  }
}

// Covariance corpus: what the model was trained on, fact-free filler and fact sentences.
const filler = readFileSync(join(opt.world, "filler.txt"), "utf8").split("\n").filter((l) => l.trim());
const corpusText = shuffle(filler).slice(0, num("corpus-filler"));
for (let i = 0; i < num("corpus-facts"); i++) {
  const rel = relations[Math.floor(rand() * relations.length)];
  const s = rel.samples[Math.floor(rand() * rel.samples.length)];
  const t = rel.prompt_templates[Math.floor(rand() * rel.prompt_templates.length)];
  corpusText.push(`${t.replace("{}", s.subject)} ${s.object}.`);
}
const corpus = shuffle(corpusText).map((line) => [...enc(line), 0]);  // 0 = <|endoftext|> ends each sentence

const out = {
  about: "ROME edit cases for the synthetic fact world; generated by scripts/engine/make_edit_cases.mjs",
  command: `node scripts/engine/make_edit_cases.mjs ${process.argv.slice(2).join(" ")}`.trim(),
  tokenizer: tokPath,
  bos_id: 0,
  corpus_tokens: corpus.reduce((n, s) => n + s.length, 0),
  corpus,
  cases,
};
writeFileSync(opt.out, JSON.stringify(out) + "\n");
console.log(`${cases.length} cases (${skipped} samples skipped), corpus ${corpus.length} sequences / ${out.corpus_tokens} tokens -> ${opt.out}`);
