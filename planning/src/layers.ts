/** The spec's `layers` resolved against a model's depth (shared by every kind). */
import { describeValue } from "@factsweep/shared";
import { SpecError } from "./errors.js";

/** The `layers` field of a spec: "all", a list, or a range "start:end[:step]". */
export type LayersSpec = "all" | number[] | string;

/**
 * Resolve the spec's `layers` against a model with `numLayers` layers.
 * @throws SpecError (path `layers`) for a layer out of range or an empty range.
 */
export function resolveLayers(layersSpec: LayersSpec, numLayers: number): number[] {
  if (layersSpec === "all") return Array.from({ length: numLayers }, (_, i) => i);
  let out: number[];
  if (Array.isArray(layersSpec)) {
    out = [...new Set(layersSpec)].sort((a, b) => a - b);
  } else {
    const [a, b, c] = layersSpec.split(":").map((x) => x.trim());
    const start = a ? Number(a) : 0;
    const end = b ? Number(b) : numLayers;
    const step = c ? Number(c) : 1;
    if (step < 1)
      throw new SpecError(`layers: expected a step >= 1, got ${describeValue(layersSpec)}`, { path: "layers", expected: "step >= 1", received: layersSpec });
    out = [];
    for (let l = start; l < Math.min(end, numLayers); l += step) out.push(l);
    if (end > numLayers) {
      throw new SpecError(
        `layers: range end ${end} is beyond the model's ${numLayers} layers (valid 0..${numLayers - 1}, end exclusive), got ${describeValue(layersSpec)}`,
        {
          path: "layers",
          expected: `a range within 0:${numLayers}`,
          received: layersSpec,
        },
      );
    }
  }
  const bad = out.find((l) => l >= numLayers);
  if (bad !== undefined) {
    throw new SpecError(`layers: expected layer numbers in 0..${numLayers - 1} (the model has ${numLayers} layers), got ${bad}`, {
      path: "layers",
      expected: `0..${numLayers - 1}`,
      received: layersSpec,
    });
  }
  if (out.length === 0) {
    throw new SpecError(`layers: the range selects no layer, got ${describeValue(layersSpec)}`, {
      path: "layers",
      expected: "a non-empty range",
      received: layersSpec,
    });
  }
  return out;
}
