import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { deployDir, repoRoot } from "./paths.js";

interface Stage {
  from: string;
  name?: string;
  lines: string[];
}

/** Dockerfile instructions by stage, continuation lines joined. */
function stages(file: string): Stage[] {
  const text = readFileSync(join(deployDir, "docker", file), "utf8").replace(/\\\n/g, " ");
  const out: Stage[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const from = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?/i.exec(line);
    if (from) out.push({ from: from[1]!, ...(from[2] ? { name: from[2] } : {}), lines: [] });
    else out.at(-1)?.lines.push(line);
  }
  return out;
}

const IMAGES = { coordinator: "coordinator.Dockerfile", agent: "agent.Dockerfile" } as const;

test("every file a Dockerfile copies from the build context exists in the repository", () => {
  for (const file of Object.values(IMAGES)) {
    for (const s of stages(file)) {
      for (const l of s.lines.filter((x) => /^COPY\s/i.test(x) && !/--from=/.test(x))) {
        const parts = l
          .split(/\s+/)
          .slice(1)
          .filter((p) => !p.startsWith("--"));
        for (const src of parts.slice(0, -1)) assert.ok(existsSync(join(repoRoot, src)), `${file}: COPY ${src}`);
      }
    }
  }
});

test("the coordinator image is a multi-stage node:20-slim build whose entrypoint is the compiled main of the coordinator", () => {
  const s = stages(IMAGES.coordinator);
  assert.ok(s.length >= 2 && s.every((x) => x.from === "node:20-slim"), s.map((x) => x.from).join(", "));
  const entry = s.at(-1)!.lines.find((l) => l.startsWith("ENTRYPOINT"))!;
  assert.match(entry, /"\/app\/coordinator\/dist\/main\.js"/);
  assert.ok(existsSync(join(repoRoot, "coordinator/src/main.ts")), "coordinator/src/main.ts compiles to the entrypoint");
  assert.ok(s.at(-1)!.lines.some((l) => /^EXPOSE\s+7070\s+9464$/.test(l)));
});

test("the agent image runs on a CUDA PyTorch runtime with Node 20 and the engine package", () => {
  const s = stages(IMAGES.agent);
  const text = readFileSync(join(deployDir, "docker", IMAGES.agent), "utf8");
  assert.match(text, /^ARG PYTORCH_IMAGE=pytorch\/pytorch:2\.\d+\.\d+-cuda12\.\d+-cudnn9-runtime$/m);
  const last = s.at(-1)!;
  assert.equal(last.from, "${PYTORCH_IMAGE}");
  assert.ok(last.lines.includes("COPY --from=node /usr/local/bin/node /usr/local/bin/node"));
  assert.ok(last.lines.includes("COPY engine engine"));
  assert.match(
    last.lines.find((l) => l.startsWith("ENTRYPOINT"))!,
    /"\/app\/node-agent\/dist\/main\.js"/,
  );
  assert.ok(existsSync(join(repoRoot, "node-agent/src/main.ts")), "node-agent/src/main.ts compiles to the entrypoint");
  assert.ok(existsSync(join(repoRoot, "engine/__main__.py")), "python -m engine runs the worker");
});
