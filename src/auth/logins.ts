import type { Context } from "hono";
import { recordLogin, type LoginVia } from "../audit/audit";
import { RegistryError, unavailable } from "../oci/errors";
import { clientAddressOf } from "./client-address";
import { settingsOf } from "../settings/settings";
import { metered, meterOnEnv } from "../registry/meter";
import { storageHooks, withTimeout } from "../registry/storage";
import type { AuthEnv } from "./context";
import type { LockoutSettings } from "./login-limiter";
import { checkPassword, isRemembered, remember } from "./passwords";
import type { Policy } from "./policy";
import { checkRobotSecret, isRobotLogin, isRobotRemembered, rememberRobot } from "./robots";

/**
 * Every password check goes through here (GET and POST /token, Basic auth on /v2), so
 * the failed-login limits apply on every path that takes a password. The outcome of a
 * check is reported to the LoginLimiter objects of the client address and of the user
 * name, which decide atomically whether it stands (login-limiter.ts). A lock the
 * objects reported is also remembered in this isolate until it ends, so a client
 * hammering a locked key costs neither a bcrypt nor an object call.
 */
/** The limiter is a security control: when it cannot be reached the login waits (503), it is not waved through. */
const LIMITER_TIMEOUT_MS = 10_000;
const KNOWN_LOCKS_MAX = 10_000;
const knownLocks = new Map<string, number>();

export function lockoutSettings(env: Env): LockoutSettings & { maxFailuresPerAddress: number } {
  return settingsOf(env).logins;
}

/**
 * The client's address as Cloudflare's edge reports it (`CF-Connecting-IP`, which
 * clients cannot set through the edge; locally only the front may set it, and a request
 * without its proof arrives here without one: client-address.ts). An IPv6 client is
 * counted by its /64: one
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
 * Asks one key's LoginLimiter to judge an attempt (login-limiter.ts): 0 when its outcome
 * stands, else the seconds the key stays locked. A lock it reports, even one this
 * attempt's failure just set, is remembered in this isolate.
 */
async function judge(c: Context<AuthEnv>, key: string, correct: boolean, settings: LockoutSettings): Promise<number> {
  const limiter = c.env.LOGINS.get(c.env.LOGINS.idFromName(key));
  const call = metered(
    "do",
    "attempt",
    () => Promise.resolve(limiter.attempt(correct, key.startsWith("user:"), settings)),
    meterOnEnv(c.env),
  );
  const verdict = await withTimeout(
    call.catch((error: unknown) => {
      throw unavailable("the login limiter could not be reached; retry", { cause: String(error) });
    }),
    "logins.attempt",
    storageHooks.timeoutMs ?? LIMITER_TIMEOUT_MS,
  );
  if (verdict.lockedFor > 0) {
    if (knownLocks.size >= KNOWN_LOCKS_MAX) knownLocks.clear();
    knownLocks.set(key, Date.now() + verdict.lockedFor * 1000);
  }
  return verdict.refused ? Math.max(1, verdict.lockedFor) : 0;
}

/**
 * Whether `password` is `user`'s, subject to the failed-login limits: throws 429
 * TOOMANYREQUESTS with Retry-After when the client address or the user name is locked.
 *
 * The address is judged first and the user name only if the address let the attempt
 * through, so an attempt refused at one key is not counted at the other (a guesser
 * whose address is locked cannot go on raising its victim's count, and a correct login
 * refused by its address does not clear the user's failures). A lock known in this
 * isolate refuses at once, before the memory of successful logins is consulted: a
 * remembered password must not tell a guesser "right" while the user is locked.
 *
 * The outcome goes to the audit log (`via`: where the password came): every failure, the
 * limiters' refusals included, and every success but Basic auth's on /v2, which a client
 * may send with each request (its changes name the user anyway). A refusal by a lock known
 * in this isolate is not recorded: it costs nothing, and hammering a locked key must not
 * cost a D1 write each time either.
 */
export async function verifyLogin(
  c: Context<AuthEnv>,
  policy: Policy,
  user: string,
  password: string,
  via: LoginVia,
): Promise<boolean> {
  const address = `address:${clientAddress(clientAddressOf(c.req.raw, c.env))}`;
  const name = `user:${user}`;
  const locked = knownLock([address, name]);
  if (locked > 0) throw tooManyFailures(locked);
  // A robot's secret under a name that is no user's (robots.ts): checked against D1, limited alike.
  const robot = isRobotLogin(policy, user, password);
  const record = (success: boolean, reason?: "password" | "locked") => {
    if (success && via === "basic") return;
    recordLogin(c.env, {
      user,
      ...(robot ? { robot } : {}),
      success,
      via,
      ...(reason ? { reason } : {}),
      address: clientAddressOf(c.req.raw, c.env),
      userAgent: c.req.header("User-Agent"),
      requestId: c.req.header("CF-Ray"),
    });
  };
  if (robot ? await isRobotRemembered(c.env, user, password) : await isRemembered(policy, user, password)) {
    record(true);
    return true;
  }
  const correct = robot
    ? (await checkRobotSecret(c.env, user, password)) !== null
    : await checkPassword(policy, user, password);
  const settings = lockoutSettings(c.env);
  const addressWait = await judge(c, address, correct, { ...settings, maxFailures: settings.maxFailuresPerAddress });
  const nameWait = addressWait > 0 ? 0 : await judge(c, name, correct, settings);
  if (addressWait > 0 || nameWait > 0) {
    record(false, "locked");
    throw tooManyFailures(Math.max(addressWait, nameWait));
  }
  if (correct) await (robot ? rememberRobot(user, password) : remember(policy, user, password));
  record(correct, correct ? undefined : "password");
  return correct;
}

/**
 * A login checked elsewhere (an OIDC ID token: oidc.ts) under the client address's
 * failed-login limit, as verifyLogin checks passwords: 429 when the address is locked, and
 * every failure counted. Only the address: an ID token cannot be guessed, and a count per
 * name would let anyone lock out every OIDC login. A result `remembered` in this isolate
 * (a token verified before) costs no limiter call. `record` writes the audit log.
 */
export async function limitedLogin<T>(
  c: Context<AuthEnv>,
  check: () => Promise<T | null>,
  remembered: (result: T) => boolean,
  record: (result: T | null, reason?: "password" | "locked") => void,
): Promise<T | null> {
  const address = `address:${clientAddress(clientAddressOf(c.req.raw, c.env))}`;
  const locked = knownLock([address]);
  if (locked > 0) throw tooManyFailures(locked);
  const result = await check();
  if (result !== null && remembered(result)) return result;
  const settings = lockoutSettings(c.env);
  const wait = await judge(c, address, result !== null, { ...settings, maxFailures: settings.maxFailuresPerAddress });
  if (wait > 0) {
    record(null, "locked");
    throw tooManyFailures(wait);
  }
  record(result, result === null ? "password" : undefined);
  return result;
}
