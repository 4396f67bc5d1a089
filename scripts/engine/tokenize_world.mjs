// Tokenizes facts of the demo world for the experiment figures (engine/experiments/demo/figures.py),
// the way the coordinator does: Node's @huggingface/tokenizers on the world's tokenizer.json.
// Per relation, the first `--per` samples rendered with prompt template `--template`: the prompt's ids,
// the subject's token span (the ids of the text up to the subject's end are a prefix of the prompt's)
// and the answer id (first token of " " + object).
// Also `corpus`: the first `--corpus` lines of filler.txt (fact-free text), at most 128 tokens each, for
// the knockout's mean of a.
// Usage: node scripts/engine/tokenize_world.mjs [models/world] [--per 40] [--template 0] [--corpus 128] > facts.json
import { Tokenizer } from "@huggingface/tokenizers";
import { readFileSync, readdirSync } from "node:fs";

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : dflt);
const dir = args[0] && !args[0].startsWith("--") ? args[0] : "models/world";
const per = opt("--per", 40);
const template = opt("--template", 0);
const tok = new Tokenizer(JSON.parse(readFileSync(`${dir}/tokenizer.json`, "utf8")), {});
const ids = (text) => tok.encode(text, { add_special_tokens: false }).ids;
const isPrefix = (a, b) => a.length <= b.length && a.every((x, i) => x === b[i]);

const out = { relations: {} };
for (const file of readdirSync(`${dir}/relations`)
  .filter((f) => f.endsWith(".json"))
  .sort()) {
  const rel = JSON.parse(readFileSync(`${dir}/relations/${file}`, "utf8"));
  const tpl = rel.prompt_templates[template];
  const [pre] = tpl.split("{}");
  const facts = [];
  for (const { subject, object } of rel.samples.slice(0, per)) {
    const prompt = tpl.replace("{}", subject);
    const p = ids(prompt);
    const before = pre ? ids(pre.trimEnd()) : []; // the subject's first token carries the space
    const upto = ids(pre + subject);
    if (!isPrefix(upto, p) || !isPrefix(before, upto)) continue; // a token crosses the subject's edge
    facts.push({ subject, object, prompt, ids: p, subject_start: before.length, subject_last: upto.length - 1, object_id: ids(" " + object)[0] });
  }
  out.relations[file.replace(/\.json$/, "")] = { template: tpl, facts };
}
const lines = readFileSync(`${dir}/filler.txt`, "utf8")
  .split("\n")
  .filter((l) => l.trim());
out.corpus = lines.slice(0, opt("--corpus", 128)).map((l) => ids(l).slice(0, 128));
process.stdout.write(JSON.stringify(out));
