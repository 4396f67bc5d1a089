#!/usr/bin/env node
// The `factsweep-agent` command of package.json "bin". A committed file, not dist/main.js itself: npm links a
// workspace's bin at `npm ci` time, before the TypeScript build exists, and skips a missing target
// (the same shim as sweepctl/bin/sweepctl.js).
import { existsSync } from "node:fs";

const main = new URL("../dist/main.js", import.meta.url);
if (!existsSync(main)) {
  console.error("factsweep-agent: not built yet; run `npm run build` (or `bash scripts/setup.sh`) in the factsweep repository");
  process.exit(2);
}
await import(main.href);
