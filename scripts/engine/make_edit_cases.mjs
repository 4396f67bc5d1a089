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
//
// The seeded PRNG and the case's prompts are the planner's (planning/dist: run `npx tsc -b planning`
// first), so the fixture holds exactly what an `edit` sweep sends the engine; only the choice of
// cases (one seeded stream over the relations in file order) is this script's own.
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { editCaseParams, loadTokenizer, neighbourCandidates, newObjectCandidates, seededRandom, shuffle as seededShuffle } from "../../planning/dist/index.js";

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
const tok = loadTokenizer(tokPath);
const enc = (text) => tok.encode(text);
const rand = seededRandom(num("seed"));
const shuffle = (xs) => seededShuffle(xs, rand);

const relDir = join(opt.world, "relations");
const relations = readdirSync(relDir)
  .filter((f) => f.endsWith(".json"))
  .sort()
  .map((f) => ({ file: f, ...JSON.parse(readFileSync(join(relDir, f), "utf8")) }));

const nCases = num("cases");
const perRelation = Math.ceil(nCases / relations.length);
const cases = [];
let skipped = 0;
for (const rel of relations) {
  const templates = rel.prompt_templates;
  let made = 0;
  for (const sample of shuffle(rel.samples)) {
    if (made >= perRelation || cases.length >= nCases) break;
    const others = shuffle(newObjectCandidates(tok, rel.samples, sample.object));
    if (others.length === 0) {
      skipped++;
      continue;
    }
    const newObject = others[0];
    const neighbours = shuffle(neighbourCandidates(rel.samples, sample))
      .slice(0, num("neighbours"))
      .map((s) => s.subject);
    let params;
    try {
      params = editCaseParams(tok, templates, sample.subject, sample.object, newObject, num("paraphrases"), neighbours);
    } catch {
      skipped++; // the subject cannot be located in one of the case's prompts
      continue;
    }
    if (neighbours.length === 0) {
      skipped++;
      continue;
    }
    cases.push({
      case_id: cases.length,
      relation: rel.file.replace(/\.json$/, ""),
      subject: sample.subject,
      target_true: sample.object,
      target_new: newObject,
      rewrite_text: templates[0].replace("{}", sample.subject),
      params,
    });
    made++;
  }
}

// Covariance corpus: what the model was trained on, fact-free filler and fact sentences.
const filler = readFileSync(join(opt.world, "filler.txt"), "utf8")
  .split("\n")
  .filter((l) => l.trim());
const corpusText = shuffle(filler).slice(0, num("corpus-filler"));
for (let i = 0; i < num("corpus-facts"); i++) {
  const rel = relations[Math.floor(rand() * relations.length)];
  const s = rel.samples[Math.floor(rand() * rel.samples.length)];
  const t = rel.prompt_templates[Math.floor(rand() * rel.prompt_templates.length)];
  corpusText.push(`${t.replace("{}", s.subject)} ${s.object}.`);
}
const corpus = shuffle(corpusText).map((line) => [...enc(line), 0]); // 0 = <|endoftext|> ends each sentence

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
