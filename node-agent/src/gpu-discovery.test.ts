import { test } from "node:test";
import assert from "node:assert/strict";
import { applyCudaVisibleDevices, cellsPerCallOf, CPU_CELLS_PER_CALL, discoverSlots, gpuSlots, parseNvidiaSmi } from "./gpu-discovery.js";
import { GpuDiscoveryError } from "./errors.js";

// Captured verbatim from `nvidia-smi --query-gpu=index,uuid,memory.total --format=csv,noheader,nounits`
// on the project's H200 machine (one GPU visible in its container).
const H200_ONE = "0, GPU-bb7e459e-1e99-c3e6-8019-0bf47f8ea36c, 143771\n";
// The same format for a four-GPU host (nvidia-smi prints one such line per GPU).
const FOUR = [
  "0, GPU-bb7e459e-1e99-c3e6-8019-0bf47f8ea36c, 143771",
  "1, GPU-0d5f1e2a-77c4-4a0b-9e1f-3c2b1a0f9e8d, 143771",
  "2, GPU-5a6b7c8d-1111-2222-3333-444455556666, 81559",
  "3, GPU-fedcba98-7654-3210-fedc-ba9876543210, 81559",
  "",
].join("\n");

test("nvidia-smi csv output becomes one GPU per line with memory in bytes", () => {
  assert.deepEqual(parseNvidiaSmi(H200_ONE), [{ index: 0, uuid: "GPU-bb7e459e-1e99-c3e6-8019-0bf47f8ea36c", memoryBytes: 143771 * 1024 * 1024 }]);
  const four = parseNvidiaSmi(FOUR);
  assert.deepEqual(
    four.map((g) => g.index),
    [0, 1, 2, 3],
  );
  assert.equal(four[2]!.memoryBytes, 81559 * 1024 * 1024);
});

test("each GPU gets one worker slot that sees only its GPU as cuda:0", () => {
  const slots = gpuSlots(parseNvidiaSmi(FOUR));
  assert.deepEqual(
    slots.map((s) => s.name),
    ["cuda:0", "cuda:1", "cuda:2", "cuda:3"],
  );
  assert.ok(slots.every((s) => s.device === "cuda:0"));
  assert.ok(
    slots.every((s) => s.cellsPerCall === 0 && cellsPerCallOf(s) === 0),
    "a GPU worker runs a whole shard per engine call",
  );
  assert.equal(slots[1]!.cudaVisibleDevices, "GPU-0d5f1e2a-77c4-4a0b-9e1f-3c2b1a0f9e8d");
});

test("a driver error message instead of csv is a clear error naming the line", () => {
  const text =
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\n";
  assert.throws(
    () => parseNvidiaSmi(text),
    (e: unknown) => e instanceof GpuDiscoveryError && /line 1/.test(e.message) && /--cpu/.test(e.message),
  );
});

test("CUDA_VISIBLE_DEVICES selects GPUs by index or UUID prefix, in its order", () => {
  const gpus = parseNvidiaSmi(FOUR);
  assert.deepEqual(
    applyCudaVisibleDevices(gpus, undefined).map((g) => g.index),
    [0, 1, 2, 3],
  );
  assert.deepEqual(
    applyCudaVisibleDevices(gpus, "2,0").map((g) => g.index),
    [2, 0],
  );
  assert.deepEqual(
    applyCudaVisibleDevices(gpus, " 3 , GPU-0d5f1e2a").map((g) => g.index),
    [3, 1],
  );
  assert.deepEqual(
    applyCudaVisibleDevices(gpus, "5a6b7c8d").map((g) => g.index),
    [2],
  );
});

test("CUDA_VISIBLE_DEVICES empty or -1 hides every GPU; a negative entry ends the list as in CUDA", () => {
  const gpus = parseNvidiaSmi(FOUR);
  assert.deepEqual(applyCudaVisibleDevices(gpus, ""), []);
  assert.deepEqual(applyCudaVisibleDevices(gpus, "-1"), []);
  assert.deepEqual(
    applyCudaVisibleDevices(gpus, "1,-1,2").map((g) => g.index),
    [1],
  );
});

test("a CUDA_VISIBLE_DEVICES entry that matches no GPU is an error listing the GPUs", () => {
  const gpus = parseNvidiaSmi(FOUR);
  assert.throws(
    () => applyCudaVisibleDevices(gpus, "0,7"),
    (e: unknown) => e instanceof GpuDiscoveryError && /"7"/.test(e.message) && /matches no GPU/.test(e.message) && /GPU-fedcba98/.test(e.message),
  );
  assert.throws(() => applyCudaVisibleDevices(gpus, "1,1"), /twice/);
});

test("without nvidia-smi the agent falls back to CPU workers and says why", async () => {
  const lines: string[] = [];
  const d = await discoverSlots({ nvidiaSmi: "/nonexistent/nvidia-smi", workers: 3, env: {}, log: (l) => lines.push(l) });
  assert.equal(d.mode, "cpu");
  assert.deepEqual(
    d.slots.map((s) => s.name),
    ["cpu:0", "cpu:1", "cpu:2"],
  );
  assert.ok(d.slots.every((s) => s.device === "cpu" && s.cudaVisibleDevices === ""));
  assert.ok(
    d.slots.every((s) => cellsPerCallOf(s) === CPU_CELLS_PER_CALL && CPU_CELLS_PER_CALL === 512),
    "a CPU worker calls the engine in 512-cell slices",
  );
  assert.match(lines[0] ?? "", /not found/);
});

test("CPU mode starts the requested number of workers, capped by max slots", async () => {
  const d = await discoverSlots({ cpu: true, workers: 4, maxSlots: 2 });
  assert.deepEqual(
    d.slots.map((s) => s.name),
    ["cpu:0", "cpu:1"],
  );
});
