import { sign, verify } from "hono/jwt";
import { toHex } from "../oci/digest";
import { settingsOf } from "../settings/settings";
import type { Grant } from "../oci/access";

/**
 * The registry's tokens: JWTs signed with HS256 (Hono's JWT helpers over WebCrypto).
 * The Worker both issues and checks them, so a shared key is enough.
 *
 * - access tokens (Docker token spec): `sub` the user ("" for anonymous), `aud` the
 *   service, `access` the granted subset of the requested scopes, short-lived;
 * - refresh tokens (`offline_token=true`, `access_type=offline`): `sub` and `aud` only,
 *   marked `use: "refresh"`, long-lived. Each kind is refused where the other is expected.
 *
 * The key is TOKEN_SECRET (required with users: see policy.ts). Both kinds of a user's
 * tokens carry a binding to the user's password hash (`pwb`), so changing a password, or
 * removing the user, voids them at once, not at expiry. Every token must carry `exp`.
 */
export interface TokenSettings {
  key: string;
  issuer: string;
  service: string;
  accessTtlSeconds: number;
  refreshTtlSeconds: number;
}

export interface AccessClaims {
  sub: string;
  access: Grant[];
  /**
   * An OIDC login's token (auth/oidc.ts): `sub` is then `oidc:<issuer>#<subject>` (no user
   * name has a colon), it has no password binding, and this is what the ID token said.
   */
  oidc?: OidcClaims;
  /** A robot's token (`rbt`): not bound to a password; its robot is checked on each use (robots.ts). */
  robot?: boolean;
}

/** What an OIDC login's ID token said, as far as trust rules can ask (auth/oidc.ts). */
export interface OidcClaims {
  iss: string;
  sub: string;
  aud: string[];
  /** The claims any rule of the issuer names, as text. */
  claims: Record<string, string>;
}

/** The `sub` of an OIDC login's access token: never a user's (user names have no colon). */
export function oidcTokenSubject(oidc: { iss: string; sub: string }): string {
  return `oidc:${oidc.iss}#${oidc.sub}`;
}

function isOidcClaims(value: unknown): value is OidcClaims {
  if (typeof value !== "object" || value === null) return false;
  const record = value as Record<string, unknown>;
  return (
    typeof record.iss === "string" &&
    typeof record.sub === "string" &&
    Array.isArray(record.aud) &&
    record.aud.every((item) => typeof item === "string") &&
    typeof record.claims === "object" &&
    record.claims !== null &&
    Object.values(record.claims).every((item) => typeof item === "string")
  );
}

const ALGORITHM = "HS256";

/**
 * policyOf refuses enforced mode without TOKEN_SECRET. Without users (open or read-only
 * mode) a token never grants more than the policy gives anonymous clients anyway, so a
 * fixed key there costs nothing.
 */
export function signingKey(env: Env): string {
  return (
    settingsOf(env).tokens.secret ?? "edge-registry without users: tokens grant nothing beyond the anonymous policy"
  );
}

/** HMAC-SHA256 of `text` under `key`, in hex. */
export async function hmacHex(key: string, text: string): Promise<string> {
  const hmacKey = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(key),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  return toHex(await crypto.subtle.sign("HMAC", hmacKey, new TextEncoder().encode(text)));
}

/**
 * Binds a refresh token to the user's password as it is now: a changed password (a new
 * bcrypt hash) voids the user's refresh tokens, a leaked one included.
 */
export async function passwordBinding(key: string, user: string, hash: string): Promise<string> {
  const remembered = bindings.get(key)?.get(`${user}\0${hash}`);
  if (remembered) return remembered;
  const binding = (await hmacHex(key, `${user}\0${hash}`)).slice(0, 32);
  // Every request with a user's token checks its binding: keep the few there are per isolate.
  let forKey = bindings.get(key);
  if (!forKey || forKey.size >= BINDINGS_MAX) {
    bindings.clear();
    forKey = new Map();
    bindings.set(key, forKey);
  }
  forKey.set(`${user}\0${hash}`, binding);
  return binding;
}

const BINDINGS_MAX = 1000;
/** signing key → (user, hash) → binding; a new key (or too many users) starts afresh. */
const bindings = new Map<string, Map<string, string>>();

