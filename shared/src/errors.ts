/**
 * Typed errors of the shared library. Each sets `name`, keeps the `cause`, and carries the ids a
 * user needs to find the offending input (field path, file, prompt index, request id).
 */

/** Common base so callers can catch every factsweep shared error at once. */
export class FactsweepError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "FactsweepError";
  }
}

/** Describe a received value for an error message: `"abc" (string)`, `42 (number)`, `undefined`. */
export function describeValue(value: unknown): string {
  if (value === undefined) return "nothing (undefined)";
  if (value === null) return "null";
  let text: string;
  try {
    text = typeof value === "string" ? JSON.stringify(value) : (JSON.stringify(value) ?? String(value));
  } catch {
    text = String(value);
  }
  if (text.length > 120) text = `${text.slice(0, 117)}...`;
  const type = Array.isArray(value) ? "array" : typeof value;
  return `${text} (${type})`;
}
