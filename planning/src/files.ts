/**
 * The files a sweep spec names, read safely: only regular files (a FIFO, device, socket or folder
 * is refused after a stat, never opened), at most a capped size, and never echoed (errors name the
 * field and the path, never bytes of the file). {@link confinePath} / {@link confineSpecPaths}
 * keep every path of a spec inside configured roots, comparing real paths on both sides.
 */
import { closeSync, constants, existsSync, fstatSync, openSync, readdirSync, readSync, realpathSync, statSync, type Stats } from "node:fs";
import { basename, dirname, join, resolve, sep } from "node:path";
import { FactsweepError } from "@factsweep/shared";
import { raiseHint } from "./limits.js";

/** Makes the error a reader throws (a DatasetError, SpecError, … of the caller's choosing). */
export type FailFn = (message: string, cause?: unknown) => Error;

/** What a stat found, for messages. */
export function fileKind(st: Stats): string {
  if (st.isFile()) return "a regular file";
  if (st.isDirectory()) return "a folder";
  if (st.isFIFO()) return "a FIFO";
  if (st.isSocket()) return "a socket";
  if (st.isCharacterDevice() || st.isBlockDevice()) return "a device";
  if (st.isSymbolicLink()) return "a symbolic link";
  return "not a regular file";
}

const errCode = (err: unknown): string => (err as NodeJS.ErrnoException).code ?? "error";

/**
 * The text of a regular file of at most `maxBytes` bytes (UTF-8). Stats before opening (a FIFO
 * would block the event loop), opens non-blocking and checks the opened file is the one stat'd.
 * `what` names it in messages ("relation file"); no message holds any of its bytes.
 */
export function readRegularFile(path: string, what: string, maxBytes: number, fail: FailFn): string {
  let st: Stats;
  try {
    st = statSync(path);
  } catch (err) {
    throw fail(`${what} ${path} cannot be read (${errCode(err)})`, err);
  }
  if (!st.isFile()) throw fail(`${what} ${path} is ${fileKind(st)}, not a regular file`);
  const tooBig = (n: number) => fail(`${what} ${path} is ${n} bytes, over the cap of ${maxBytes} bytes (${raiseHint("maxFileBytes")})`);
  if (st.size > maxBytes) throw tooBig(st.size);
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  } catch (err) {
    throw fail(`${what} ${path} cannot be read (${errCode(err)})`, err);
  }
  try {
    const fst = fstatSync(fd);
    if (!fst.isFile() || fst.ino !== st.ino || fst.dev !== st.dev) throw fail(`${what} ${path} changed while it was opened; retry`);
    const buf = Buffer.alloc(Math.min(fst.size, maxBytes) + 1);
    let n = 0;
    for (;;) {
      const got = readSync(fd, buf, n, buf.length - n, null);
      if (got === 0) break;
      n += got;
      if (n === buf.length) break;
    }
    if (n > maxBytes) throw tooBig(n);
    return buf.subarray(0, n).toString("utf8");
  } finally {
    closeSync(fd);
  }
}

/** JSON.parse whose error names the file but not its bytes (V8's message quotes the text around the error). */
export function parseJsonFile(text: string, what: string, path: string, fail: FailFn): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    const at = /position (\d+)/.exec((err as Error).message);
    throw fail(`${what} ${path} is not valid JSON${at ? ` (error at byte ${at[1]})` : ""}`, err);
  }
}

/** The type of a value read from a file, for messages that must not echo it. */
export function typeOfValue(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "object") return "an object";
  return `a ${typeof v}`;
}

/** A path confined to roots was refused: outside every root, or none configured. */
export class PathDeniedError extends FactsweepError {
  readonly field: string;
  readonly path: string;
  readonly roots: readonly string[];
  constructor(message: string, field: string, path: string, roots: readonly string[]) {
    super(message);
    this.name = "PathDeniedError";
    this.field = field;
    this.path = path;
    this.roots = roots;
  }
}

/** A confined path that exists in a root but is missing or of the wrong kind (folder, FIFO, …). */
export class PathUnusableError extends FactsweepError {
  readonly field: string;
  readonly path: string;
  constructor(message: string, field: string, path: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "PathUnusableError";
    this.field = field;
    this.path = path;
  }
}

/** Real path of `p`; for a path that does not exist, the real path of its deepest existing folder joined with the rest. */
export function realPathLoose(p: string): { real: string; exists: boolean } {
  const abs = resolve(p);
  try {
    return { real: realpathSync(abs), exists: true };
  } catch {
    const parent = dirname(abs);
    if (parent === abs) return { real: abs, exists: false };
    return { real: join(realPathLoose(parent).real, basename(abs)), exists: false };
  }
}

/** Roots as real paths (a missing root keeps its resolved path, and matches nothing that exists). */
export function realRoots(roots: readonly string[]): string[] {
  return roots.map((r) => realPathLoose(r).real);
}

/** Whether real path `p` is `root` or inside it (`root` real too). */
export const isUnder = (p: string, root: string): boolean => p === root || p.startsWith(root.endsWith(sep) ? root : root + sep);

