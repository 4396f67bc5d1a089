// Planned shard bodies leave out the sweep id, shard id and model (held once per sweep); shardOf puts
// them back, so a grant carries the shard as planned. Bodies written whole (older coordinators'
// shard records) come back unchanged.
import { test } from "node:test";
import assert from "node:assert/strict";
import { engine, sweep } from "@factsweep/proto";
import { ShardBodies, shardOf } from "./shard-bodies.js";
import { plannedShard } from "./sweep-runtime.js";

const model: sweep.ModelRef = { modelId: "mamba-facts", path: "/models/mamba-facts", dtype: "float32", modelType: "mamba", numLayers: 8 };
const planned = sweep.Shard.fromPartial({
  sweepId: "sw",
  shardId: "sw.3.7",
  kind: "trace",
  model,
  prompt: { index: 3, promptKey: "sw/3", inputIds: [1, 2, 3], subject: "x" },
  cells: [{ site: engine.Site.SITE_MIXER, layer: 2, token: 1, window: 1 }],
  units: 1,
});
// As granted before the prompt is put back: the body keeps only the prompt's index and key.
const asGranted = { ...planned, prompt: sweep.PromptSpec.fromPartial({ index: 3, promptKey: "sw/3" }) };

test("a planned body is smaller than the shard and comes back from the store as planned", () => {
  const entry = plannedShard("sw", planned);
  const whole = sweep.Shard.encode(asGranted).finish();
  assert.ok(entry.shard.length < whole.length - model.path.length, `${entry.shard.length} bytes, the whole shard ${whole.length}`);
  const bodies = new ShardBodies();
  bodies.set("sw", entry.shardId, entry.shard);
  assert.deepEqual(shardOf(bodies.get("sw", "sw.3.7")!, "sw", "sw.3.7", model), asGranted);
});

test("a body with every field (an older coordinator's shard record) is taken as it is", () => {
  const whole = sweep.Shard.encode(asGranted).finish();
  const other: sweep.ModelRef = { ...model, path: "/elsewhere" };
  assert.deepEqual(shardOf(whole, "other", "other.0.0", other), asGranted);
});
