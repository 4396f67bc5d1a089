import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, symlinkSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { control } from "@factsweep/proto";
import { call, goldenSpec, GOLDEN_DIR, startHarness, type Harness } from "@factsweep/testing";
import { Coordinator, type CoordinatorOptions } from "./coordinator.js";

let h: Harness<Coordinator, CoordinatorOptions>;
before(async () => {
  h = await startHarness(Coordinator.start, { token: "s3cret" });
});
after(async () => {
  await h.close();
});

const auth = () => {
  const md = new grpc.Metadata();
  md.set("authorization", "Bearer s3cret");
  return md;
};
const launch = (spec: string, sweepId = "", md = auth()) =>
  call<control.LaunchRequest, control.SweepInfo>(h.sweeps, h.sweeps.launch, { spec, sweepId, specDir: GOLDEN_DIR }, md);

async function rejectsWith(p: Promise<unknown>, code: grpc.status, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: grpc.ServiceError) => {
    assert.equal(e.code, code, `expected ${grpc.status[code]}, got ${grpc.status[e.code]}: ${e.details}`);
    assert.match(e.details, re);
    return true;
  });
}

test("a malformed spec is refused with INVALID_ARGUMENT naming the field", async () => {
  await rejectsWith(launch(goldenSpec().replace("site: residual", "site: resid")), grpc.status.INVALID_ARGUMENT, /grid\[0\]\.site/);
  await rejectsWith(launch("name: [unclosed"), grpc.status.INVALID_ARGUMENT, /YAML/);
});

test("an unknown model folder is refused with NOT_FOUND naming the path", async () => {
  await rejectsWith(launch(goldenSpec({ modelPath: join(GOLDEN_DIR, "no-such-model") })), grpc.status.NOT_FOUND, /no-such-model.*does not exist/);
});

test("a model path outside the model roots is refused with PERMISSION_DENIED naming the roots", async () => {
  const outside = mkdtempSync(join(tmpdir(), "model-outside-"));
  await rejectsWith(
    launch(goldenSpec({ modelPath: outside })),
    grpc.status.PERMISSION_DENIED,
    new RegExp(`outside the configured model roots \\(${GOLDEN_DIR}`),
  );
  // a symlink inside a root that points outside is refused too
  const link = join(mkdtempSync(join(tmpdir(), "root-")), "m");
  mkdirSync(outside + "/x");
  symlinkSync(outside, link);
  await rejectsWith(launch(goldenSpec({ modelPath: `${GOLDEN_DIR}/../../../../${link}` })), grpc.status.PERMISSION_DENIED, /outside/);
});

test("a call without the API token is refused with UNAUTHENTICATED", async () => {
  await rejectsWith(call(h.sweeps, h.sweeps.list, {}), grpc.status.UNAUTHENTICATED, /token/);
  const bad = new grpc.Metadata();
  bad.set("authorization", "Bearer nope");
  await rejectsWith(call(h.sweeps, h.sweeps.list, {}, bad), grpc.status.UNAUTHENTICATED, /wrong API token/);
});

test("an unknown sweep id is NOT_FOUND for get, cancel, resume, watch and results", async () => {
  await rejectsWith(call(h.sweeps, h.sweeps.get, { sweepId: "nope" }, auth()), grpc.status.NOT_FOUND, /sweep "nope" not found/);
  await rejectsWith(call(h.sweeps, h.sweeps.cancel, { sweepId: "nope" }, auth()), grpc.status.NOT_FOUND, /not found/);
  await rejectsWith(call(h.sweeps, h.sweeps.resume, { sweepId: "nope" }, auth()), grpc.status.NOT_FOUND, /not found/);
  for (const m of ["watch", "results"] as const) {
    await rejectsWith(
      new Promise((res, rej) => {
        const s = h.sweeps[m]({ sweepId: "nope" }, auth());
        s.on("data", () => undefined);
        s.on("error", rej);
        s.on("end", res);
      }),
      grpc.status.NOT_FOUND,
      /not found/,
    );
  }
});

test("a duplicate sweep id is refused with ALREADY_EXISTS and the first sweep is untouched", async () => {
  const first = await launch(goldenSpec(), "dup-1");
  assert.equal(first.sweepId, "dup-1");
  assert.equal(first.counts?.plannedCells, 2 * 4 * 6);
  await rejectsWith(launch(goldenSpec({ name: "other" }), "dup-1"), grpc.status.ALREADY_EXISTS, /dup-1.*already exists/);
  const again = await call<control.SweepRef, control.SweepInfo>(h.sweeps, h.sweeps.get, { sweepId: "dup-1" }, auth());
  assert.equal(again.name, "golden test");
  assert.equal(again.counts?.shardsTotal, first.counts?.shardsTotal);
});

test("after refused requests the service keeps serving: a valid launch succeeds and is listed", async () => {
  const info = await launch(goldenSpec({ prompts: 1 }), "after-errors");
  assert.equal(info.state, "running");
  const list = await call<control.ListRequest, control.ListReply>(h.sweeps, h.sweeps.list, {}, auth());
  assert.ok(list.sweeps.some((s: control.SweepInfo) => s.sweepId === "after-errors"));
  const ready = await fetch(`http://127.0.0.1:${h.coord.httpPort}/readyz`);
  assert.equal(ready.status, 200);
});

test("prompts the planner cannot use are reported in prompt_errors and the rest run", async () => {
  const spec = goldenSpec({ prompts: 1 }).replace("    - { input_ids: [11", "    - { input_ids: [5, 6], subject: [1, 9] }\n    - { input_ids: [11");
  const info = await launch(spec, "with-bad-prompt");
  assert.equal(info.promptErrors.length, 1);
  assert.equal(info.promptErrors[0]?.promptIndex, 0);
  assert.equal(info.counts?.plannedCells, 4 * 6);
});
