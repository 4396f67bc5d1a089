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
