import type { Context } from "hono";
import { createLocalJWKSet, decodeJwt, errors, jwtVerify, type JSONWebKeySet, type JWTPayload } from "jose";
import { recordLogin, type LoginVia } from "../audit/audit";
import { unavailable } from "../oci/errors";
import type { Action, Resource } from "../oci/access";
import type { OidcTrustRule } from "../settings/oidc";
import { settingsOf } from "../settings/settings";
import { clientAddressOf } from "./client-address";
import type { AuthEnv } from "./context";
import { limitedLogin } from "./logins";
import type { Policy } from "./policy";
import type { OidcClaims } from "./tokens";

/**
 * OIDC federation (docs/configuration.md, "OIDC federation"): a client logs in with the
 * user name `oidc` and an ID token of a trusted issuer (OIDC_TRUST: settings/oidc.ts) as
 * its password, as a CI job can without any stored secret. The token is verified with
 * `jose` against the keys the issuer publishes (its discovery document's `jwks_uri`):
 * signature (RS256 or ES256 only), `iss`, `aud`, `exp`, `nbf` and `iat`, with a small
 * clock skew. What it may do is the union of the rules whose issuer, audience and claims
 * match. Failed logins count toward the client address's failed-login limit (logins.ts).
 */

/** The user name an OIDC login presents, with the ID token as the password. */
export const OIDC_USER = "oidc";

/** Tunables, changed by the tests only. */
export const oidcHooks = {
  /** Least time between two fetches of an issuer's keys (an unknown key id refetches them). */
  refreshCooldownMs: 10_000,
  /** How long an issuer's keys are used before they are fetched again anyway. */
  maxAgeMs: 10 * 60_000,
  /** Each fetch of a discovery document or key set. */
  fetchTimeoutMs: 5_000,
};

/** Clock skew allowed on `exp`, `nbf` and `iat`. */
const SKEW_SECONDS = 30;
const ALGORITHMS = ["RS256", "ES256"];
/** Largest discovery document or key set read. */
const MAX_DOCUMENT_BYTES = 256 * 1024;

interface IssuerKeys {
  keys: ReturnType<typeof createLocalJWKSet>;
  fetchedAt: number;
}

/** The keys of each issuer, per isolate. */
const issuerKeys = new Map<string, IssuerKeys>();
/** Fetches under way, so concurrent logins share one. */
const fetching = new Map<string, Promise<IssuerKeys>>();

/** Forgets every issuer's keys (tests). */
export function forgetIssuerKeys(): void {
  issuerKeys.clear();
  fetching.clear();
}

async function fetchJson(url: string, what: string): Promise<unknown> {
  let response: Response;
  try {
    response = await fetch(url, {
      headers: { Accept: "application/json" },
      redirect: "follow",
      signal: AbortSignal.timeout(oidcHooks.fetchTimeoutMs),
    });
  } catch (error) {
    throw unavailable(`the OIDC issuer's ${what} could not be fetched; retry`, { url, cause: String(error) });
  }
  const text = response.ok ? await response.text() : "";
  if (!response.ok || text.length > MAX_DOCUMENT_BYTES) {
    throw unavailable(`the OIDC issuer's ${what} could not be fetched; retry`, { url, status: response.status });
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw unavailable(`the OIDC issuer's ${what} is not JSON`, { url });
  }
}

/** The discovery document, then the key set it names. */
async function loadKeys(issuer: string): Promise<IssuerKeys> {
  const discovery = await fetchJson(`${issuer.replace(/\/+$/, "")}/.well-known/openid-configuration`, "discovery");
  const record = (typeof discovery === "object" && discovery !== null ? discovery : {}) as Record<string, unknown>;
  if (record.issuer !== issuer || typeof record.jwks_uri !== "string") {
    throw unavailable("the OIDC issuer's discovery document names another issuer or no jwks_uri", { issuer });
  }
  const jwksUri = new URL(record.jwks_uri);
  if (jwksUri.protocol !== new URL(issuer).protocol) {
    throw unavailable("the OIDC issuer's jwks_uri is not on the issuer's scheme", { issuer });
  }
  const jwks = await fetchJson(jwksUri.href, "key set");
  if (typeof jwks !== "object" || jwks === null || !Array.isArray((jwks as JSONWebKeySet).keys)) {
    throw unavailable("the OIDC issuer's key set is not a JWKS", { issuer });
  }
  return { keys: createLocalJWKSet(jwks as JSONWebKeySet), fetchedAt: Date.now() };
}

/** The issuer's keys: cached, fetched when missing, old, or (`refresh`) asked to and not fetched lately. */
async function keysOf(issuer: string, refresh = false): Promise<IssuerKeys> {
  const known = issuerKeys.get(issuer);
  const age = known ? Date.now() - known.fetchedAt : Infinity;
  if (known && age < oidcHooks.maxAgeMs && (!refresh || age < oidcHooks.refreshCooldownMs)) return known;
  let pending = fetching.get(issuer);
  if (!pending) {
    pending = loadKeys(issuer).finally(() => fetching.delete(issuer));
    fetching.set(issuer, pending);
  }
  const loaded = await pending;
  issuerKeys.set(issuer, loaded);
  return loaded;
}

function claimText(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  return undefined;
}

