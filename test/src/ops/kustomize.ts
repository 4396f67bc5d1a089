/**
 * Renders the project's kustomizations without a kustomize binary (CI's Debian has none that
 * matches kustomize v5), and validates Kubernetes objects against the OpenAPI schemas shipped by
 * the `kubernetes-models` npm package (offline). The renderer knows the subset of kustomize the
 * project uses — resources, namespace, labels, images, secret/configMap generators with
 * disableNameSuffixHash, JSON 6902 patches — and refuses anything else by name, so a new field in
 * a kustomization fails loudly here instead of being ignored. Where `kubectl kustomize` exists the
 * tests compare both renderings.
 */
import { readFileSync, readdirSync, statSync, existsSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { parseAllDocuments, parse } from "yaml";

/** A Kubernetes object as plain JSON. */
export type K8sObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; [k: string]: unknown };
  [k: string]: unknown;
};

/** A kustomization uses a field this renderer does not implement, or is malformed. */
export class KustomizeRenderError extends Error {
  override name = "KustomizeRenderError";
  constructor(
    readonly kustomization: string,
    message: string,
  ) {
    super(`${kustomization}: ${message}`);
  }
}

const SUPPORTED = new Set(["apiVersion", "kind", "namespace", "labels", "resources", "images", "secretGenerator", "configMapGenerator", "patches"]);

/** Renders the kustomization in `dir` to its list of objects. */
export function renderKustomization(dir: string): K8sObject[] {
  const file = join(dir, "kustomization.yaml");
  const k = parse(readFileSync(file, "utf8")) as Record<string, any>;
  for (const key of Object.keys(k)) {
    if (!SUPPORTED.has(key))
      throw new KustomizeRenderError(file, `field \`${key}\` is not supported by the test renderer (supported: ${[...SUPPORTED].join(", ")})`);
  }
  let objects: K8sObject[] = [];
  for (const r of (k.resources ?? []) as string[]) {
    const path = resolve(dir, r);
    if (!existsSync(path)) throw new KustomizeRenderError(file, `resource \`${r}\` does not exist (looked for ${path})`);
    if (statSync(path).isDirectory()) objects.push(...renderKustomization(path));
    else objects.push(...readObjects(path));
  }
  for (const g of (k.configMapGenerator ?? []) as any[]) objects.push(generate(file, dir, "ConfigMap", g));
  for (const g of (k.secretGenerator ?? []) as any[]) objects.push(generate(file, dir, "Secret", g));
  if (k.namespace) {
    for (const o of objects) if (o.kind !== "Namespace") o.metadata.namespace = k.namespace;
  }
  for (const l of (k.labels ?? []) as any[]) {
    if (l.includeSelectors || l.includeTemplates)
      throw new KustomizeRenderError(file, "labels with includeSelectors/includeTemplates are not supported by the test renderer");
    for (const o of objects) o.metadata.labels = { ...(o.metadata.labels ?? {}), ...l.pairs };
  }
  for (const p of (k.patches ?? []) as any[]) {
    if (!p.target || typeof p.patch !== "string") throw new KustomizeRenderError(file, "only inline JSON 6902 patches with a target are supported");
    const ops = parse(p.patch) as JsonPatchOp[];
    const targets = objects.filter((o) => (!p.target.kind || o.kind === p.target.kind) && (!p.target.name || o.metadata.name === p.target.name));
    if (targets.length === 0) throw new KustomizeRenderError(file, `patch target ${JSON.stringify(p.target)} matches no object`);
    for (const t of targets) applyJsonPatch(t, ops, `${file} patch on ${t.kind}/${t.metadata.name}`);
  }
  for (const img of (k.images ?? []) as any[]) objects = objects.map((o) => setImage(o, img));
  return objects;
}

function readObjects(path: string): K8sObject[] {
  return parseAllDocuments(readFileSync(path, "utf8"))
    .map((d) => d.toJS() as K8sObject)
    .filter((o) => o != null);
}

function generate(file: string, dir: string, kind: "ConfigMap" | "Secret", g: any): K8sObject {
  if (!g.options?.disableNameSuffixHash)
    throw new KustomizeRenderError(
      file,
      `${kind} generator \`${g.name}\` needs options.disableNameSuffixHash: true for the test renderer (it does not compute kustomize's name hash)`,
    );
  const data: Record<string, string> = {};
  for (const lit of (g.literals ?? []) as string[]) {
    const i = lit.indexOf("=");
    data[lit.slice(0, i)] = lit.slice(i + 1);
  }
  for (const env of (g.envs ?? []) as string[]) {
    for (const line of readFileSync(resolve(dir, env), "utf8").split("\n")) {
      const t = line.trim();
      if (!t || t.startsWith("#")) continue;
      const i = t.indexOf("=");
      data[t.slice(0, i)] = t.slice(i + 1);
    }
  }
  for (const f of (g.files ?? []) as string[]) {
    const [key, path] = f.includes("=") ? (f.split("=", 2) as [string, string]) : [basename(f), f];
    data[key] = readFileSync(resolve(dir, path), "utf8");
  }
  const o: K8sObject = { apiVersion: "v1", kind, metadata: { name: g.name } };
  if (g.namespace) o.metadata.namespace = g.namespace;
  if (kind === "Secret") {
    o.type = g.type ?? "Opaque";
    o.data = Object.fromEntries(Object.entries(data).map(([key, v]) => [key, Buffer.from(v).toString("base64")]));
  } else o.data = data;
  return o;
}