/** How the roots of a kind of path are named in messages. */
export interface RootsInfo {
  /** Real paths of the roots. */
  roots: readonly string[];
  /** "model roots" / "data roots". */
  name: string;
  /** The coordinator flag that adds one: "--model-root". */
  flag: string;
}

/**
 * Confines `p` (spec field `field`) to `roots`: the real path of `p` (symlinks resolved) must lie
 * in the real path of a root. Then it must be `want` (checked with stat; nothing is opened).
 * Returns the real path. A path outside every root gets the same message whether it exists or not.
 * @throws PathDeniedError outside every root; PathUnusableError missing or of another kind.
 */
export function confinePath(p: string, field: string, want: "file" | "folder" | "file or folder", r: RootsInfo): string {
  if (r.roots.length === 0) {
    throw new PathDeniedError(`${field}: path ${p} refused: no ${r.name} are configured; start the coordinator with ${r.flag} <dir>`, field, p, r.roots);
  }
  const { real, exists } = realPathLoose(p);
  if (!r.roots.some((root) => isUnder(real, root))) {
    throw new PathDeniedError(
      `${field}: path ${p} is outside the ${r.name} (${r.roots.join(", ")}); move it under one of them or add a ${r.flag}`,
      field,
      p,
      r.roots,
    );
  }
  if (!exists) throw new PathUnusableError(`${field}: ${p} does not exist`, field, p);
  let st: Stats;
  try {
    st = statSync(real);
  } catch (err) {
    throw new PathUnusableError(`${field}: ${p} cannot be read (${errCode(err)})`, field, p, { cause: err });
  }
  const ok = want === "file" ? st.isFile() : want === "folder" ? st.isDirectory() : st.isFile() || st.isDirectory();
  if (!ok) throw new PathUnusableError(`${field}: ${p} is ${fileKind(st)}; expected ${want === "file" ? "a regular file" : `a ${want}`}`, field, p);
  return real;
}

/** The files `layers.from_trace` reads from a trace's run folder (kinds/edit-trace.ts). */
export const TRACE_RUN_FILES = ["sweep.json", "run.json", "results.jsonl"] as const;

/** What a spec's paths are confined to. */
export interface SpecRoots {
  model: RootsInfo;
  data: RootsInfo;
}

/** The spec fields that name files, as {@link confineSpecPaths} sees them. */
export interface SpecPaths {
  kind: string;
  model: { path: string; tokenizer?: string | undefined };
  dataset: { known?: string | undefined; relations?: string | string[] | undefined };
  layers?: unknown;
  [section: string]: unknown;
}

/**
 * Confines every path of a spec and replaces it with its real path: `model.path` (a folder) and
 * `model.tokenizer` to the model roots, then {@link confineDataPaths}.
 * @throws PathDeniedError, PathUnusableError naming the field.
 */
export function confineSpecPaths<S extends SpecPaths>(spec: S, roots: SpecRoots): S {
  spec.model.path = confinePath(spec.model.path, "model.path", "folder", roots.model);
  if (spec.model.tokenizer) spec.model.tokenizer = confinePath(spec.model.tokenizer, "model.tokenizer", "file", roots.model);
  return confineDataPaths(spec, roots.data);
}

/**
 * Confines a spec's data paths to the data roots and replaces each with its real path:
 * `dataset.known`, `dataset.relations` (files, folders, and the `.json` files in those folders) and
 * the kind section's `corpus` file, and a trace run folder of `layers.from_trace` (with the files read from it).
 * @throws PathDeniedError, PathUnusableError naming the field.
 */
export function confineDataPaths<S extends SpecPaths>(spec: S, data: RootsInfo): S {
  const ds = spec.dataset;
  if (ds.known) ds.known = confinePath(ds.known, "dataset.known", "file", data);
  if (ds.relations !== undefined) {
    const list = typeof ds.relations === "string" ? [ds.relations] : ds.relations;
    ds.relations = list.map((p, i) => {
      const field = `dataset.relations[${i}]`;
      const real = confinePath(p, field, "file or folder", data);
      // A folder's files are read one by one: each (a link may point elsewhere) is confined too.
      if (statSync(real).isDirectory()) {
        for (const f of readdirSync(real).filter((n) => n.toLowerCase().endsWith(".json"))) confinePath(join(real, f), field, "file", data);
      }
      return real;
    });
  }
  const section = spec[spec.kind] as { corpus?: unknown } | undefined;
  if (section && typeof section.corpus === "string" && section.corpus !== "dataset") {
    section.corpus = confinePath(section.corpus, `${spec.kind}.corpus`, "file", data);
  }
  const layers = spec.layers as { from_trace?: unknown } | undefined;
  if (layers && typeof layers === "object" && typeof layers.from_trace === "string" && layers.from_trace.includes("/")) {
    const real = confinePath(layers.from_trace, "layers.from_trace", "folder", data);
    for (const f of TRACE_RUN_FILES) if (existsSync(join(real, f))) confinePath(join(real, f), "layers.from_trace", "file", data);
    layers.from_trace = real;
  }
  return spec;
}
