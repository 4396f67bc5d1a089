/**
 * EngineClient end to end against the real Python engine worker (`python3 -m engine`) on the
 * golden tiny Mamba: the numbers must equal transformers' float64 reference grids.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execaSync, execa } from "execa";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { engine, ENGINE_PROTOCOL_VERSION } from "@factsweep/proto";
import { EngineClient } from "./engine-client.js";
import { EngineClosedError, EngineRequestError } from "./engine-errors.js";
import { sharedPath } from "@factsweep/testing";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const GOLDEN = sharedPath("golden");

function torchAvailable(): boolean {
  try {
    // find_spec, not import: importing torch costs seconds on a busy machine.
    execaSync(
      "bash",
      [
        join(ROOT, "scripts/engine-python.sh"),
        "-c",
        "import importlib.util as u, sys; sys.exit(0 if u.find_spec('torch') and u.find_spec('engine.worker') else 1)",
      ],
      { cwd: ROOT, timeout: 60_000 },
    );
    return true;
  } catch {
    return false;
  }
}
const skip = !GOLDEN ? "shared/golden is absent" : !torchAvailable() ? "no Python with torch (scripts/engine-python.sh) or no engine/worker.py" : false;

/** Minimal safetensors reader for the golden file (8-byte header length, JSON header, raw data). */
function readSafetensors(file: string): Map<string, { shape: number[]; data: number[] }> {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, { shape: number[]; data: number[] }>();
  for (const [k, v] of Object.entries(header)) {
    if (k === "__metadata__") continue;
    const bytes = buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]);
    const data: number[] = [];
    const size = v.dtype === "I64" || v.dtype === "F64" ? 8 : 4;
    for (let i = 0; i < bytes.length; i += size) {
      data.push(
        v.dtype === "I64"
          ? Number(bytes.readBigInt64LE(i))
          : v.dtype === "F64"
            ? bytes.readDoubleLE(i)
            : v.dtype === "F32"
              ? bytes.readFloatLE(i)
              : bytes.readInt32LE(i),
      );
    }
    out.set(k, { shape: v.shape, data });
  }
  return out;
}

test("the real engine worker answers hello, loads the golden Mamba and reproduces its swap trace grid", { skip, timeout: 120_000 }, async () => {
  const child = execa("bash", [join(ROOT, "scripts/engine-python.sh"), "-m", "engine"], {
    cwd: ROOT,
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
    encoding: "buffer",
    buffer: false,
    reject: false,
  });
  let log = "";
  child.stderr!.on("data", (d: Buffer) => (log += d.toString()));
  const client = new EngineClient({ stdin: child.stdin!, stdout: child.stdout!, name: "engine worker" });
  try {
    const hello = await client.hello({ timeoutMs: 60_000 });
    assert.equal(hello.protocolVersion, ENGINE_PROTOCOL_VERSION);
    assert.equal(hello.device, "cpu");

    await assert.rejects(client.loadModel({ modelId: "x", path: "/nonexistent/model" }), (e: unknown) => {
      assert.ok(e instanceof EngineRequestError, String(e));
      assert.equal(e.code, "ERROR_CODE_NOT_FOUND");
      return true;
    });

    const model = await client.loadModel({ modelId: "mamba", path: join(GOLDEN!, "mamba-tiny") });
    assert.equal(model.modelType, "mamba");
    assert.equal(model.numLayers, 4);

    const g = readSafetensors(join(GOLDEN!, "mamba-tiny.golden.safetensors"));
    const ref = (
      JSON.parse(readFileSync(join(GOLDEN!, "golden.json"), "utf8")) as {
        models: Record<string, { cases: { subject: [number, number]; answer: number; p_clean: number; p_corrupt_swap: number }[] }>;
      }
    ).models["mamba-tiny"]!.cases[0]!;
    const ids = g.get("p0.input_ids")!.data;
    const swapIds = g.get("p0.swap.input_ids")!.data;
    const info = await client.preparePrompt({
      modelId: "mamba",
      promptKey: "golden/0",
      inputIds: ids,
      subjectStart: ref.subject[0],
      subjectEnd: ref.subject[1],
      corruption: { kind: { $case: "swap", swap: { corruptedIds: swapIds } } },
    });
    assert.equal(info.answerId, ref.answer);
    assert.ok(Math.abs(info.pClean - ref.p_clean) < 1e-5, `p_clean ${info.pClean} vs ${ref.p_clean}`);
    assert.ok(Math.abs(info.pCorrupt - ref.p_corrupt_swap) < 1e-5);

    const grid = g.get("p0.trace.swap.layer.w1")!; // (L, T)
    const [L, T] = grid.shape as [number, number];
    const cells: engine.Cell[] = [];
    for (let l = 0; l < L; l++) for (let t = 0; t < T; t++) cells.push({ site: engine.Site.SITE_RESIDUAL, layer: l, token: t, window: 1 });
    const res = await client.runCells({ modelId: "mamba", promptKey: "golden/0", cells });
    assert.equal(res.p.length, L * T);
    assert.equal(res.logit.length, L * T);
    let worst = 0;
    res.p.forEach((p, i) => (worst = Math.max(worst, Math.abs(p - grid.data[i]!))));
    assert.ok(worst <= 1e-5, `max |p − golden| = ${worst}`);

    const stats = await client.stats();
    assert.deepEqual(stats.cachedPromptKeys, ["golden/0"]);
    await client.shutdown();
    const exit = await child;
    assert.equal(exit.exitCode, 0, log);
    await assert.rejects(client.stats(), EngineClosedError);
  } catch (err) {
    child.kill("SIGKILL");
    throw new Error(`${(err as Error).message}\nworker log:\n${log}`, { cause: err });
  }
});

test("an engine worker killed mid-session fails the pending request with EngineClosedError", { skip, timeout: 60_000 }, async () => {
  const child = execa("bash", [join(ROOT, "scripts/engine-python.sh"), "-m", "engine"], {
    cwd: ROOT,
    stdin: "pipe",
    stdout: "pipe",
    stderr: "ignore",
    encoding: "buffer",
    buffer: false,
    reject: false,
  });
  const client = new EngineClient({ stdin: child.stdin!, stdout: child.stdout! });
  // Hello imports torch (seconds), so the worker is killed while the request is in flight.
  const pending = assert.rejects(client.hello({ timeoutMs: 60_000 }), EngineClosedError);
  child.kill("SIGKILL");
  await child;
  await pending;
  assert.equal(client.closed, true);
});
