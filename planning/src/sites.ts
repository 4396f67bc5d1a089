/**
 * Site names of the design vocabulary and their proto enum values (proto/engine.proto `Site`).
 * Specs, CSV exports and metrics use the names; the wire uses the enum.
 */
import { engine } from "@factsweep/proto";

/** Every site name, in the order of the proto enum. */
export const SITE_NAMES = ["embed", "residual", "mixer", "ssm", "gate", "conv", "in_ssm", "attn", "mlp"] as const;
/** A site name of the design vocabulary. */
export type SiteName = (typeof SITE_NAMES)[number];

const TO_ENUM: Record<SiteName, engine.Site> = {
  embed: engine.Site.SITE_EMBED,
  residual: engine.Site.SITE_RESIDUAL,
  mixer: engine.Site.SITE_MIXER,
  ssm: engine.Site.SITE_SSM,
  gate: engine.Site.SITE_GATE,
  conv: engine.Site.SITE_CONV,
  in_ssm: engine.Site.SITE_IN_SSM,
  attn: engine.Site.SITE_ATTN,
  mlp: engine.Site.SITE_MLP,
};

/** Model types (config.json `model_type`) the engine implements, with the sites each one has. */
export const SITES_BY_MODEL_TYPE = {
  mamba: ["embed", "residual", "mixer", "ssm", "gate", "conv", "in_ssm"],
  mamba2: ["embed", "residual", "mixer", "ssm", "gate", "conv", "in_ssm"],
  gpt_neox: ["embed", "residual", "attn", "mlp"],
} as const satisfies Record<string, readonly SiteName[]>;
/**
 * Sites that have per-head restores, by model type: a grid entry's `heads` and a cell's `head`
 * (engine.Cell.head). Mamba-2's `ssm` is the scan output y of every head, so head k is its
 * head_dim channels k·P..(k+1)·P. Mamba (one SSM over all channels) has no heads; GPT-NeoX's
 * attention heads are not a site of the engine (it restores attention after the dense).
 */
export const HEAD_SITES_BY_MODEL_TYPE = {
  mamba: [],
  mamba2: ["ssm"],
  gpt_neox: [],
} as const satisfies Record<keyof typeof SITES_BY_MODEL_TYPE, readonly SiteName[]>;

/**
 * The name a per-head site is aggregated and reported under: `ssm.h3` for head 3 of `ssm` (the
 * engine's cell site name), the plain site name for a whole site. Heatmaps, summaries and the
 * report list sites by this label; result rows keep `site` and a separate `head`.
 */
export type SiteLabel = SiteName | `${SiteName}.h${number}`;

/** `("ssm", 3)` → `"ssm.h3"`; `("ssm", undefined)` → `"ssm"`. */
export function siteLabel(site: SiteName, head?: number): SiteLabel {
  return head === undefined ? site : `${site}.h${head}`;
}

/** `"ssm.h3"` → `{ site: "ssm", head: 3 }`; `"ssm"` → `{ site: "ssm" }`; undefined for anything else. */
export function parseSiteLabel(label: string): { site: SiteName; head?: number } | undefined {
  const m = /^([a-z_]+)(?:\.h(\d{1,6}))?$/.exec(label);
  if (!m || !isSiteName(m[1]!)) return undefined;
  return m[2] === undefined ? { site: m[1] } : { site: m[1], head: Number(m[2]) };
}

/** A supported `model_type`. */
export type ModelType = keyof typeof SITES_BY_MODEL_TYPE;
/** Supported model types, for error messages and validation. */
export const MODEL_TYPES = Object.keys(SITES_BY_MODEL_TYPE) as ModelType[];

/** `"residual"` → `engine.Site.SITE_RESIDUAL`. */
export function siteToEnum(name: SiteName): engine.Site {
  return TO_ENUM[name];
}

/** `engine.Site.SITE_RESIDUAL` → `"residual"`; throws on SITE_UNSPECIFIED or an unknown number. */
export function siteFromEnum(site: engine.Site): SiteName {
  for (const name of SITE_NAMES) if (TO_ENUM[name] === site) return name;
  throw new RangeError(`Expected a site enum value (1..${SITE_NAMES.length}), got ${String(site)}`);
}

/** True if `name` is a site name of the vocabulary. */
export function isSiteName(name: string): name is SiteName {
  return (SITE_NAMES as readonly string[]).includes(name);
}
