/**
 * `node test/dist/ops/validate-kubernetes.js`: renders every kustomization under
 * deploy/kubernetes and validates each object against the Kubernetes schemas of
 * `kubernetes-models`; exits 1 listing every problem. deploy/validate.sh runs it.
 */
import { relative } from "node:path";
import { kustomizations, renderKustomization, validateObjects, objectKey } from "./kustomize.js";
import { kubernetesDir, repoRoot } from "./paths.js";

let failed = false;
for (const dir of kustomizations(kubernetesDir)) {
  const name = relative(repoRoot, dir);
  try {
    const objects = renderKustomization(dir);
    const problems = await validateObjects(objects);
    for (const p of problems) console.error(`${name}: ${p.object}: ${p.message}`);
    failed ||= problems.length > 0;
    console.log(`${name}: ${objects.length} objects${problems.length ? `, ${problems.length} invalid` : ", all valid"} (${objects.map(objectKey).join(", ")})`);
  } catch (e) {
    console.error(`${name}: ${(e as Error).message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
