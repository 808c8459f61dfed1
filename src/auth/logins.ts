import type { Context } from "hono";
import { RegistryError, unavailable } from "../oci/errors";
import { storageHooks, withTimeout } from "../registry/storage";
import type { AuthEnv } from "./authorize";
import type { LockoutSettings } from "./login-limiter";
import { checkPassword, isRemembered, remember } from "./passwords";
import type { Policy } from "./policy";

/**
 * Every password check goes through here (GET and POST /token, Basic auth on /v2), so
 * the failed-login limits apply on every path that takes a password. The outcome of a
 * check is reported to the LoginLimiter objects of the user name and of the client
 * address, which decide atomically whether it stands (login-limiter.ts). A lock the
 * objects reported is also remembered in this isolate until it ends, so a client
 * hammering a locked key costs neither a bcrypt nor an object call.
 */
const DEFAULT_SETTINGS: LockoutSettings = { maxFailures: 5, lockoutSeconds: 10, maxLockoutSeconds: 900 };
/** The limiter is a security control: when it cannot be reached the login waits (503), it is not waved through. */
const LIMITER_TIMEOUT_MS = 10_000;
const KNOWN_LOCKS_MAX = 10_000;
const knownLocks = new Map<string, number>();

function positive(text: string | undefined, fallback: number): number {
  const value = Number(text);
  return text !== undefined && text !== "" && Number.isSafeInteger(value) && value > 0 ? value : fallback;
}

export function lockoutSettings(env: Env): LockoutSettings {
  const lockoutSeconds = positive(env.LOGIN_LOCKOUT_SECONDS, DEFAULT_SETTINGS.lockoutSeconds);
  return {
    maxFailures: positive(env.LOGIN_MAX_FAILURES, DEFAULT_SETTINGS.maxFailures),
    lockoutSeconds,
    maxLockoutSeconds: Math.max(
      lockoutSeconds,
      positive(env.LOGIN_LOCKOUT_MAX_SECONDS, DEFAULT_SETTINGS.maxLockoutSeconds),
    ),
  };
}

/**
 * The client's address as Cloudflare's edge reports it (`CF-Connecting-IP`, which
 * clients cannot set through the edge). An IPv6 client is counted by its /64: one
 * subscriber usually holds a whole /64, so counting single addresses would let it rotate
 * through them.
 */
export function clientAddress(header: string | undefined): string {
  const address = (header ?? "").trim().toLowerCase();
  if (address === "") return "unknown";
  if (!address.includes(":")) return address;
  // IPv4-mapped IPv6 (`::ffff:192.0.2.1`): the IPv4 client it is.
  if (address.includes(".")) return address.slice(address.lastIndexOf(":") + 1);
  const [head = "", tail] = address.split("::");
  const headGroups = head === "" ? [] : head.split(":");
  const tailGroups = tail === undefined || tail === "" ? [] : tail.split(":");
  const missing = Math.max(0, 8 - headGroups.length - tailGroups.length);
  const groups = tail === undefined ? headGroups : [...headGroups, ...Array<string>(missing).fill("0"), ...tailGroups];
  return `${groups
    .slice(0, 4)
    .map((group) => group.replace(/^0+(?=.)/, ""))
    .join(":")}::/64`;
}

function tooManyFailures(seconds: number): RegistryError {
  return new RegistryError(
    "TOOMANYREQUESTS",
    `too many failed logins; try again in ${seconds} s`,
    { retryAfter: seconds },
    { "Retry-After": String(seconds) },
  );
}

function knownLock(keys: string[]): number {
  const now = Date.now();
  let until = 0;
  for (const key of keys) {
    const lockedUntil = knownLocks.get(key);
    if (lockedUntil === undefined) continue;
    if (lockedUntil <= now) knownLocks.delete(key);
    else until = Math.max(until, lockedUntil);
  }
  return until === 0 ? 0 : Math.ceil((until - now) / 1000);
}

/**
 * Whether `password` is `user`'s, subject to the failed-login limits: throws 429
 * TOOMANYREQUESTS with Retry-After when the user name or the client address is locked.
 */
export async function verifyLogin(
  c: Context<AuthEnv>,
  policy: Policy,
  user: string,
  password: string,
): Promise<boolean> {
  if (await isRemembered(policy, user, password)) return true;
  const keys = [`address:${clientAddress(c.req.header("CF-Connecting-IP"))}`, `user:${user}`];
  const locked = knownLock(keys);
  if (locked > 0) throw tooManyFailures(locked);
  const correct = await checkPassword(policy, user, password);
  const settings = lockoutSettings(c.env);
  const verdicts = await Promise.all(
    keys.map((key) => {
      const limiter = c.env.LOGINS.get(c.env.LOGINS.idFromName(key));
      const call = Promise.resolve(limiter.attempt(correct, key.startsWith("user:"), settings)).catch(
        (error: unknown) => {
          throw unavailable("the login limiter could not be reached; retry", { cause: String(error) });
        },
      );
      return withTimeout(call, "logins.attempt", storageHooks.timeoutMs ?? LIMITER_TIMEOUT_MS);
    }),
  );
  const wait = Math.max(...verdicts);
  if (wait > 0) {
    if (knownLocks.size >= KNOWN_LOCKS_MAX) knownLocks.clear();
    keys.forEach((key, index) => {
      const seconds = verdicts[index] ?? 0;
      if (seconds > 0) knownLocks.set(key, Date.now() + seconds * 1000);
    });
    throw tooManyFailures(wait);
  }
  if (correct) await remember(policy, user, password);
  return correct;
}
