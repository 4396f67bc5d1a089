import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { planPrompts } from "./prompts.js";
import { validateSweepSpec } from "./spec.js";
import { loadTokenizer } from "./tokenizer.js";
import { sharedPath } from "@factsweep/testing";

const TOK = sharedPath("data/tokenizers/gpt-neox-20b/tokenizer.json");
const RELS = sharedPath("data/relations/factual");
const KNOWN = sharedPath("data/known_1000.json");
const skip = (!TOK || !RELS || !KNOWN) && "shared/data is not on this machine";

const spec = (dataset: unknown, corruption: unknown = { kind: "swap", seed: 1 }) =>
  validateSweepSpec({ name: "t", model: { id: "m", path: "/m" }, dataset, corruption });

test("swap corruption picks a same-relation subject with another object, aligned on length and last subject token", { skip }, () => {
  const tok = loadTokenizer(TOK!);
  const s = spec({ relations: [join(RELS!, "country_capital_city.json")] });
  const { prompts, errors } = planPrompts(s, tok, { sweepId: "sw" });
  assert.equal(prompts.length + errors.length, 24);
  assert.ok(prompts.length >= 20, `most prompts find a partner (${errors.length} did not)`);
  for (const p of prompts) {
    assert.equal(p.promptKey, `sw/${p.index}`);
    assert.equal(tok.decode(p.inputIds.slice(p.subjectStart, p.subjectEnd)).trim(), p.subject);
    const c = p.corruption!.kind!;
    assert.equal(c.$case, "swap");
    const corrupted = c.$case === "swap" ? c.swap.corruptedIds : [];
    assert.equal(corrupted.length, p.inputIds.length);
    assert.notDeepEqual(corrupted, p.inputIds);
    // Everything after the subject is the same template text, so identical tokens.
    assert.deepEqual(corrupted.slice(p.subjectEnd), p.inputIds.slice(p.subjectEnd));
    const text = tok.decode(corrupted);
    assert.ok(text.startsWith("The capital city of ") && text.endsWith(" is"), text);
    assert.ok(!text.includes(p.subject), "the swapped prompt has another subject");
  }
  for (const e of errors) assert.match(e.message, /no swap partner/);
});

test("swap partners are deterministic for a seed and change with the seed", { skip }, () => {
  const tok = loadTokenizer(TOK!);
  const ids = (seed: number) =>
    planPrompts(spec({ relations: [join(RELS!, "company_hq.json")], limit: 20 }, { kind: "swap", seed }), tok).prompts.map((p) => JSON.stringify(p.corruption));
  assert.deepEqual(ids(1), ids(1));
  assert.notDeepEqual(ids(1), ids(2));
});

