import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { execa } from "execa";
import { parquetReadObjects } from "hyparquet";
import { Coordinator, type CoordinatorOptions } from "@factsweep/coordinator";
import {
  FAKE_ENGINE_SECONDS_PER_CELL,
  freePort,
  goldenSpec,
  GOLDEN_DIR,
  REPO_ROOT,
  startHarness,
  tempSpec,
  TestAgent,
  until,
  type Harness,
} from "@factsweep/testing";

const CLI = join(REPO_ROOT, "sweepctl", "dist", "cli.js");
let h: Harness<Coordinator, CoordinatorOptions>;
let worker: TestAgent;
before(async () => {
  h = await startHarness(Coordinator.start, { token: "tok" });
  worker = await new TestAgent({ addr: h.addr, natsUrl: h.nats.url, agentId: "cli-worker", token: "tok" }).start();
});
after(async () => {
  await worker.kill();
  await h.close();
});

const sweepctl = (...args: string[]) =>
  execa(process.execPath, [CLI, "--coordinator", h.addr, "--token", "tok", ...args], { reject: false, env: { FACTSWEEP_TOKEN: "" } });

test("launch --detach prints the sweep id and exits 0; watch follows it to done (0); results export csv and jsonl", async () => {
  const spec = tempSpec(goldenSpec({ prompts: 2, shardCells: 24 }));
  const l = await sweepctl("launch", spec, "--id", "cli-ok", "--detach");
  assert.equal(l.exitCode, 0, l.stderr);
  assert.equal(l.stdout.trim(), "cli-ok");
  const w = await sweepctl("watch", "cli-ok", "--quiet");
  assert.equal(w.exitCode, 0, w.stderr);
  assert.match(w.stderr, /state\s+done/);
  const j = await sweepctl("results", "cli-ok", "--format", "jsonl");
  assert.equal(j.exitCode, 0, j.stderr);
  const rows = j.stdout
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(rows.length, 48);
  assert.deepEqual(Object.keys(rows[0]!).slice(0, 3), ["sweep_id", "model", "prompt_index"]);
  const out = join(mkdtempSync(join(tmpdir(), "cli-out-")), "r.csv");
  const c = await sweepctl("results", "cli-ok", "--format", "csv", "--out", out);
  assert.equal(c.exitCode, 0, c.stderr);
  const lines = readFileSync(out, "utf8").trim().split("\n");
  assert.equal(
    lines[0],
    "sweep_id,model,prompt_index,subject,site,head,layer,token,window,token_group,p,p_clean,p_corrupt,ie,corruption,answer_id,answer,prompt,relation,object,token_str,swap_subject,corrupted_prompt",
  );
  assert.equal(lines.length, 49);
  const pq = join(dirname(out), "r.parquet");
  const p = await sweepctl("results", "cli-ok", "--format", "parquet", "--out", pq);
  assert.equal(p.exitCode, 0, p.stderr);
  const buf = readFileSync(pq);
  const table = await parquetReadObjects({ file: buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) });
  assert.equal(table.length, 48);
  assert.deepEqual(Object.keys(table[0]!), lines[0]!.split(","), "the Parquet file has the CSV's columns");
  const noOut = await sweepctl("results", "cli-ok", "--format", "parquet");
  assert.equal(noOut.exitCode, 2);
  assert.match(noOut.stderr, /--format parquet writes a file: add --out/);
  const s = await sweepctl("status", "cli-ok");
  assert.equal(s.exitCode, 0);
  assert.match(s.stdout, /cells\s+48\/48/);
  const list = await sweepctl("list");
  assert.match(list.stdout, /cli-ok\s+done\s+48\/48/);
  const agents = await sweepctl("agents");
  assert.match(agents.stdout, /cli-worker/);
});

test("a malformed spec exits 2 naming the field; a model outside the roots exits 2; a duplicate id exits 2", async () => {
  const bad = await sweepctl("launch", tempSpec(goldenSpec().replace("layers: all", "layers: [0, -1]")));
  assert.equal(bad.exitCode, 2);
  assert.match(bad.stderr, /layers/);
  const outside = await sweepctl("launch", tempSpec(goldenSpec({ modelPath: "/etc" })));
  assert.equal(outside.exitCode, 2);
  assert.match(outside.stderr, /outside the configured model roots/);
  await sweepctl("launch", tempSpec(goldenSpec()), "--id", "cli-dup", "--detach");
  const dup = await sweepctl("launch", tempSpec(goldenSpec()), "--id", "cli-dup", "--detach");
  assert.equal(dup.exitCode, 2);
  assert.match(dup.stderr, /already exists/);
});

test("an unknown sweep or model folder exits 3", async () => {
  const s = await sweepctl("status", "no-such-sweep");
  assert.equal(s.exitCode, 3);
  assert.match(s.stderr, /sweep "no-such-sweep" not found/);
  const m = await sweepctl("launch", tempSpec(goldenSpec({ modelPath: join(GOLDEN_DIR, "nope") })));
  assert.equal(m.exitCode, 3);
});

