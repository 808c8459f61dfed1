import bcrypt from "bcryptjs";
import { toHex } from "../oci/digest";
import type { Policy } from "./policy";

/**
 * Password checks against the bcrypt hashes of AUTH_USERS (bcryptjs: a pure-JS bcrypt,
 * since the Workers runtime has none; htpasswd's hashes are bcrypt).
 *
 * No timing leak: an unknown user is checked against a dummy hash of the same cost as
 * the real ones, so "no such user" and "wrong password" take the same time, and bcrypt's
 * own comparison is constant-time.
 *
 * Clients that send Basic credentials on every request (`/v2/...` straight, not via a
 * token) would pay one bcrypt per request, so a success is remembered for a minute per
 * isolate, keyed by a hash of user, password and stored hash: a wrong password never
 * hits the cache, and a changed password or user misses it. logins.ts decides when a
 * success counts (the failed-login limits).
 */
const REMEMBER_MS = 60_000;
const REMEMBER_MAX = 1000;
const remembered = new Map<string, number>();
const dummies = new Map<number, string>();

function dummyHash(cost: number): string {
  let hash = dummies.get(cost);
  if (!hash) {
    hash = bcrypt.hashSync("not a password of anyone", cost);
    dummies.set(cost, hash);
  }
  return hash;
}

function costOf(hash: string): number {
  return Number(hash.slice(4, 6));
}

async function rememberKey(user: string, password: string, hash: string): Promise<string> {
  const bytes = new TextEncoder().encode(`${user}\0${password}\0${hash}`);
  return toHex(await crypto.subtle.digest("SHA-256", bytes));
}

/**
 * True when a check of exactly these credentials succeeded, and was let through by the
 * failed-login limits, in this isolate within the last minute: no bcrypt, and not a
 * guess (logins.ts does not count it).
 */
export async function isRemembered(policy: Policy, user: string, password: string): Promise<boolean> {
  const hash = policy.users.get(user);
  if (!hash) return false;
  const until = remembered.get(await rememberKey(user, password, hash));
  return until !== undefined && until > Date.now();
}

/**
 * Remembers credentials found correct. Only once the failed-login limits let the attempt
 * through: a correct guess refused during a lockout must not be let in later by memory.
 */
export async function remember(policy: Policy, user: string, password: string): Promise<void> {
  const hash = policy.users.get(user);
  if (!hash) return;
  if (remembered.size >= REMEMBER_MAX) remembered.clear();
  remembered.set(await rememberKey(user, password, hash), Date.now() + REMEMBER_MS);
}

/** True when `password` is `user`'s (one bcrypt; an unknown user costs the same). */
export async function checkPassword(policy: Policy, user: string, password: string): Promise<boolean> {
  const hash = policy.users.get(user);
  if (!hash) {
    const costs = [...policy.users.values()].map(costOf);
    await bcrypt.compare(password, dummyHash(Math.max(4, ...costs)));
    return false;
  }
  return bcrypt.compare(password, hash);
}

/** Parses `Authorization: Basic …` into user and password, or null. */
export function basicCredentials(header: string | undefined): { user: string; password: string } | null {
  const match = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? "");
  if (!match?.[1]) return null;
  let decoded: string;
  try {
    decoded = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(
      Uint8Array.from(atob(match[1]), (c) => c.charCodeAt(0)),
    );
  } catch {
    return null;
  }
  const colon = decoded.indexOf(":");
  if (colon < 0) return null;
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}