test("a prompt without a swap partner is reported with its reason and the others proceed", { skip }, () => {
  const tok = loadTokenizer(TOK!);
  const dir = mkdtempSync(join(tmpdir(), "fs-pr-"));
  try {
    const f = join(dir, "r.json");
    writeFileSync(
      f,
      JSON.stringify({
        name: "r",
        prompt_templates: ["{} is in"],
        samples: [
          { subject: "Paris", object: "France" },
          { subject: "Lyon", object: "France" }, // same object as Paris: never its partner
          { subject: "Berlin", object: "Germany" },
        ],
      }),
    );
    // Tokens: "Paris is in" = 3, "Lyon is in" = 4, "Berlin is in" = 4. Paris's only other-object
    // subject (Berlin) makes a longer prompt; Lyon swaps with Berlin; Berlin with Lyon.
    const { prompts, errors } = planPrompts(spec({ relations: [f] }), tok);
    assert.deepEqual(
      prompts.map((p) => p.subject),
      ["Lyon", "Berlin"],
    );
    const swapped = (p: (typeof prompts)[number]) => {
      const c = p.corruption!.kind!;
      return c.$case === "swap" ? tok.decode(c.swap.corruptedIds) : "";
    };
    assert.deepEqual(prompts.map(swapped), ["Berlin is in", "Lyon is in"]);
    assert.deepEqual(
      errors.map((e) => e.index),
      [0],
    );
    assert.match(
      errors[0]!.message,
      /^r\.json#0: no swap partner: none of the 1 other subjects .* makes a prompt of 3 tokens with the last subject token at index 0/,
    );
    writeFileSync(
      f,
      JSON.stringify({
        name: "r",
        prompt_templates: ["{} is in"],
        samples: [
          { subject: "Paris", object: "France" },
          { subject: "Lyon", object: "France" },
        ],
      }),
    );
    const none = planPrompts(spec({ relations: [f] }), tok);
    assert.equal(none.prompts.length, 0);
    assert.equal(none.errors.length, 2);
    assert.match(none.errors[0]!.message, /^r\.json#0: no swap partner: relation "r" has no other subject with a different object/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a subject missing from its prompt is reported for that prompt only", { skip }, () => {
  const tok = loadTokenizer(TOK!);
  const { prompts, errors } = planPrompts(
    spec(
      {
        prompts: [
          { text: "The Eiffel Tower is in the city of", subject: "Eiffel Tower" },
          { text: "The Louvre is in the city of", subject: "Colosseum" },
        ],
      },
      { kind: "noise", samples: 4, seed: 9 },
    ),
    tok,
  );
  assert.equal(prompts.length, 1);
  assert.equal(prompts[0]!.index, 0);
  assert.deepEqual(
    errors.map((e) => e.index),
    [1],
  );
  assert.match(errors[0]!.message, /subject "Colosseum" does not occur in prompt/);
  const c = prompts[0]!.corruption!.kind!;
  assert.equal(c.$case, "noise");
  assert.deepEqual(c.$case === "noise" && { ...c.noise, explicitNoise: undefined }, { scale: 3, std: 0, samples: 4, seed: 9, explicitNoise: undefined });
});

test("known_1000 facts plan with swap partners from the same relation id, capped by limit", { skip }, () => {
  const tok = loadTokenizer(TOK!);
  const { prompts, errors } = planPrompts(spec({ known: KNOWN!, limit: 30 }), tok);
  assert.equal(prompts.length + errors.length, 30);
  assert.equal(prompts[0]!.text, "Vinson Massif is located in the continent of");
  assert.equal(prompts[0]!.relation, "P30");
});

test("pre-tokenized prompts pass through without a tokenizer; bad spans and missing corrupted ids are reported", () => {
  const { prompts, errors } = planPrompts(
    spec({
      prompts: [
        { input_ids: [1, 2, 3, 4], subject: [1, 3], corrupted_ids: [1, 9, 9, 4] },
        { input_ids: [1, 2, 3], subject: [2, 5], corrupted_ids: [1, 2, 3] },
        { input_ids: [1, 2, 3], subject: [0, 1] },
        { input_ids: [1, 2, 3], subject: [0, 1], corrupted_ids: [1, 2] },
        { text: "A b c", subject: "b" },
        { input_ids: [1, 2000], subject: [0, 1], corrupted_ids: [3, 2000] },
      ],
    }),
    null,
    { vocabSize: 1000 },
  );
  assert.equal(prompts.length, 1);
  assert.deepEqual(prompts[0]!.inputIds, [1, 2, 3, 4]);
  assert.deepEqual([prompts[0]!.subjectStart, prompts[0]!.subjectEnd], [1, 3]);
  assert.deepEqual(
    errors.map((e) => e.index),
    [1, 2, 3, 4, 5],
  );
  assert.match(errors[0]!.message, /subject span \[2, 5\) is not a non-empty span of the 3 input_ids/);
  assert.match(errors[1]!.message, /swap corruption needs corrupted_ids/);
  assert.match(errors[2]!.message, /corrupted_ids has 2 tokens; expected 3/);
  assert.match(errors[3]!.message, /needs a tokenizer/);
  assert.match(errors[4]!.message, /token id 2000 is outside the model's vocabulary \(size 1000\)/);
});
