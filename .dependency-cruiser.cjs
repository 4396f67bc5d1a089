/**
 * The import graph's rules (`npm run lint`): no loops anywhere, and the package layering of
 * DESIGN.md — proto → shared → planning → coordinator → sweepctl, shared → node-agent — with no
 * arrow running back up, the coordinator and the node agent never importing each other, and the
 * test tooling (`testing/`) out of every daemon.
 */
const pkg = (name) => `^(${name})/src/`;
const notTest = "(\\.test|/test-support)\\.ts$";
module.exports = {
  forbidden: [
    { name: "no-circular", severity: "error", comment: "an import loop", from: {}, to: { circular: true } },
    {
      name: "proto-is-the-bottom",
      severity: "error",
      from: { path: pkg("proto") },
      to: { path: "^(shared|planning|testing|coordinator|sweepctl|node-agent|test)/" },
    },
    {
      name: "shared-below-both-sides",
      severity: "error",
      from: { path: pkg("shared") },
      to: { path: "^(planning|testing|coordinator|sweepctl|node-agent|test)/" },
    },
    { name: "planning-below-the-coordinator", severity: "error", from: { path: pkg("planning") }, to: { path: "^(coordinator|sweepctl|node-agent|test)/" } },
    { name: "planning-products-without-test-tooling", severity: "error", from: { path: pkg("planning"), pathNot: notTest }, to: { path: "^testing/" } },
    { name: "coordinator-never-imports-the-agent", severity: "error", from: { path: pkg("coordinator") }, to: { path: "^(node-agent|sweepctl|test)/" } },
    { name: "coordinator-daemon-without-test-tooling", severity: "error", from: { path: pkg("coordinator"), pathNot: notTest }, to: { path: "^testing/" } },
    {
      name: "coordinator-daemon-without-plots",
      severity: "error",
      comment: "the report's plotting loads only in sweepctl",
      from: { path: pkg("coordinator") },
      to: { path: "node_modules/(vega|vega-lite)/" },
    },
    {
      name: "agent-never-imports-the-coordinator",
      severity: "error",
      from: { path: pkg("node-agent") },
      to: { path: "^(coordinator|sweepctl|planning|test)/" },
    },
    { name: "agent-daemon-without-test-tooling", severity: "error", from: { path: pkg("node-agent"), pathNot: notTest }, to: { path: "^testing/" } },
    {
      name: "testing-below-the-daemons",
      severity: "error",
      comment: "test doubles speak the protocol; they do not import the code they stand in for",
      from: { path: pkg("testing") },
      to: { path: "^(planning|coordinator|sweepctl|node-agent|test)/" },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    exclude: { path: "(^|/)dist/" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.depcruise.json" },
    enhancedResolveOptions: { exportsFields: ["exports"], conditionNames: ["import", "require", "node", "default", "types"] },
  },
};