test("an unreachable coordinator exits 4; a usage error or a missing token exits 2", async () => {
  const port = await freePort();
  const u = await execa(process.execPath, [CLI, "--coordinator", `127.0.0.1:${port}`, "--timeout-ms", "3000", "list"], { reject: false });
  assert.equal(u.exitCode, 4, u.stderr);
  assert.match(u.stderr, /unavailable/);
  const usage = await sweepctl("frobnicate");
  assert.equal(usage.exitCode, 2);
  const noTok = await execa(process.execPath, [CLI, "--coordinator", h.addr, "list"], { reject: false, env: { FACTSWEEP_TOKEN: "" } });
  assert.equal(noTok.exitCode, 2);
  assert.match(noTok.stderr, /token/);
});

test("launch keeps following its sweep across a coordinator restart and exits 0 when it is done", async () => {
  await worker.kill();
  worker = await new TestAgent({ addr: h.addr, natsUrl: h.nats.url, agentId: "cli-worker", token: "tok", hold: true }).start();
  const launching = sweepctl("launch", tempSpec(goldenSpec({ prompts: 2, shardCells: 24 })), "--id", "cli-restart", "--quiet");
  let printed = "";
  launching.stdout?.on("data", (d: Buffer) => (printed += d.toString()));
  await until(() => worker.heldLeases().length > 0 && printed.includes("cli-restart"), "the launch to return and a lease of the new sweep");
  await h.restart("crash", true);
  await worker.kill();
  worker = await new TestAgent({ addr: h.addr, natsUrl: h.nats.url, agentId: "cli-worker", token: "tok" }).start();
  const r = await launching;
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stderr, /state\s+done/);
});

test("a sweep whose shards fail exits 1 from watch and status", async () => {
  await worker.kill();
  worker = await new TestAgent({
    addr: h.addr,
    natsUrl: h.nats.url,
    agentId: "cli-worker",
    token: "tok",
    failWith: { error: "bad prompt", retryable: false },
  }).start();
  const l = await sweepctl("launch", tempSpec(goldenSpec({ prompts: 1, shardCells: 24 })), "--id", "cli-fail", "--quiet");
  assert.equal(l.exitCode, 1, l.stderr);
  assert.match(l.stderr, /cli-fail\.0\.0: bad prompt/);
  await until(() => h.coord.get("cli-fail").state === "failed", "failed");
  assert.equal((await sweepctl("status", "cli-fail")).exitCode, 1);
  assert.equal((await sweepctl("watch", "cli-fail", "--quiet")).exitCode, 1);
});

test("report on a running sweep says it is partial, on the page and in its output, and judges no finding", async () => {
  await worker.kill();
  worker = await new TestAgent({ addr: h.addr, natsUrl: h.nats.url, agentId: "cli-worker", token: "tok", hold: true }).start();
  const l = await sweepctl("launch", tempSpec(goldenSpec({ prompts: 2, shardCells: 24 })), "--id", "cli-partial", "--detach");
  assert.equal(l.exitCode, 0, l.stderr);
  const out = mkdtempSync(join(tmpdir(), "cli-report-"));
  const r = await sweepctl("report", "cli-partial", "--out", out);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stderr, /partial: 0 of 2 facts \(sweep running\); findings are not judged on partial data/);
  assert.doesNotMatch(r.stderr, /^reproduced|NOT reproduced/m);
  const html = readFileSync(join(out, "report.html"), "utf8");
  assert.match(html, /Partial report: .*partial: 0 of 2 facts \(sweep running\)/);
  await sweepctl("cancel", "cli-partial");
});

