/**
 * Test and development tooling: a real `nats-server -js` on a free loopback port (tests and
 * `sweepctl local`), where the shared data lives, and the named test doubles — a fake agent that
 * speaks the real agent protocol with a stand-in engine, and a scripted coordinator.
 * Product daemons never import this package.
 */
export * from "./errors.js";
export * from "./nats-server.js";
export * from "./fixtures.js";
export * from "./fake-agent.js";
export * from "./scripted-coordinator.js";
export * from "./clients.js";
export * from "./results-nats.js";
export * from "./harness.js";
