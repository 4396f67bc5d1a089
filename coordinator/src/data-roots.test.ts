import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { parseSweepSpec } from "@factsweep/planning";
import { confineModelPath, confineSweepSpec, DataPathDeniedError, normalizeRoots } from "./model-roots.js";
import { InvalidSpecError, ModelPathDeniedError } from "./errors.js";

/** A model folder (config.json) and a data folder under a fresh temp dir. */
function tree(): { dir: string; models: string; data: string } {
  const dir = mkdtempSync(join(tmpdir(), "fs-roots-"));
  mkdirSync(join(dir, "models/m"), { recursive: true });
  writeFileSync(join(dir, "models/m/config.json"), "{}");
  mkdirSync(join(dir, "data"));
  writeFileSync(join(dir, "data/known.json"), "[]");
  return { dir, models: join(dir, "models"), data: join(dir, "data") };
}

const specWith = (dataset: string, baseDir: string) => parseSweepSpec(`name: t\nmodel: { id: m, path: models/m }\ndataset: ${dataset}\n`, { baseDir });

test("/etc/passwd as a dataset path is refused with PERMISSION_DENIED, naming the field, echoing nothing", () => {
  const t = tree();
  try {
    for (const ds of ["{ known: /etc/passwd }", "{ relations: [/etc/passwd] }", "{ relations: /etc }"]) {
      assert.throws(
        () => confineSweepSpec(specWith(ds, t.dir), normalizeRoots([t.models]), normalizeRoots([t.data])),
        (e: unknown) => {
          assert.ok(e instanceof DataPathDeniedError, String(e));
          assert.equal(e.code, status.PERMISSION_DENIED);
          assert.match(
            e.message,
            /^dataset\.(known|relations\[0\]): path \/etc(\/passwd)? is outside the data roots \(.*\); move it under one of them or add a --data-root$/,
          );
          assert.doesNotMatch(e.message, /root:|:x:/);
          return true;
        },
      );
    }
    // A knockout corpus the same way.
    const k = parseSweepSpec(
      `name: t\nkind: knockout\nmodel: { id: m, path: models/m }\ndataset: { known: data/known.json }\nknockout: { corpus: /etc/shadow }\n`,
      { baseDir: t.dir },
    );
    assert.throws(
      () => confineSweepSpec(k, normalizeRoots([t.models]), normalizeRoots([t.data])),
      (e: unknown) => e instanceof DataPathDeniedError && e.field === "knockout.corpus",
    );
    // Inside the data root: accepted, replaced by its real path.
    const ok = confineSweepSpec(specWith("{ known: data/known.json }", t.dir), normalizeRoots([t.models]), normalizeRoots([t.data]));
    assert.equal(ok.dataset.known, join(normalizeRoots([t.data])[0]!, "known.json"));
  } finally {
    rmSync(t.dir, { recursive: true, force: true });
  }
});

test(
  "a FIFO as a dataset path is refused at once (INVALID_ARGUMENT naming the field), never opened",
  { skip: process.platform === "win32" && "no mkfifo" },
  () => {
    const t = tree();
    try {
      execFileSync("mkfifo", [join(t.data, "fifo.json")]);
      const t0 = Date.now();
      assert.throws(
        () => confineSweepSpec(specWith("{ known: data/fifo.json }", t.dir), normalizeRoots([t.models]), normalizeRoots([t.data])),
        (e: unknown) => e instanceof InvalidSpecError && e.field === "dataset.known" && /is a FIFO; expected a regular file/.test(e.message),
      );
      // In a relations folder too.
      assert.throws(
        () => confineSweepSpec(specWith("{ relations: [data] }", t.dir), normalizeRoots([t.models]), normalizeRoots([t.data])),
        (e: unknown) => e instanceof InvalidSpecError && e.field === "dataset.relations[0]",
      );
      assert.ok(Date.now() - t0 < 2000);
    } finally {
      rmSync(t.dir, { recursive: true, force: true });
    }
  },
);

test("a model root given through a symlink accepts the model through the link (real paths on both sides)", () => {
  const t = tree();
  try {
    symlinkSync(t.models, join(t.dir, "link"));
    const roots = normalizeRoots([join(t.dir, "link")]);
    assert.equal(confineModelPath(join(t.dir, "link/m"), roots), join(roots[0]!, "m"));
    assert.equal(confineModelPath(join(t.models, "m"), roots), join(roots[0]!, "m"));
    // A link inside the root that points out of it is still outside.
    symlinkSync("/etc", join(t.models, "etc"));
    assert.throws(() => confineModelPath(join(t.models, "etc"), roots), ModelPathDeniedError);
    // The tokenizer is confined to the model roots the same way.
    const s = parseSweepSpec(`name: t\nmodel: { id: m, path: link/m, tokenizer: /etc/passwd }\ndataset: { known: data/known.json }\n`, { baseDir: t.dir });
    assert.throws(() => confineSweepSpec(s, roots, normalizeRoots([t.data])), ModelPathDeniedError);
  } finally {
    rmSync(t.dir, { recursive: true, force: true });
  }
});