/** The rules of these claims: issuer, audience and every claim pattern matching. */
export function matchingRules(rules: OidcTrustRule[], oidc: OidcClaims): OidcTrustRule[] {
  return rules.filter(
    (rule) =>
      rule.issuer === oidc.iss &&
      oidc.aud.includes(rule.audience) &&
      [...rule.claims].every(([claim, pattern]) => {
        const value = claim === "sub" ? oidc.sub : oidc.claims[claim];
        return value !== undefined && pattern.test(value);
      }),
  );
}

/** What matching rules allow on a resource (the catalog: nothing). */
export function oidcAllowed(policy: Policy, rules: OidcTrustRule[], resource: Resource): Set<Action> {
  const allowed = new Set<Action>();
  if (resource.type !== "repository") return allowed;
  const subject = policy.subjectName ? policy.subjectName(resource.name) : resource.name;
  for (const rule of rules) {
    if (rule.repositories.some((pattern) => pattern.test(subject))) {
      for (const action of rule.actions) allowed.add(action);
    }
  }
  return allowed;
}

/** A verified ID token: what it says, and when it expires (seconds). */
export interface OidcLogin {
  oidc: OidcClaims;
  exp: number;
  rules: OidcTrustRule[];
}

/**
 * The claims of a valid ID token some rule matches, or null. An issuer that cannot be
 * reached is a 503 (RegistryError), not a failed login.
 */
export async function verifyIdToken(rules: OidcTrustRule[], token: string): Promise<OidcLogin | null> {
  let unverified: JWTPayload;
  try {
    unverified = decodeJwt(token);
  } catch {
    return null;
  }
  const issuer = unverified.iss;
  const trusted = rules.filter((rule) => rule.issuer === issuer);
  if (issuer === undefined || trusted.length === 0) return null;
  const audiences = [...new Set(trusted.map((rule) => rule.audience))];
  const verify = async (keys: IssuerKeys) =>
    jwtVerify(token, keys.keys, {
      issuer,
      audience: audiences,
      algorithms: ALGORITHMS,
      clockTolerance: SKEW_SECONDS,
      requiredClaims: ["exp", "iat", "sub"],
    });
  let payload: JWTPayload;
  try {
    try {
      payload = (await verify(await keysOf(issuer))).payload;
    } catch (error) {
      // A key the cached set does not have: the issuer may have rotated its keys.
      if (!(error instanceof errors.JWKSNoMatchingKey)) throw error;
      payload = (await verify(await keysOf(issuer, true))).payload;
    }
  } catch (error) {
    if (error instanceof errors.JOSEError) return null;
    throw error;
  }
  const now = Math.floor(Date.now() / 1000);
  if (typeof payload.iat !== "number" || payload.iat > now + SKEW_SECONDS) return null;
  if (typeof payload.exp !== "number" || typeof payload.sub !== "string" || payload.sub === "") return null;
  const claims: Record<string, string> = {};
  for (const rule of trusted) {
    for (const claim of rule.claims.keys()) {
      const value = claimText(payload[claim]);
      if (value !== undefined) claims[claim] = value;
    }
  }
  const aud = typeof payload.aud === "string" ? [payload.aud] : (payload.aud ?? []);
  const oidc: OidcClaims = {
    iss: issuer,
    sub: payload.sub,
    aud: aud.filter((item) => audiences.includes(item)),
    claims,
  };
  const matched = matchingRules(rules, oidc);
  if (matched.length === 0) return null;
  return { oidc, exp: payload.exp, rules: matched };
}

/** The actor name of an OIDC identity: its issuer and subject. */
export function oidcActorName(oidc: { iss: string; sub: string }): string {
  return `${oidc.iss}#${oidc.sub}`;
}

const VERIFIED_MAX = 1000;
/** ID tokens verified in this isolate, until they expire: Basic `oidc:<token>` comes with every request. */
const verified = new Map<string, OidcLogin>();

/** Whether `user` is the OIDC login (OIDC_TRUST set). */
export function isOidcLogin(c: Context<AuthEnv>, user: string): boolean {
  return user === OIDC_USER && settingsOf(c.env).oidc.length > 0;
}

/**
 * An OIDC login (user `oidc`, ID token `token`): the verified login, or null when the
 * token is invalid or no rule matches; under the client address's failed-login limits
 * (429 when locked), recorded in the audit log as password logins are.
 */
export async function oidcLogin(c: Context<AuthEnv>, token: string, via: LoginVia): Promise<OidcLogin | null> {
  const rules = settingsOf(c.env).oidc;
  const record = (login: OidcLogin | null, reason?: "password" | "locked") => {
    if (login && via === "basic") return;
    recordLogin(c.env, {
      user: login ? oidcActorName(login.oidc) : OIDC_USER,
      kind: "oidc",
      success: login !== null,
      via,
      ...(reason ? { reason } : {}),
      address: clientAddressOf(c.req.raw, c.env),
      userAgent: c.req.header("User-Agent"),
      requestId: c.req.header("CF-Ray"),
    });
  };
  const now = Math.floor(Date.now() / 1000);
  const remembered = verified.get(token);
  if (remembered && remembered.exp + SKEW_SECONDS < now) verified.delete(token);
  const login = await limitedLogin(
    c,
    async () => {
      const known = verified.get(token);
      if (known) return known;
      return verifyIdToken(rules, token);
    },
    (result) => verified.get(token) === result,
    (result, reason) => record(result, reason),
  );
  if (login && !verified.has(token)) {
    if (verified.size >= VERIFIED_MAX) verified.clear();
    verified.set(token, login);
  }
  return login;
}