test("plan --agents estimates from what the connected agents' counted results of the model took", { timeout: 120_000 }, async () => {
  // A worker that completes its leases (the test before left one that holds them).
  await worker.kill();
  worker = await new TestAgent({ addr: h.addr, natsUrl: h.nats.url, agentId: "cli-worker", token: "tok" }).start();
  const spec = tempSpec(goldenSpec({ prompts: 2, shardCells: 24 }));
  const before = await sweepctl("plan", spec, "--agents", "--json");
  assert.equal(before.exitCode, 0, before.stderr);
  const l = await sweepctl("launch", spec, "--id", "cli-rate", "--quiet");
  assert.equal(l.exitCode, 0, l.stderr);
  const agents = await sweepctl("agents", "--json");
  const rates = (
    JSON.parse(agents.stdout) as { agents: { agentId: string; rates?: { model: string; forwards: number; engineSeconds: number }[] }[] }
  ).agents.find((a) => a.agentId === "cli-worker")!.rates!;
  assert.ok(rates.length === 1 && rates[0]!.forwards >= 48, `the worker's rate is listed: ${agents.stdout}`);
  const p = await sweepctl("plan", spec, "--agents", "--json");
  assert.equal(p.exitCode, 0, p.stderr);
  const plan = JSON.parse(p.stdout) as {
    cells: number;
    work: number;
    estimate: { seconds: number; workerSeconds: number; rate: { workPerSecond: number; agents: number } };
  };
  // The test agent's engine reports FAKE_ENGINE_SECONDS_PER_CELL a cell, one worker; a cell is work/cells
  // corrupted forwards (this spec's noise samples), so the rate is that many forwards per cell-time and
  // the estimate is the cells' engine time.
  const perCell = plan.work / plan.cells;
  assert.ok(Math.abs(plan.estimate.rate.workPerSecond - perCell / FAKE_ENGINE_SECONDS_PER_CELL) < 1e-6, p.stdout);
  assert.equal(plan.estimate.rate.agents, 1);
  assert.ok(Math.abs(plan.estimate.seconds - plan.cells * FAKE_ENGINE_SECONDS_PER_CELL) < 1e-9, p.stdout);
  assert.ok(Math.abs(plan.estimate.workerSeconds - plan.estimate.seconds) < 1e-9, "one worker: worker time = wall time");
  const text = await sweepctl("plan", spec, "--agents");
  assert.match(text.stdout, /estimate .* forwards\/s, measured by the coordinator's connected agents \(cli-worker;/);
  assert.match(
    text.stdout,
    /memory {5}per worker at least [\d.]+ \w?i?B on a GPU, [\d.]+ \w?i?B on a CPU: weights .* \+ the longest prompt's \(\d+ tokens\) cached runs/,
  );
});

test(
  "archive writes a finished sweep to a run folder, checks every row, deletes it; a running sweep or a taken folder is refused and nothing is deleted",
  { timeout: 120_000 },
  async () => {
    await worker.kill();
    worker = await new TestAgent({ addr: h.addr, natsUrl: h.nats.url, agentId: "cli-worker", token: "tok" }).start();
    const specFile = tempSpec(goldenSpec({ prompts: 2, shardCells: 24 }));
    for (const id of ["cli-arch", "cli-arch2"]) assert.equal((await sweepctl("launch", specFile, "--id", id, "--quiet")).exitCode, 0);
    const expected = (await sweepctl("results", "cli-arch", "--format", "jsonl")).stdout.trim().split("\n");
    const dir = join(mkdtempSync(join(tmpdir(), "cli-archive-")), "cli-arch");
    const a = await sweepctl("archive", "cli-arch", "--out", dir, "--spec", specFile);
    assert.equal(a.exitCode, 0, a.stderr);
    assert.match(a.stdout, /sweep cli-arch archived to .* and deleted: \d+ shard record\(s\), \d+ stored result\(s\)/);
    // Every row, in every format, with provenance from the spec; the folder reads as a run folder.
    const rows = readFileSync(join(dir, "results.jsonl"), "utf8").trim().split("\n");
    assert.equal(rows.length, expected.length);
    assert.equal(readFileSync(join(dir, "prompts.csv"), "utf8").trim().split("\n").length, 1 + 2, "prompts.csv: a row per prompt (from --spec)");
    const buf = readFileSync(join(dir, "results.parquet"));
    assert.equal((await parquetReadObjects({ file: buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) })).length, expected.length);
    assert.equal(readFileSync(join(dir, "spec.yaml"), "utf8"), readFileSync(specFile, "utf8"));
    assert.equal((JSON.parse(readFileSync(join(dir, "sweep.json"), "utf8")) as { state: string }).state, "done");
    const report = await sweepctl("report", "--from", dir, "--out", dir);
    assert.equal(report.exitCode, 0, report.stderr);
    assert.equal((await sweepctl("status", "cli-arch")).exitCode, 3, "deleted from the coordinator");
    // A folder that holds another run: refused, and the second sweep is still there.
    const taken = await sweepctl("archive", "cli-arch2", "--out", dir);
    assert.equal(taken.exitCode, 2);
    assert.match(taken.stderr, /already holds the results of sweep cli-arch/);
    assert.equal((await sweepctl("status", "cli-arch2")).exitCode, 0);
    // A running sweep: refused, nothing written.
    await worker.kill();
    worker = await new TestAgent({ addr: h.addr, natsUrl: h.nats.url, agentId: "cli-worker", token: "tok", hold: true }).start();
    assert.equal((await sweepctl("launch", specFile, "--id", "cli-arch3", "--detach")).exitCode, 0);
    const running = await sweepctl("archive", "cli-arch3", "--out", join(dir, "..", "running"));
    assert.equal(running.exitCode, 2);
    assert.match(running.stderr, /sweep cli-arch3 is running; archive takes a finished, failed or cancelled sweep/);
    await sweepctl("cancel", "cli-arch3");
  },
);