/**
 * A looked-up user's current bcrypt hash, or undefined when there is no such user: what
 * a token's binding is checked against.
 */
export type HashOf = (user: string) => string | undefined;

/** Whether a token's `pwb` claim matches the user's password as it is now. */
async function bindingHolds(key: string, user: string, claimed: unknown, hashOf: HashOf): Promise<boolean> {
  const hash = hashOf(user);
  if (hash === undefined || typeof claimed !== "string") return false;
  return claimed === (await passwordBinding(key, user, hash));
}

function now(): number {
  return Math.floor(Date.now() / 1000);
}

/**
 * An access token for `claims`; a user's token (`sub` not empty) is bound to
 * `passwordHash`, the user's bcrypt hash now.
 */
export async function issueAccessToken(
  settings: TokenSettings,
  claims: AccessClaims,
  passwordHash?: string,
  /** The latest expiry (seconds): an OIDC login's token lives no longer than its ID token. */
  notAfter?: number,
): Promise<{ token: string; expiresIn: number; issuedAt: string }> {
  const issued = now();
  const expires = Math.min(issued + settings.accessTtlSeconds, notAfter ?? Number.MAX_SAFE_INTEGER);
  const token = await sign(
    {
      iss: settings.issuer,
      sub: claims.sub,
      aud: settings.service,
      iat: issued,
      nbf: issued - 5,
      exp: expires,
      jti: crypto.randomUUID(),
      access: claims.access,
      ...(claims.oidc ? { oidc: claims.oidc } : {}),
      ...(claims.robot ? { rbt: true } : {}),
      ...(claims.sub !== "" && !claims.oidc && !claims.robot && passwordHash !== undefined
        ? { pwb: await passwordBinding(settings.key, claims.sub, passwordHash) }
        : {}),
    },
    settings.key,
    ALGORITHM,
  );
  return { token, expiresIn: Math.max(0, expires - issued), issuedAt: new Date(issued * 1000).toISOString() };
}

/**
 * A refresh token: the user's, for a while (`refreshTtlSeconds`), bound to the password.
 * `use: "session"` (the web pages' login cookie, src/ui) is the same kind of token for
 * another use, and `ttlSeconds` long: neither is accepted where the other is expected.
 */
export async function issueRefreshToken(
  settings: TokenSettings,
  user: string,
  passwordHash: string,
  {
    use = "refresh",
    ttlSeconds = settings.refreshTtlSeconds,
  }: { use?: "refresh" | "session"; ttlSeconds?: number } = {},
): Promise<string> {
  const issued = now();
  return sign(
    {
      iss: settings.issuer,
      sub: user,
      aud: settings.service,
      iat: issued,
      exp: issued + ttlSeconds,
      jti: crypto.randomUUID(),
      use,
      pwb: await passwordBinding(settings.key, user, passwordHash),
    },
    settings.key,
    ALGORITHM,
  );
}

function isGrantList(value: unknown): value is Grant[] {
  return (
    Array.isArray(value) &&
    value.every(
      (grant: unknown) =>
        typeof grant === "object" &&
        grant !== null &&
        typeof (grant as Grant).type === "string" &&
        typeof (grant as Grant).name === "string" &&
        Array.isArray((grant as Grant).actions),
    )
  );
}

/**
 * The claims of a valid access token for this service, or null: bad signature, no `exp`
 * or expired, other audience, a refresh token, or a user's token whose user is gone or
 * has another password now (`hashOf`).
 */
export async function verifyAccessToken(
  settings: TokenSettings,
  token: string,
  hashOf: HashOf,
): Promise<AccessClaims | null> {
  let verified = verifiedTokens.get(settings.key)?.get(token);
  if (!verified || verified.service !== settings.service || verified.exp <= now()) {
    const checked = await checkAccessToken(settings, token);
    if (!checked) return null;
    rememberVerified(settings.key, token, checked);
    verified = checked;
  }
  const holds = verified.holds(hashOf);
  return (typeof holds === "boolean" ? holds : await holds) ? verified.claims : null;
}

