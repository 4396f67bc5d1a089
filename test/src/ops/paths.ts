/** Paths of the repository's operations files, resolved from this compiled module (test/dist/ops). */
import { fileURLToPath } from "node:url";
import { join, resolve } from "node:path";

/** The repository root. */
export const repoRoot = resolve(fileURLToPath(new URL(".", import.meta.url)), "..", "..", "..");
export const dashboardsDir = join(repoRoot, "dashboards");
export const deployDir = join(repoRoot, "deploy");
export const prometheusDir = join(dashboardsDir, "prometheus");
export const grafanaDashboardsDir = join(dashboardsDir, "grafana", "dashboards");
export const kubernetesDir = join(deployDir, "kubernetes");
