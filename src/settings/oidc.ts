import { ACTIONS, type Action } from "../oci/access";
import { json, namePattern, SettingsError, tagPattern } from "./values";

/**
 * OIDC federation (docs/configuration.md, "OIDC federation"): `OIDC_TRUST` is a JSON list
 * of trust rules, each an access rule whose subject is an OpenID Connect issuer instead
 * of users. A client logs in as `oidc` with an ID token of that issuer as its password;
 * the token's `aud` must hold the rule's `audience` and each of its `claims` must match
 * (`*` matching any run of characters); `repositories` and `actions` mean what they mean
 * in AUTH_ACCESS. An `http:` issuer is accepted on loopback only (tests).
 */
export interface OidcTrustRule {
  /** The issuer exactly as its tokens' `iss` names it (no trailing slash added or removed). */
  issuer: string;
  audience: string;
  /** claim name → pattern its value (a string, or a number or boolean as text) must match. */
  claims: Map<string, RegExp>;
  repositories: RegExp[];
  actions: Action[];
}

const NAME = "OIDC_TRUST";
const LOOPBACK = new Set(["127.0.0.1", "localhost", "[::1]"]);

function strings(value: unknown, where: string, required: boolean): string[] {
  if (value === undefined && !required) return [];
  if (!Array.isArray(value) || value.length === 0 || !value.every((item) => typeof item === "string" && item !== "")) {
    throw new SettingsError(`${NAME}${where} must be a non-empty list of strings`);
  }
  return value as string[];
}

function issuerOf(value: unknown, where: string): string {
  if (typeof value !== "string" || value === "") throw new SettingsError(`${NAME}${where}.issuer must be a URL`);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new SettingsError(`${NAME}${where}.issuer: "${value.slice(0, 80)}" is not a URL`);
  }
  if (url.protocol === "https:") return value;
  if (url.protocol === "http:" && LOOPBACK.has(url.hostname)) return value;
  throw new SettingsError(`${NAME}${where}.issuer: "${value.slice(0, 80)}" must be https: (http: only on loopback)`);
}

/** Parses OIDC_TRUST; unset or blank: no issuer is trusted. */
export function parseOidcTrust(text: string | undefined): OidcTrustRule[] {
  if (text === undefined || text.trim() === "") return [];
  const parsed = json(NAME, text);
  if (!Array.isArray(parsed)) throw new SettingsError(`${NAME} must be a JSON list of trust rules`);
  return parsed.map((rule: unknown, index) => {
    const where = `[${index}]`;
    if (typeof rule !== "object" || rule === null || Array.isArray(rule)) {
      throw new SettingsError(`${NAME}${where} must be an object`);
    }
    const record = rule as Record<string, unknown>;
    const known = ["issuer", "audience", "claims", "repositories", "actions"];
    const extra = Object.keys(record).filter((key) => !known.includes(key));
    if (extra.length > 0) throw new SettingsError(`${NAME}${where}: unknown fields ${extra.join(", ")}`);
    if (typeof record.audience !== "string" || record.audience === "") {
      throw new SettingsError(`${NAME}${where}.audience must be a non-empty string`);
    }
    const claims = new Map<string, RegExp>();
    if (record.claims !== undefined) {
      if (typeof record.claims !== "object" || record.claims === null || Array.isArray(record.claims)) {
        throw new SettingsError(`${NAME}${where}.claims must be an object of claim name to pattern`);
      }
      for (const [claim, pattern] of Object.entries(record.claims as Record<string, unknown>)) {
        if (typeof pattern !== "string") throw new SettingsError(`${NAME}${where}.claims.${claim} must be a string`);
        claims.set(claim, tagPattern(pattern));
      }
    }
    const actions = strings(record.actions, `${where}.actions`, true);
    const unknown = actions.filter((action) => !ACTIONS.includes(action as Action));
    if (unknown.length > 0) throw new SettingsError(`${NAME}${where}: unknown actions ${unknown.join(", ")}`);
    return {
      issuer: issuerOf(record.issuer, where),
      audience: record.audience,
      claims,
      repositories: strings(record.repositories, `${where}.repositories`, true).map(namePattern),
      actions: actions as Action[],
    };
  });
}
