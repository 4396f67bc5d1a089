import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadKnownFacts, loadRelation, loadRelations, relationToFacts } from "./datasets.js";
import { DatasetError } from "./errors.js";
import { sharedPath } from "@factsweep/testing";

const DATA = sharedPath("data");
const skip = !DATA && "shared/data is not on this machine";

test("known_1000.json loads all 1,209 facts with their prompts and relation ids", { skip }, () => {
  const facts = loadKnownFacts(join(DATA!, "known_1000.json"));
  assert.equal(facts.length, 1209);
  assert.deepEqual(facts[0], {
    knownId: 0,
    subject: "Vinson Massif",
    attribute: "Antarctica",
    template: "{} is located in the continent",
    prompt: "Vinson Massif is located in the continent of",
    relationId: "P30",
  });
});

test("a relation folder loads its 26 factual relations in name order, rendered with the first template", { skip }, () => {
  const rels = loadRelations([join(DATA!, "relations/factual")]);
  assert.equal(rels.length, 26);
  assert.equal(rels[0]!.key, "city_in_country");
  const capital = rels.find((r) => r.key === "country_capital_city")!;
  assert.equal(capital.samples.length, 24);
  const facts = relationToFacts(capital);
  assert.equal(facts[0]!.text, "The capital city of United States is");
  assert.equal(relationToFacts(capital, 1)[0]!.text, "The capital of United States is");
  assert.throws(() => relationToFacts(capital, 2), /has 2 prompt template\(s\); dataset.template_index 2 does not exist/);
});

test("a malformed relation file is a DatasetError naming the file and the field", () => {
  const dir = mkdtempSync(join(tmpdir(), "fs-ds-"));
  try {
    const f = join(dir, "bad.json");
    writeFileSync(f, JSON.stringify({ name: "bad", prompt_templates: ["no placeholder"], samples: [] }));
    assert.throws(
      () => loadRelation(f),
      (e: unknown) => {
        assert.ok(e instanceof DatasetError);
        assert.equal(e.file, f);
        // The field and what it should be, never the file's bytes (issue 15).
        assert.match(e.message, /field \.prompt_templates\[0\]: expected a template containing "\{\}", got a string/);
        assert.doesNotMatch(e.message, /no placeholder/);
        return true;
      },
    );
    writeFileSync(f, "{ not json");
    assert.throws(() => loadRelation(f), /is not valid JSON/);
    assert.throws(() => loadRelations([join(dir, "missing")]), /does not exist/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
