import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatasetError } from "./errors.js";
import { loadKnownFacts, loadRelations } from "./datasets.js";
import { confineSpecPaths, PathDeniedError, PathUnusableError, readRegularFile, realRoots } from "./files.js";

const tmp = (): string => mkdtempSync(join(tmpdir(), "fs-files-"));
const fail = (m: string) => new Error(m);

test("/etc/passwd as a known-facts file is refused without echoing any of its bytes", { skip: process.platform === "win32" && "no /etc/passwd" }, () => {
  assert.throws(
    () => loadKnownFacts("/etc/passwd"),
    (e: unknown) => {
      assert.ok(e instanceof DatasetError);
      assert.match(e.message, /\/etc\/passwd is not valid JSON/);
      assert.doesNotMatch(e.message, /root|:x:|nologin|bin\//);
      return true;
    },
  );
});

test("a FIFO is refused after a stat, never opened (the call returns at once)", { skip: process.platform === "win32" && "no mkfifo" }, () => {
  const dir = tmp();
  try {
    const fifo = join(dir, "known.json");
    execFileSync("mkfifo", [fifo]);
    const t0 = Date.now();
    assert.throws(
      () => loadKnownFacts(fifo),
      (e: unknown) => e instanceof DatasetError && /is a FIFO, not a regular file/.test(e.message),
    );
    // A FIFO inside a relations folder too.
    assert.throws(() => loadRelations([dir]), /is a FIFO, not a regular file/);
    mkdirSync(join(dir, "m"));
    assert.throws(
      () => confineSpecPaths(spec({ known: fifo }, join(dir, "m")), roots(dir)),
      (e: unknown) => e instanceof PathUnusableError && /dataset\.known: .* is a FIFO/.test(e.message),
    );
    assert.ok(Date.now() - t0 < 2000, "refusing a FIFO must not block");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a file over the size cap is refused naming the cap and how to raise it", () => {
  const dir = tmp();
  try {
    const f = join(dir, "big.txt");
    writeFileSync(f, "x".repeat(2048));
    assert.throws(() => readRegularFile(f, "corpus file", 1024, fail), /is 2048 bytes, over the cap of 1024 bytes \(limit maxFileBytes; .*--max-file-bytes\)/);
    assert.equal(readRegularFile(f, "corpus file", 4096, fail).length, 2048);
    writeFileSync(join(dir, "k.json"), JSON.stringify([]) + " ".repeat(4096));
    assert.throws(
      () => loadKnownFacts(join(dir, "k.json"), 1024),
      (e: unknown) => e instanceof DatasetError && /over the cap of 1024 bytes/.test(e.message),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const spec = (dataset: { known?: string; relations?: string[] }, model = "/nonexistent") => ({ kind: "trace", model: { path: model }, dataset });
const roots = (data: string, model: string = data) => ({
  model: { roots: realRoots([model]), name: "model roots", flag: "--model-root" },
  data: { roots: realRoots([data]), name: "data roots", flag: "--data-root" },
});

test("every dataset path is confined to the data roots, existing or not, with the same message", () => {
  const dir = tmp();
  try {
    mkdirSync(join(dir, "m"));
    const r = roots(join(dir, "data"), dir);
    mkdirSync(join(dir, "data"));
    for (const p of ["/etc/passwd", "/etc/no-such-file", join(dir, "data/../outside.json")]) {
      assert.throws(
        () => confineSpecPaths(spec({ known: p }, join(dir, "m")), r),
        (e: unknown) => e instanceof PathDeniedError && e.field === "dataset.known" && /is outside the data roots/.test(e.message) && !/root:/.test(e.message),
      );
    }
    // A link inside a root that points outside it is outside.
    symlinkSync("/etc", join(dir, "data/etc"));
    assert.throws(() => confineSpecPaths(spec({ relations: [join(dir, "data/etc/passwd")] }, join(dir, "m")), r), PathDeniedError);
    // A link inside a relations folder that points outside it is refused too.
    mkdirSync(join(dir, "data/rels"));
    symlinkSync("/etc/passwd", join(dir, "data/rels/x.json"));
    assert.throws(
      () => confineSpecPaths(spec({ relations: [join(dir, "data/rels")] }, join(dir, "m")), r),
      (e: unknown) => e instanceof PathDeniedError && e.field === "dataset.relations[0]",
    );
    // No data root configured: refused, saying how to configure one.
    assert.throws(
      () => confineSpecPaths(spec({ known: join(dir, "data/k.json") }, join(dir, "m")), { ...r, data: { ...r.data, roots: [] } }),
      /no data roots are configured; start the coordinator with --data-root/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a root given through a symlink works: real paths are compared on both sides", () => {
  const dir = tmp();
  try {
    mkdirSync(join(dir, "real/m"), { recursive: true });
    writeFileSync(join(dir, "real/k.json"), "[]");
    symlinkSync(join(dir, "real"), join(dir, "link"));
    const r = roots(join(dir, "link"));
    const s = confineSpecPaths(spec({ known: join(dir, "link/k.json") }, join(dir, "link/m")), r);
    assert.equal(s.model.path, realRoots([join(dir, "real/m")])[0]);
    assert.equal(s.dataset.known, realRoots([join(dir, "real/k.json")])[0]);
    // And the real path under a root given by its link.
    assert.doesNotThrow(() => confineSpecPaths(spec({ known: join(dir, "real/k.json") }, join(dir, "real/m")), r));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
