import type { Context } from "hono";
import { ACTIONS, type Action, type Resource } from "../oci/access";
import { toHex } from "../oci/digest";
import { RegistryError } from "../oci/errors";
import { d1Call } from "../registry/d1";
import { meterOnEnv } from "../registry/meter";
import { namePattern } from "../settings/values";
import type { Policy } from "./policy";

/**
 * Robot tokens: credentials for machines (CI), created and revoked at run time through
 * /_admin/tokens (src/routes/admin-tokens.ts, `npm run token`), kept in D1 (the AUDIT
 * database's `robots` table, migrations/0003_robots.sql), which is consistent at once.
 *
 * - A robot logs in with its name as user name and its secret (`ert_` and 43 base64url
 *   characters: 32 random bytes) as password, wherever a password is taken. Only the
 *   secret's SHA-256 is stored: the secret is random, so a slow hash adds nothing, and a
 *   robot may log in often. The failed-login limits apply as to passwords (logins.ts).
 * - Its name must not be an AUTH_USERS user's (creation refuses it); a user added later
 *   with the same name wins (a robot login is one whose user name is no user's).
 * - Its grants are its own (`--access 'team/**:pull,push'`), not AUTH_ACCESS's.
 * - Access tokens issued to a robot carry `rbt` and live at most the robot's remaining
 *   life; every request with one asks whether the robot still exists and has not expired
 *   (robotNamed: D1, remembered at most ROBOT_CACHE_MS in an isolate), so a revocation
 *   holds everywhere within about a second.
 * - `last_used` is written at most once a minute per robot (touch).
 */

export const ROBOT_SECRET_PREFIX = "ert_";
/** How long an isolate may answer "this robot exists" without asking D1 again. */
export const ROBOT_CACHE_MS = 1000;
/** How often `last_used` is written at most, per robot. */
export const LAST_USED_INTERVAL_MS = 60_000;
const NAME = /^[a-z0-9]+(?:[._-][a-z0-9]+)*$/;
const NAME_MAX = 64;
const ACCESS_MAX = 32;

export interface RobotGrant {
  repositories: string;
  actions: Action[];
}

export interface Robot {
  name: string;
  access: RobotGrant[];
  created: number;
  expires: number | null;
  lastUsed: number | null;
}

interface RobotRow {
  name: string;
  secret_hash: string;
  access: string;
  created: number;
  expires: number | null;
  last_used: number | null;
}

/** The robots' table's D1 calls (registry/d1.ts): a robot that cannot be looked up is refused with a 503, never let through. */
const ROBOTS = { prefix: "robots", what: "the robot tokens" };

function d1<T>(env: Env, operation: string, work: () => Promise<T>): Promise<T> {
  return d1Call(ROBOTS, operation, work, meterOnEnv(env));
}

function readRow(env: Env, name: string): Promise<RobotRow | null> {
  return d1(env, "read", () => env.AUDIT.prepare("SELECT * FROM robots WHERE name = ?").bind(name).first<RobotRow>());
}

function robotOf(row: RobotRow): Robot {
  return {
    name: row.name,
    access: JSON.parse(row.access) as RobotGrant[],
    created: row.created,
    expires: row.expires,
    lastUsed: row.last_used,
  };
}

/** The robot as the admin API lists it (times as ISO text). */
export function listedRobot(robot: Robot) {
  return {
    name: robot.name,
    access: robot.access,
    created: new Date(robot.created).toISOString(),
    expires: robot.expires === null ? null : new Date(robot.expires).toISOString(),
    lastUsed: robot.lastUsed === null ? null : new Date(robot.lastUsed).toISOString(),
    expired: robot.expires !== null && robot.expires <= Date.now(),
  };
}

