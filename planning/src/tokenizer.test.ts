import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { loadTokenizer } from "./tokenizer.js";
import { SubjectNotFoundError, TokenizerError } from "./errors.js";
import { sharedPath } from "@factsweep/testing";

const TOKENIZER = sharedPath("data/tokenizers/gpt-neox-20b/tokenizer.json");
const CASES = sharedPath("golden/tokenizer/neox20b-tokens.json");
const skip = (!TOKENIZER || !CASES) && "shared/data/tokenizers or shared/golden/tokenizer is not on this machine";

interface Case {
  source: string;
  text: string;
  subject: string;
  ids: number[];
  subject_tokens: [number, number];
  object?: string;
  object_ids?: number[];
}

test("all 1,727 reference tokenizations of gpt-neox-20b are reproduced: ids and subject spans", { skip }, () => {
  const tok = loadTokenizer(TOKENIZER!);
  const cases = (JSON.parse(readFileSync(CASES!, "utf8")) as { cases: Case[] }).cases;
  assert.equal(cases.length, 1727);
  const idMismatch: string[] = [];
  const spanMismatch: string[] = [];
  for (const c of cases) {
    const { ids, subjectSpan } = tok.encodeWithSubject(c.text, c.subject);
    if (JSON.stringify(ids) !== JSON.stringify(c.ids)) idMismatch.push(c.source);
    if (JSON.stringify(subjectSpan) !== JSON.stringify(c.subject_tokens))
      spanMismatch.push(`${c.source} ${JSON.stringify(subjectSpan)} != ${JSON.stringify(c.subject_tokens)}`);
    if (c.object !== undefined && c.object_ids) assert.deepEqual(tok.encode(c.object), c.object_ids, c.source);
  }
  assert.deepEqual(idMismatch, [], "id mismatches");
  assert.deepEqual(spanMismatch, [], "subject span mismatches");
});

test("a subject inside multi-byte characters split across byte-level tokens gets the tokens that cover it", { skip }, () => {
  const tok = loadTokenizer(TOKENIZER!);
  // "日本" is one token of 6 bytes; "é" is split from its word; emoji take several tokens.
  const text = "Café 日本 and 🦀🦀 crab";
  assert.deepEqual(tok.decode(tok.encode(text)), text);
  const span = tok.subjectSpan(text, "🦀🦀");
  const ids = tok.encode(text);
  assert.equal(tok.decode(ids.slice(span[0], span[1])).trim(), "🦀🦀");
  const cafe = tok.subjectSpan(text, "Café");
  assert.equal(tok.decode(ids.slice(cafe[0], cafe[1])), "Café");
});

test("the first occurrence of a repeated subject is the one spanned", { skip }, () => {
  const tok = loadTokenizer(TOKENIZER!);
  const text = "Paris is in France, and Paris is big";
  assert.deepEqual(tok.subjectSpan(text, "Paris"), [0, 1]);
});

test("a subject not in the prompt is a SubjectNotFoundError carrying text and subject", { skip }, () => {
  const tok = loadTokenizer(TOKENIZER!);
  assert.throws(
    () => tok.subjectSpan("The Eiffel Tower is in", "Louvre"),
    (e: unknown) => {
      assert.ok(e instanceof SubjectNotFoundError);
      assert.equal(e.subject, "Louvre");
      assert.match(e.message, /does not occur in prompt "The Eiffel Tower is in"/);
      return true;
    },
  );
  // Case matters, as in ROME's find_token_range.
  assert.throws(() => tok.subjectSpan("the eiffel tower is in", "Eiffel"), SubjectNotFoundError);
});

test("a missing tokenizer.json is a TokenizerError that names the path and the pre-tokenized alternative", () => {
  assert.throws(
    () => loadTokenizer("/nonexistent/tokenizer.json"),
    (e: unknown) => {
      assert.ok(e instanceof TokenizerError);
      assert.match(e.message, /\/nonexistent\/tokenizer\.json cannot be read \(ENOENT\).*pre-tokenized/);
      return true;
    },
  );
});
