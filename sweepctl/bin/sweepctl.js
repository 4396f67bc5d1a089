#!/usr/bin/env node
// The `sweepctl` command of package.json "bin". A committed file, not dist/cli.js itself: npm links a
// workspace's bin at `npm ci` time, before the TypeScript build exists, and skips a missing target, so
// `npx sweepctl` would find nothing after a fresh `npm ci && npm run build`.
import { existsSync } from "node:fs";

const cli = new URL("../dist/cli.js", import.meta.url);
if (!existsSync(cli)) {
  console.error("sweepctl: not built yet; run `npm run build` (or `bash scripts/setup.sh`) in the factsweep repository");
  process.exit(2);
}
await import(cli.href);