async function sha256Hex(text: string): Promise<string> {
  return toHex(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
}

function sameText(a: string, b: string): boolean {
  const left = new TextEncoder().encode(a);
  const right = new TextEncoder().encode(b);
  return left.byteLength === right.byteLength && crypto.subtle.timingSafeEqual(left, right);
}

function newSecret(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  const text = btoa(String.fromCharCode(...bytes))
    .replace(/\+/g, "-")
    .replace(/\//g, "_")
    .replace(/=+$/, "");
  return `${ROBOT_SECRET_PREFIX}${text}`;
}

/** Whether a login is a robot's: a robot secret, under a name that is no user's. */
export function isRobotLogin(policy: Policy, user: string, password: string): boolean {
  return password.startsWith(ROBOT_SECRET_PREFIX) && !policy.users.has(user) && NAME.test(user);
}

function badRequest(message: string, detail?: Record<string, unknown>): RegistryError {
  return new RegistryError("UNSUPPORTED", message, detail, {}, 400);
}

/** `team/**:pull,push` → a grant; throws a 400 naming what is wrong. */
export function parseRobotAccess(text: string): RobotGrant {
  const colon = text.lastIndexOf(":");
  const repositories = colon > 0 ? text.slice(0, colon) : "";
  const actions = colon > 0 ? text.slice(colon + 1).split(",") : [];
  if (repositories === "" || !/^[a-z0-9*][a-z0-9._/*-]*$/.test(repositories)) {
    throw badRequest("access must be PATTERN:ACTIONS, as team/**:pull,push", { access: text });
  }
  const unknown = actions.filter((action) => !ACTIONS.includes(action as Action));
  if (actions.length === 0 || unknown.length > 0) {
    throw badRequest(`access actions must be among ${ACTIONS.join(", ")}`, { access: text });
  }
  return { repositories, actions: [...new Set(actions)] as Action[] };
}

/** The actions a robot may take on a resource: its grants, matched as AUTH_ACCESS's patterns are. */
export function robotActions(policy: Policy, robot: Robot, resource: Resource): Set<Action> {
  const allowed = new Set<Action>();
  if (resource.type !== "repository") return allowed;
  const subject = policy.subjectName ? policy.subjectName(resource.name) : resource.name;
  for (const grant of robot.access) {
    if (namePattern(grant.repositories).test(subject)) for (const action of grant.actions) allowed.add(action);
  }
  return allowed;
}

/** Seconds a robot has left (Infinity: no expiry). */
export function remainingSeconds(robot: Robot): number {
  return robot.expires === null ? Infinity : Math.floor((robot.expires - Date.now()) / 1000);
}

const cache = new Map<string, { robot: Robot | null; hash?: string; until: number }>();
const CACHE_MAX = 1000;
const touched = new Map<string, number>();

function remembered(name: string, robot: Robot | null, hash?: string): Robot | null {
  if (cache.size >= CACHE_MAX) cache.clear();
  cache.set(name, { robot, until: Date.now() + ROBOT_CACHE_MS, ...(hash === undefined ? {} : { hash }) });
  return robot;
}

function live(robot: Robot | null): Robot | null {
  return robot && (robot.expires === null || robot.expires > Date.now()) ? robot : null;
}

/**
 * The robot of this name if it exists and has not expired, else null: D1, or what this
 * isolate read less than ROBOT_CACHE_MS ago. What every request with a robot's token asks.
 */
export async function robotNamed(env: Env, name: string): Promise<Robot | null> {
  const known = cache.get(name);
  if (known && known.until > Date.now()) return live(known.robot);
  const row = await readRow(env, name);
  return live(remembered(name, row ? robotOf(row) : null, row?.secret_hash));
}

/**
 * The robot whose name and secret these are (live), or null: one D1 read, unless this
 * isolate read the robot less than ROBOT_CACHE_MS ago (Basic auth on every request).
 */
export async function checkRobotSecret(env: Env, name: string, secret: string): Promise<Robot | null> {
  const hash = await sha256Hex(secret);
  const known = cache.get(name);
  if (known && known.until > Date.now() && known.hash !== undefined) {
    return sameText(known.hash, hash) ? live(known.robot) : null;
  }
  const row = await readRow(env, name);
  remembered(name, row ? robotOf(row) : null, row?.secret_hash);
  if (!row || !sameText(row.secret_hash, hash)) return null;
  return live(robotOf(row));
}

const approved = new Map<string, number>();
const APPROVED_MS = 60_000;

/**
 * Whether this robot login succeeded, let through by the failed-login limits, in this
 * isolate within the last minute (as passwords.ts remembers passwords), and the robot still
 * holds (checkRobotSecret: D1 at most once a ROBOT_CACHE_MS): a client sending its secret
 * with every request then costs no limiter call each time.
 */
export async function isRobotRemembered(env: Env, name: string, secret: string): Promise<boolean> {
  const until = approved.get(`${name}\0${await sha256Hex(secret)}`);
  if (until === undefined || until <= Date.now()) return false;
  return (await checkRobotSecret(env, name, secret)) !== null;
}

/** Remembers a robot login the limits let through (isRobotRemembered). */
export async function rememberRobot(name: string, secret: string): Promise<void> {
  if (approved.size >= CACHE_MAX) approved.clear();
  approved.set(`${name}\0${await sha256Hex(secret)}`, Date.now() + APPROVED_MS);
}

/** The request's waitUntil, where there is an execution context (not in every test). */
export function waitUntilOf(c: Context): ((promise: Promise<unknown>) => void) | undefined {
  try {
    const context = c.executionCtx;
    return (promise) => context.waitUntil(promise);
  } catch {
    return undefined;
  }
}

/**
 * Notes that a robot was used now: `last_used` is written when this isolate has not
 * written it within LAST_USED_INTERVAL_MS, and then only if no other isolate has (the
 * condition), so a busy robot costs a write a minute, not one a request. Never waits.
 */
export function touchRobot(
  env: Env,
  robot: Robot,
  waitUntil?: (promise: Promise<unknown>) => void,
): Promise<void> | undefined {
  const now = Date.now();
  const last = Math.max(touched.get(robot.name) ?? 0, robot.lastUsed ?? 0);
  if (now - last < LAST_USED_INTERVAL_MS) return undefined;
  if (touched.size >= CACHE_MAX) touched.clear();
  touched.set(robot.name, now);
  const write = env.AUDIT.prepare("UPDATE robots SET last_used = ? WHERE name = ? AND COALESCE(last_used, 0) <= ?")
    .bind(now, robot.name, now - LAST_USED_INTERVAL_MS)
    .run()
    .then(() => undefined)
    .catch((error: unknown) => console.error("robot last_used", String(error)));
  if (waitUntil) waitUntil(write);
  return write;
}

export interface NewRobot {
  name: string;
  access: string[];
  /** Seconds from now; undefined: never expires. */
  expiresIn?: number | undefined;
}

/** Creates a robot; returns it and its secret (the only time the secret is seen). */
export async function createRobot(
  env: Env,
  policy: Policy,
  request: NewRobot,
): Promise<{ robot: Robot; secret: string }> {
  const { name } = request;
  if (typeof name !== "string" || name.length > NAME_MAX || !NAME.test(name)) {
    throw badRequest(`name must be lower-case letters and digits, separated by . _ or -, at most ${NAME_MAX}`, {
      name,
    });
  }
  if (policy.users.has(name)) {
    throw new RegistryError("DENIED", "a user (AUTH_USERS) has this name", { name }, {}, 409);
  }
  if (!Array.isArray(request.access) || request.access.length === 0 || request.access.length > ACCESS_MAX) {
    throw badRequest(`access must list 1 to ${ACCESS_MAX} grants, as team/**:pull,push`);
  }
  const access = request.access.map((text) => parseRobotAccess(String(text)));
  const expiresIn = request.expiresIn;
  if (expiresIn !== undefined && (!Number.isSafeInteger(expiresIn) || expiresIn < 1)) {
    throw badRequest("expiresIn must be a whole number of seconds from 1", { expiresIn });
  }
  const created = Date.now();
  const robot: Robot = {
    name,
    access,
    created,
    expires: expiresIn === undefined ? null : created + expiresIn * 1000,
    lastUsed: null,
  };
  const secret = newSecret();
  const secretHash = await sha256Hex(secret);
  const result = await d1(env, "create", () =>
    env.AUDIT.prepare(
      "INSERT INTO robots (name, secret_hash, access, created, expires) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
    )
      .bind(name, secretHash, JSON.stringify(access), created, robot.expires)
      .run(),
  );
  if (result.meta.changes !== 1) {
    throw new RegistryError("DENIED", "a robot of this name exists; revoke it first", { name }, {}, 409);
  }
  cache.delete(name);
  touched.delete(name);
  return { robot, secret };
}

export async function listRobots(env: Env): Promise<Robot[]> {
  const { results } = await d1(env, "list", () =>
    env.AUDIT.prepare("SELECT * FROM robots ORDER BY name").all<RobotRow>(),
  );
  return results.map(robotOf);
}

/** Revokes (deletes) a robot: true when there was one. */
export async function revokeRobot(env: Env, name: string): Promise<boolean> {
  const result = await d1(env, "revoke", () => env.AUDIT.prepare("DELETE FROM robots WHERE name = ?").bind(name).run());
  remembered(name, null);
  return result.meta.changes === 1;
}

/**
 * After verifyLogin let a login through: its robot when it was a robot's (the token
 * endpoint issues it a robot's token), else undefined. Throws 401 if the robot vanished
 * in between (a revocation racing the login).
 */
export async function robotLoggedIn(
  env: Env,
  policy: Policy,
  user: string,
  password: string,
): Promise<Robot | undefined> {
  if (!isRobotLogin(policy, user, password)) return undefined;
  const robot = await checkRobotSecret(env, user, password);
  if (!robot) throw new RegistryError("UNAUTHORIZED", "incorrect username or password");
  await touchRobot(env, robot);
  return robot;
}

/** What the token endpoint gives a robot: its own grants, for at most its remaining life. */
export function robotTokenTerms(policy: Policy, robot: Robot) {
  return {
    actions: (resource: Resource) => robotActions(policy, robot, resource),
    ttlSeconds: (ttl: number) => Math.max(1, Math.min(ttl, remainingSeconds(robot))),
  };
}
