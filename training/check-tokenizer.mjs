// Checks that Node's @huggingface/tokenizers (what the coordinator tokenizes prompts with) reads a
// world's tokenizer.json and reproduces the Rust library's ids in tokenizer-cases.json, and that
// " " + object encodes the same after a prompt as alone (the answer token).
// Usage: node training/check-tokenizer.mjs [models/world]
import { Tokenizer } from "@huggingface/tokenizers";
import { readFileSync } from "node:fs";

const dir = process.argv[2] ?? "models/world";
const tok = new Tokenizer(JSON.parse(readFileSync(`${dir}/tokenizer.json`, "utf8")), {});
const { cases } = JSON.parse(readFileSync(`${dir}/tokenizer-cases.json`, "utf8"));
const ids = (text) => tok.encode(text, { add_special_tokens: false }).ids;
const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
let bad = 0;
for (const c of cases) {
  const [p, s, o] = [ids(c.prompt), ids(c.subject), ids(" " + c.object)];
  const whole = ids(`${c.prompt} ${c.object}.`);
  const ok =
    same(p, c.prompt_ids) &&
    same(s, c.subject_ids) &&
    same(o, c.object_ids) &&
    same(whole.slice(0, p.length + o.length), [...p, ...o]) &&
    tok.decode(p) === c.prompt;
  if (!ok) {
    bad += 1;
    console.error(`mismatch: ${JSON.stringify(c.prompt)} node ${JSON.stringify({ p, s, o })}`);
  }
}
console.log(`${cases.length} reference cases, ${bad} mismatches (${dir}/tokenizer.json, vocab ${tok.get_vocab().size ?? Object.keys(tok.get_vocab()).length})`);
process.exit(bad === 0 ? 0 : 1);
