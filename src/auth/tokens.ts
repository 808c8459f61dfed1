import { sign, verify } from "hono/jwt";
import { toHex } from "../oci/digest";
import type { Grant } from "./access";

/**
 * The registry's tokens: JWTs signed with HS256 (Hono's JWT helpers over WebCrypto).
 * The Worker both issues and checks them, so a shared key is enough.
 *
 * - access tokens (Docker token spec): `sub` the user ("" for anonymous), `aud` the
 *   service, `access` the granted subset of the requested scopes, short-lived;
 * - refresh tokens (`offline_token=true`, `access_type=offline`): `sub` and `aud` only,
 *   marked `use: "refresh"`, long-lived. Each kind is refused where the other is expected.
 *
 * The key is TOKEN_SECRET; without it, a key derived (HKDF) from AUTH_USERS, so tokens
 * survive restarts and every token is void once the users change.
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
}

const ALGORITHM = "HS256";
const keys = new Map<string, string>();

export async function signingKey(env: Env): Promise<string> {
  if (env.TOKEN_SECRET) return env.TOKEN_SECRET;
  const source = env.AUTH_USERS ?? "";
  const cached = keys.get(source);
  if (cached) return cached;
  const material = await crypto.subtle.importKey("raw", new TextEncoder().encode(source), "HKDF", false, [
    "deriveBits",
  ]);
  const bits = await crypto.subtle.deriveBits(
    {
      name: "HKDF",
      hash: "SHA-256",
      salt: new TextEncoder().encode("edge-registry token key"),
      info: new Uint8Array(0),
    },
    material,
    256,
  );
  const key = toHex(bits);
  keys.clear();
  keys.set(source, key);
  return key;
}

function now(): number {
  return Math.floor(Date.now() / 1000);
}

export async function issueAccessToken(
  settings: TokenSettings,
  claims: AccessClaims,
): Promise<{ token: string; expiresIn: number; issuedAt: string }> {
  const issued = now();
  const token = await sign(
    {
      iss: settings.issuer,
      sub: claims.sub,
      aud: settings.service,
      iat: issued,
      nbf: issued - 5,
      exp: issued + settings.accessTtlSeconds,
      jti: crypto.randomUUID(),
      access: claims.access,
    },
    settings.key,
    ALGORITHM,
  );
  return { token, expiresIn: settings.accessTtlSeconds, issuedAt: new Date(issued * 1000).toISOString() };
}

export async function issueRefreshToken(settings: TokenSettings, user: string): Promise<string> {
  const issued = now();
  return sign(
    {
      iss: settings.issuer,
      sub: user,
      aud: settings.service,
      iat: issued,
      exp: issued + settings.refreshTtlSeconds,
      jti: crypto.randomUUID(),
      use: "refresh",
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

/** The claims of a valid access token for this service, or null (bad signature, expired, other audience, a refresh token). */
export async function verifyAccessToken(settings: TokenSettings, token: string): Promise<AccessClaims | null> {
  try {
    const payload = await verify(token, settings.key, { alg: ALGORITHM, iss: settings.issuer, aud: settings.service });
    if (payload.use !== undefined || typeof payload.sub !== "string" || !isGrantList(payload.access)) return null;
    return { sub: payload.sub, access: payload.access };
  } catch {
    return null;
  }
}

/** The user of a valid refresh token for this service, or null. */
export async function verifyRefreshToken(settings: TokenSettings, token: string): Promise<string | null> {
  try {
    const payload = await verify(token, settings.key, { alg: ALGORITHM, iss: settings.issuer, aud: settings.service });
    return payload.use === "refresh" && typeof payload.sub === "string" && payload.sub !== "" ? payload.sub : null;
  } catch {
    return null;
  }
}
