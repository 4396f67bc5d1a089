import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { execa } from "execa";
import { Coordinator, type CoordinatorOptions } from "@factsweep/coordinator";
import type { sweep } from "@factsweep/proto";
import { fakeEngine, goldenSpec, REPO_ROOT, startHarness, tempSpec, TestAgent, until, type Harness } from "@factsweep/testing";

const run = promisify(execFile);
const CLI = join(REPO_ROOT, "sweepctl", "dist", "cli.js");
let h: Harness<Coordinator, CoordinatorOptions>;
let agent: TestAgent;
/** Shards the agent computed, waiting for the test to let their results out. */
const gated: (() => void)[] = [];
const release = (n: number) => gated.splice(0, n).forEach((go) => go());

before(async () => {
  h = await startHarness(Coordinator.start, { token: "tok" });
  const compute = (shard: sweep.Shard, id: string) => new Promise<sweep.ShardResult>((res) => gated.push(() => res(fakeEngine(shard, id))));
  agent = await new TestAgent({ addr: h.addr, natsUrl: h.nats.url, agentId: "live-agent", token: "tok", compute, slots: 8 }).start();
});
after(async () => {
  release(gated.length);
  await agent.kill();
  await h.close();
});

test("the live page opens on a running sweep marked partial and updates in place, without a reload, as results arrive", { timeout: 120_000 }, async () => {
  const spec = tempSpec(goldenSpec({ prompts: 4 }));
  const l = await execa(process.execPath, [CLI, "--coordinator", h.addr, "--token", "tok", "launch", spec, "--id", "live", "--detach"], { reject: false });
  assert.equal(l.exitCode, 0, l.stderr);
  await until(() => gated.length === 4, `the 4 shards computed and held (${gated.length})`);
  release(1);
  await until(() => h.coord.get("live").counts!.shardsDone === 1, "one shard counted");

  const serve = execa(process.execPath, [CLI, "--coordinator", h.addr, "--token", "tok", "serve", "live", "--port", "0"], { reject: false });
  let url = "";
  serve.stdout!.on("data", (d: Buffer) => (url ||= d.toString().trim()));
  serve.stderr!.on("data", (d: Buffer) => process.stderr.write(`serve: ${d}`));
  await until(() => url.startsWith("http://"), "serve to print its URL");
  try {
    // Chromium loads the page once; while it waits on the page's long poll, the rest of the results arrive.
    const dir = mkdtempSync(join(tmpdir(), "live-"));
    const chromium = process.env.CHROMIUM ?? "/usr/bin/chromium";
    const flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", `--user-data-dir=${join(dir, "p")}`];
    const dumping = run(chromium, [...flags, "--virtual-time-budget=5000", "--dump-dom", url], { maxBuffer: 64 << 20, timeout: 90_000 });
    // One more result after 3 s, then the rest from 6 s on (a shard whose lease expired while held is leased and held again).
    setTimeout(() => release(1), 3000);
    let rest: NodeJS.Timeout | undefined;
    const later = setTimeout(() => (rest = setInterval(() => release(gated.length), 500)), 6000);
    let stdout: string;
    try {
      ({ stdout } = await dumping);
    } finally {
      clearTimeout(later);
      clearInterval(rest);
    }
    const log = /<pre id="live-log" hidden="">([^<]*)<\/pre>/.exec(stdout)?.[1] ?? "";
    const updates = log
      .trim()
      .split("\n")
      .filter(Boolean)
      .map((x) => JSON.parse(x.replace(/&quot;/g, '"').replace(/&amp;/g, "&")) as { version: number; facts: number[]; states: string[]; partial: string });
    assert.ok(updates.length >= 2, `the page updated in place: ${log}`);
    assert.equal(updates[0]!.facts[0], 1, "it opened on the partial sweep (1 fact)");
    assert.match(updates[0]!.partial, /partial: 1 of 4 facts \(sweep running\)/);
    assert.deepEqual(updates.at(-1), { ...updates.at(-1)!, facts: [4], states: ["done"], partial: "" });
    assert.ok(
      updates.every((u, i) => i === 0 || u.facts[0]! >= updates[i - 1]!.facts[0]!),
      "fact counts only grow",
    );
    assert.equal(updates[0]!.states[0], "running");
    assert.doesNotMatch(stdout, /class="partial banner"/, "the done report is not marked partial");
  } finally {
    serve.kill("SIGTERM");
    await serve;
  }
});