interface JsonPatchOp {
  op: "add" | "replace" | "remove" | "test";
  path: string;
  value?: unknown;
}

/** RFC 6902 add/replace/remove/test, in place; a failed `test` throws (the patch would misapply). */
export function applyJsonPatch(target: unknown, ops: JsonPatchOp[], where: string): void {
  for (const { op, path, value } of ops) {
    const keys = path
      .split("/")
      .slice(1)
      .map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
    const last = keys.pop();
    if (last === undefined) throw new Error(`${where}: empty path`);
    let parent: any = target;
    for (const key of keys) {
      parent = parent?.[Array.isArray(parent) ? Number(key) : key];
      if (parent === undefined) throw new Error(`${where}: ${op} ${path}: ${key} does not exist`);
    }
    if (op === "test") {
      const actual = parent?.[Array.isArray(parent) ? Number(last) : last];
      if (JSON.stringify(actual) !== JSON.stringify(value))
        throw new Error(`${where}: test ${path}: expected ${JSON.stringify(value)}, found ${JSON.stringify(actual)}`);
      continue;
    }
    if (Array.isArray(parent)) {
      const i = last === "-" ? parent.length : Number(last);
      if (op === "add") parent.splice(i, 0, value);
      else if (op === "replace") parent[i] = value;
      else parent.splice(i, 1);
    } else {
      if (op !== "add" && !(last in parent)) throw new Error(`${where}: ${op} ${path}: ${last} does not exist`);
      if (op === "remove") delete parent[last];
      else parent[last] = value;
    }
  }
}

function setImage(o: K8sObject, img: { name: string; newName?: string; newTag?: string }): K8sObject {
  const podSpec = (o as any).spec?.template?.spec;
  for (const c of [...(podSpec?.containers ?? []), ...(podSpec?.initContainers ?? [])]) {
    const [name, tag] = splitImage(c.image);
    if (name !== img.name) continue;
    c.image = `${img.newName ?? name}${img.newTag ? `:${img.newTag}` : tag ? `:${tag}` : ""}`;
  }
  return o;
}

function splitImage(image: string): [string, string | undefined] {
  const slash = image.lastIndexOf("/");
  const colon = image.lastIndexOf(":");
  return colon > slash ? [image.slice(0, colon), image.slice(colon + 1)] : [image, undefined];
}

/** Parses the multi-document YAML that `kubectl kustomize` prints. */
export function parseRendered(text: string): K8sObject[] {
  return parseAllDocuments(text)
    .map((d) => d.toJS() as K8sObject)
    .filter((o) => o != null);
}

/** `kind/namespace/name`, the identity of an object in a rendering. */
export function objectKey(o: K8sObject): string {
  return `${o.kind}/${o.metadata.namespace ?? ""}/${o.metadata.name}`;
}

/** A schema violation of one object. */
export interface SchemaProblem {
  object: string;
  message: string;
}

/**
 * Validates each object against the schema of its apiVersion/kind from `kubernetes-models`.
 * An apiVersion/kind the package does not know is a problem too (a typo or a CRD).
 */
export async function validateObjects(objects: K8sObject[]): Promise<SchemaProblem[]> {
  const problems: SchemaProblem[] = [];
  for (const o of objects) {
    const id = objectKey(o);
    const module = `kubernetes-models/${o.apiVersion}`;
    let Model: (new (data: unknown) => { validate(): void }) | undefined;
    try {
      Model = ((await import(module)) as Record<string, any>)[o.kind];
    } catch {
      Model = undefined;
    }
    if (!Model) {
      problems.push({ object: id, message: `unknown apiVersion/kind ${o.apiVersion}/${o.kind} (no model in kubernetes-models)` });
      continue;
    }
    try {
      new Model(o).validate();
    } catch (e) {
      problems.push({ object: id, message: (e as Error).message });
    }
  }
  return problems;
}

/** The kustomization directories of the project: the base and every overlay. */
export function kustomizations(kubernetesDir: string): string[] {
  const overlays = join(kubernetesDir, "overlays");
  const dirs = [join(kubernetesDir, "base")];
  for (const name of readdirSync(overlays).sort()) if (existsSync(join(overlays, name, "kustomization.yaml"))) dirs.push(join(overlays, name));
  return dirs;
}
