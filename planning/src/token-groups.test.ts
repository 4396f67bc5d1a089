import { test } from "node:test";
import assert from "node:assert/strict";
import { tokenGroup, tokenGroups } from "./token-groups.js";

test("ROME's six groups on an 8-token prompt with subject [2, 5)", () => {
  const groups = Array.from({ length: 8 }, (_, t) => tokenGroups(t, [2, 5], 8, "rome"));
  assert.deepEqual(groups, [["prefix"], ["prefix"], ["subject_first"], ["subject_middle"], ["subject_last"], ["first_subsequent"], ["further"], ["last"]]);
});

test("romba's grouping splits the subject into [:-2], second-last and last, and counts the first subsequent token as further", () => {
  const groups = Array.from({ length: 9 }, (_, t) => tokenGroups(t, [1, 5], 9, "romba"));
  assert.deepEqual(groups, [
    ["prefix"],
    ["subject_early"],
    ["subject_early"],
    ["subject_2nd_last"],
    ["subject_last"],
    ["further"],
    ["further"],
    ["further"],
    ["last"],
  ]);
});

test("overlapping groups count a token in each, as ROME does, and the reported group prefers subject_last and last", () => {
  // One-token subject, one token after it.
  assert.deepEqual(tokenGroups(0, [0, 1], 2), ["subject_first", "subject_last"]);
  assert.deepEqual(tokenGroups(1, [0, 1], 2), ["first_subsequent", "last"]);
  assert.equal(tokenGroup(0, [0, 1], 2), "subject_last");
  assert.equal(tokenGroup(1, [0, 1], 2), "last");
  // A subject that ends the prompt: its last token is the prompt's last token too.
  assert.deepEqual(tokenGroups(4, [3, 5], 5), ["subject_last", "last"]);
  assert.deepEqual(tokenGroups(4, [3, 5], 5, "romba"), ["subject_last", "last"]);
});

test("a token or span outside the prompt is a RangeError naming the valid range", () => {
  assert.throws(() => tokenGroups(5, [0, 1], 5), /token index in 0\.\.4, got 5/);
  assert.throws(() => tokenGroups(0, [2, 2], 5), /subject span/);
});