/**
 * An access token whose signature, audience and form were checked: its claims, its expiry,
 * and what must hold on each use (a user's token: its password binding).
 */
interface VerifiedToken {
  /** The service (audience) it was checked for. */
  service: string;
  claims: AccessClaims;
  exp: number;
  holds(hashOf: HashOf): boolean | Promise<boolean>;
}

const VERIFIED_MAX = 1000;
/**
 * Access tokens verified in this isolate: signing key → token → what was
 * checked. A client sends the same token with every request of a pull for its life
 * (minutes), and checking its HMAC and decoding it cost more CPU than the rest of a small
 * request. Only what cannot change is kept (the signature, the claims); the expiry and a
 * user's password binding are checked on every use. Bounded: a new key, or too many
 * tokens, starts afresh.
 */
const verifiedTokens = new Map<string, Map<string, VerifiedToken>>();

function rememberVerified(key: string, token: string, checked: VerifiedToken): void {
  let forKey = verifiedTokens.get(key);
  if (!forKey || forKey.size >= VERIFIED_MAX) {
    verifiedTokens.clear();
    forKey = new Map();
    verifiedTokens.set(key, forKey);
  }
  forKey.set(token, checked);
}

async function checkAccessToken(settings: TokenSettings, token: string): Promise<VerifiedToken | null> {
  try {
    const payload = await verify(token, settings.key, { alg: ALGORITHM, iss: settings.issuer, aud: settings.service });
    const exp = payload.exp;
    const service = settings.service;
    if (typeof exp !== "number") return null;
    if (payload.use !== undefined || typeof payload.sub !== "string" || !isGrantList(payload.access)) return null;
    const always = () => true;
    if (payload.oidc !== undefined) {
      // An OIDC login's: no password to bind to, and never taken for a user's.
      if (!isOidcClaims(payload.oidc) || payload.sub !== oidcTokenSubject(payload.oidc)) return null;
      return { service, claims: { sub: payload.sub, access: payload.access, oidc: payload.oidc }, exp, holds: always };
    }
    if (payload.rbt === true && payload.sub !== "")
      return { service, claims: { sub: payload.sub, access: payload.access, robot: true }, exp, holds: always };
    const { sub, pwb } = payload;
    return {
      service,
      claims: { sub, access: payload.access },
      exp,
      holds:
        sub === ""
          ? always
          : (hashOf) => {
              // The binding of the user's hash now is usually known (passwordBinding): no await.
              const hash = hashOf(sub);
              const known = hash === undefined ? undefined : bindings.get(settings.key)?.get(`${sub}\0${hash}`);
              return known !== undefined ? pwb === known : bindingHolds(settings.key, sub, pwb, hashOf);
            },
    };
  } catch {
    return null;
  }
}

/** What a valid refresh or session token says: its user, its id and its expiry (seconds). */
export interface RefreshClaims {
  user: string;
  jti: string;
  exp: number;
}

/**
 * The claims of a valid refresh token (or, with `use: "session"`, a web session) for this
 * service, or null; `hashOf` gives a user's current bcrypt hash (undefined: no such user
 * any more).
 */
export async function refreshTokenClaims(
  settings: TokenSettings,
  token: string,
  hashOf: HashOf,
  use: "refresh" | "session" = "refresh",
): Promise<RefreshClaims | null> {
  try {
    const payload = await verify(token, settings.key, { alg: ALGORITHM, iss: settings.issuer, aud: settings.service });
    if (typeof payload.exp !== "number" || typeof payload.jti !== "string") return null;
    if (payload.use !== use || typeof payload.sub !== "string" || payload.sub === "") return null;
    if (!(await bindingHolds(settings.key, payload.sub, payload.pwb, hashOf))) return null;
    return { user: payload.sub, jti: payload.jti, exp: payload.exp };
  } catch {
    return null;
  }
}

/** The user of a valid refresh token for this service, or null (see refreshTokenClaims). */
export async function verifyRefreshToken(
  settings: TokenSettings,
  token: string,
  hashOf: HashOf,
  use: "refresh" | "session" = "refresh",
): Promise<string | null> {
  return (await refreshTokenClaims(settings, token, hashOf, use))?.user ?? null;
}
