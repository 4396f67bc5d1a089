/** The experiment kinds (knockout, sever, lre, edit): spec sections, planning, aggregation. */
export * from "./spec.js";
export * from "./plan.js";
export * from "./aggregate.js";
