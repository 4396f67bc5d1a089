// Issue 16: sweeps sharing a cluster, with real processes (nats-server, the coordinator, two agents
// with real Python workers on the tiny golden Mamba). Two sweeps of weights 3 and 1 get 75% and 25%
// of the shards while both run; a priority sweep launched late starts within one lease round and
// runs ahead of both. Shares are read from the results stream (each stored result is one shard).
import assert from "node:assert/strict";
import { test } from "node:test";
import { Cluster, goldenMambaSpec } from "./cluster.js";

const spec = (name: string, prompts: number, extra: string) => goldenMambaSpec({ prompts, name }) + extra;

test(
  "weights 3:1 get 75% / 25% of the shards while both run; a priority sweep launched late starts within one lease round",
  { timeout: 600_000 },
  async (t) => {
    const cluster = await new Cluster({ agents: 2 }).start();
    try {
      // Far more shards than the test lets run (both are cancelled at the end): with 48 prompts, heavy
      // had only a few shards left after the share window and could finish before urgent was done.
      const heavy = cluster.writeSpec("heavy.yaml", spec("heavy", 144, "weight: 3\n"));
      const light = cluster.writeSpec("light.yaml", spec("light", 144, "weight: 1\n"));
      const urgent = cluster.writeSpec("urgent.yaml", spec("urgent", 4, "priority: 1\n"));
      for (const [file, id] of [
        [heavy, "heavy"],
        [light, "light"],
      ] as const)
        assert.equal((await cluster.sweepctl("launch", file, "--id", id, "--detach")).exitCode, 0);
      // The window opens once both have results (the leases granted before "light" arrived are done).
      await cluster.waitForStored("light", 2);
      const [h0, l0] = await cluster.storedNow("heavy", "light");
      let h1 = h0!;
      let l1 = l0!;
      while (h1 - h0! + (l1 - l0!) < 120) {
        await new Promise((r) => setTimeout(r, 20));
        [h1, l1] = (await cluster.storedNow("heavy", "light")) as [number, number];
      }
      const share = (h1 - h0!) / (h1 - h0! + (l1 - l0!));
      t.diagnostic(`while both ran: heavy ${h1 - h0!}, light ${l1 - l0!} shards: heavy's share ${(100 * share).toFixed(1)}%`);
      assert.ok(Math.abs(share - 0.75) <= 0.05, `heavy's share ${share} is 75% ± 5%`);
      const list = await cluster.sweepctl("list");
      assert.match(list.stdout, /heavy\s+running\s+\S+\s+0\s+0\s+3\s+\d+%/, list.stdout);

      // A priority sweep, launched while both run: its first result comes before the agents finish
      // more than the leases they already held (2 agents × 2 slots), and it is done while both still run.
      assert.equal((await cluster.sweepctl("launch", urgent, "--id", "urgent", "--detach")).exitCode, 0);
      const [hb, lb] = await cluster.storedNow("heavy", "light");
      await cluster.waitForStored("urgent", 1);
      const [ha, la] = await cluster.storedNow("heavy", "light");
      t.diagnostic(`others' results between urgent's launch and its first: ${ha! - hb! + (la! - lb!)}`);
      assert.ok(ha! - hb! + (la! - lb!) <= 4, `urgent started within one lease round (${ha! - hb! + (la! - lb!)} other results in between)`);
      const done = await cluster.waitFor("urgent", (s) => s.state !== "running", 300_000);
      assert.equal(done.state, "done");
      for (const id of ["heavy", "light"]) assert.equal((await cluster.waitFor(id, () => true)).state, "running", `${id} still runs when urgent is done`);
      for (const id of ["heavy", "light"]) await cluster.sweepctl("cancel", id);
    } catch (err) {
      console.error(cluster.logs());
      throw err;
    } finally {
      await cluster.stop();
    }
  },
);
