/** The spec's `layers` resolved against a model's depth (shared by every kind). */
import { describeValue } from "@factsweep/shared";
import { SpecError } from "./errors.js";

/** A list of layers: "all", a list, or a range "start:end[:step]". */
export type LayerList = "all" | number[] | string;
/** The `layers` field of a spec: a {@link LayerList}, or (kind edit) the layers of a trace's peaks (kinds/edit-trace.ts). */
export type LayersSpec = LayerList | { from_trace: string; window?: number; sites?: Record<string, string>; edit_layers?: LayerList };

/** Whether a spec's layers come from a trace sweep (`layers: { from_trace }`). */
export const isFromTrace = (l: LayersSpec): l is Extract<LayersSpec, { from_trace: string }> => typeof l === "object" && !Array.isArray(l);

/**
 * Resolve the spec's `layers` (or another layer list, at `path`) against a model with `numLayers` layers.
 * @throws SpecError (path `layers`) for a layer out of range or an empty range, or for
 *   `{ from_trace }` (only kind edit takes it, and resolves it with the trace: kinds/edit-trace.ts).
 */
export function resolveLayers(layersSpec: LayersSpec, numLayers: number, path = "layers"): number[] {
  if (isFromTrace(layersSpec)) {
    throw new SpecError(`${path}: { from_trace } chooses the layers of kind edit only; give this sweep "all", a list or a range of layers`, {
      path: `${path}.from_trace`,
      expected: '"all", a list of layers or a range',
      received: layersSpec,
    });
  }
  if (layersSpec === "all") return Array.from({ length: numLayers }, (_, i) => i);
  let out: number[];
  if (Array.isArray(layersSpec)) {
    out = [...new Set(layersSpec)].sort((a, b) => a - b);
  } else {
    const [a, b, c] = layersSpec.split(":").map((x) => x.trim());
    const start = a ? Number(a) : 0;
    const end = b ? Number(b) : numLayers;
    const step = c ? Number(c) : 1;
    if (step < 1) throw new SpecError(`${path}: expected a step >= 1, got ${describeValue(layersSpec)}`, { path, expected: "step >= 1", received: layersSpec });
    out = [];
    for (let l = start; l < Math.min(end, numLayers); l += step) out.push(l);
    if (end > numLayers) {
      throw new SpecError(
        `${path}: range end ${end} is beyond the model's ${numLayers} layers (valid 0..${numLayers - 1}, end exclusive), got ${describeValue(layersSpec)}`,
        {
          path,
          expected: `a range within 0:${numLayers}`,
          received: layersSpec,
        },
      );
    }
  }
  const bad = out.find((l) => l >= numLayers);
  if (bad !== undefined) {
    throw new SpecError(`${path}: expected layer numbers in 0..${numLayers - 1} (the model has ${numLayers} layers), got ${bad}`, {
      path,
      expected: `0..${numLayers - 1}`,
      received: layersSpec,
    });
  }
  if (out.length === 0) {
    throw new SpecError(`${path}: the range selects no layer, got ${describeValue(layersSpec)}`, {
      path,
      expected: "a non-empty range",
      received: layersSpec,
    });
  }
  return out;
}
