import type { Context, MiddlewareHandler } from "hono";
import { mirroredName } from "../settings/upstreams";
import { settingsOf } from "../settings/settings";
import { RegistryError } from "../oci/errors";
import { formatScope, needOf, resourceKey, type Action, type Need, type Resource } from "../oci/access";
import { hostOf, originOf, queryParameter, requestUrl } from "../oci/request-url";
import type { AuthEnv, RequestActor } from "./context";
import { verifyLogin } from "./logins";
import { isOidcLogin, oidcActorName, oidcAllowed, oidcLogin, matchingRules } from "./oidc";
import type { OidcTrustRule } from "../settings/oidc";
import type { AccessClaims, OidcClaims } from "./tokens";

export type { AccessCheck, AuthEnv, RequestActor } from "./context";
import { basicCredentials } from "./passwords";
import { allowedActions, policyOf, type Policy } from "./policy";
import {
  checkRobotSecret,
  isRobotLogin,
  robotActions,
  robotNamed,
  touchRobot,
  waitUntilOf,
  type Robot,
} from "./robots";
import { signingKey, verifyAccessToken, type TokenSettings } from "./tokens";

/** Who is asking: nobody in particular, a user by password, or the holder of a token. */
type Identity =
  | { kind: "anonymous" }
  | { kind: "user"; user: string; robot?: Robot }
  | { kind: "token"; user: string | null; grants: Map<string, Set<string>>; robot?: Robot; claims: AccessClaims }
  // An OIDC login (oidc.ts): by its ID token (Basic), or its access token's grants.
  | { kind: "oidc"; oidc: OidcClaims; rules: OidcTrustRule[]; grants: Map<string, Set<string>> | null };

/** The service name tokens are issued for (their audience): AUTH_SERVICE, else the host clients use. */
export function serviceOf(c: Context<AuthEnv>): string {
  return serviceFor(c.req.raw, c.env);
}

function serviceFor(request: Request, env: Env): string {
  return settingsOf(env).tokens.service ?? hostOf(requestUrl(request));
}

export function tokenSettings(c: Context<AuthEnv>): TokenSettings {
  return tokenSettingsFor(c.req.raw, c.env);
}

function tokenSettingsFor(request: Request, env: Env): TokenSettings {
  const { tokens } = settingsOf(env);
  return {
    key: signingKey(env),
    issuer: "edge-registry",
    service: serviceFor(request, env),
    accessTtlSeconds: tokens.accessTtlSeconds,
    refreshTtlSeconds: tokens.refreshTtlSeconds,
  };
}

/** The access policy (a broken setting is a 500 naming it: settingsOf; it must not fall open). */
export function loadPolicy(env: Env): Policy {
  return policyOf(settingsOf(env));
}

function challenge(c: Context<AuthEnv>, scope?: string, error?: "invalid_token" | "insufficient_scope"): string {
  const realm = settingsOf(c.env).tokens.realm ?? `${originOf(requestUrl(c.req.raw))}/token`;
  let value = `Bearer realm="${realm}",service="${serviceOf(c)}"`;
  if (scope) value += `,scope="${scope}"`;
  if (error) value += `,error="${error}"`;
  return value;
}

function unauthorized(
  c: Context<AuthEnv>,
  message: string,
  scope?: string,
  error?: "invalid_token" | "insufficient_scope",
): RegistryError {
  // The scope as detail, as distribution sends its access records: docker 20.10 reads an
  // UNAUTHORIZED with neither detail nor a message of its own as a bare code, which its
  // push takes for a passing failure and retries (each layer, about 50 s) instead of failing.
  const detail = scope ? { scope } : undefined;
  return new RegistryError("UNAUTHORIZED", message, detail, { "WWW-Authenticate": challenge(c, scope, error) });
}

function bearerOf(header: string): string | undefined {
  return /^Bearer\s+(\S+)\s*$/i.exec(header)?.[1];
}

/** `scope`: the scope a challenge names, made only for one (most requests need none). */
async function identify(c: Context<AuthEnv>, policy: Policy, scopeOf: () => string | undefined): Promise<Identity> {
  const header = c.req.header("Authorization");
  if (!header) return { kind: "anonymous" };
  const bearer = bearerOf(header);
  if (bearer) {
    const claims = await verifyAccessToken(tokenSettings(c), bearer, (name) => policy.users.get(name));
    if (!claims)
      throw unauthorized(c, "the token is invalid, expired or for another service", scopeOf(), "invalid_token");
    const grants = grantsOf(claims);
    if (claims.oidc)
      return { kind: "oidc", oidc: claims.oidc, rules: matchingRules(settingsOf(c.env).oidc, claims.oidc), grants };
    // A robot's token holds while its robot does: revoked or expired, it is refused (robots.ts).
    const robot = claims.robot ? await robotNamed(c.env, claims.sub) : undefined;
    if (robot === null) throw unauthorized(c, "the robot token was revoked or has expired", scopeOf(), "invalid_token");
    if (robot) touchRobot(c.env, robot, waitUntilOf(c));
    return { kind: "token", user: claims.sub === "" ? null : claims.sub, grants, claims, ...(robot ? { robot } : {}) };
  }
  const credentials = basicCredentials(header);
  if (credentials && isOidcLogin(c, credentials.user)) {
    const login = await oidcLogin(c, credentials.password, "basic");
    if (!login)
      throw unauthorized(c, "the ID token is invalid or expired, or no OIDC_TRUST rule matches it", scopeOf());
    return { kind: "oidc", oidc: login.oidc, rules: login.rules, grants: null };
  }
  if (!credentials || !(await verifyLogin(c, policy, credentials.user, credentials.password, "basic"))) {
    throw unauthorized(c, "incorrect username or password", scopeOf());
  }
  if (isRobotLogin(policy, credentials.user, credentials.password)) {
    const robot = await checkRobotSecret(c.env, credentials.user, credentials.password);
    if (!robot) throw unauthorized(c, "incorrect username or password", scopeOf());
    touchRobot(c.env, robot, waitUntilOf(c));
    return { kind: "user", user: credentials.user, robot };
  }
  return { kind: "user", user: credentials.user };
}

/** A verified token's claims are the same object on each use (tokens.ts): their grants by resource, made once. */
const grantsByClaims = new WeakMap<AccessClaims, Map<string, Set<string>>>();

function grantsOf(claims: AccessClaims): Map<string, Set<string>> {
  let grants = grantsByClaims.get(claims);
  if (!grants) {
    grants = new Map();
    for (const grant of claims.access) grants.set(`${grant.type}:${grant.name}`, new Set(grant.actions));
    grantsByClaims.set(claims, grants);
  }
  return grants;
}

/**
 * What an identity may do to a resource now. A token carries grants, but the policy is
 * read again: a token outliving a user's rights (or the user) shrinks with them.
 */
function permitted(policy: Policy, identity: Identity, resource: Resource, subject = resource): Set<Action> {
  const allowed = couldDo(policy, identity, subject);
  const grants = identity.kind === "token" || identity.kind === "oidc" ? identity.grants : null;
  if (grants === null) return allowed;
  const granted = grants.get(resourceKey(resource));
  return new Set([...allowed].filter((action) => granted?.has(action) || granted?.has("*")));
}

/** What the identity's user (or OIDC login) may do now, whatever a token grants. */
function couldDo(policy: Policy, identity: Identity, subject: Resource): Set<Action> {
  if (identity.kind === "oidc") return oidcAllowed(policy, identity.rules, subject);
  if (identity.kind !== "anonymous" && identity.robot) return robotActions(policy, identity.robot, subject);
  return allowedActions(policy, identity.kind === "anonymous" ? null : identity.user, subject);
}

function actorOf(identity: Identity): RequestActor {
  if (identity.kind === "oidc") return { kind: "oidc", name: oidcActorName(identity.oidc) };
  if (identity.kind === "anonymous" || identity.user === null) return { kind: "anonymous", name: "" };
  return { kind: identity.robot ? "robot" : "user", name: identity.user };
}

/** The resource the rules judge: with `?ns=` naming an upstream, the mirrored name's stored one. */
function nsSubject(c: Context<AuthEnv>, resource: Resource): Resource {
  const ns = queryParameter(requestUrl(c.req.raw), "ns");
  if (!ns || resource.type !== "repository") return resource;
  try {
    const mirrored = mirroredName(settingsOf(c.env).mirrors, resource.name, ns);
    return mirrored ? { type: "repository", name: mirrored.local } : resource;
  } catch {
    return resource;
  }
}

/**
 * The requests (method, path and `?ns=`) a user's token was found to allow, per policy:
 * a pull makes the same few requests with one token for its life, and what a token allows
 * under a policy cannot change (the rules are read once per isolate; a token whose user is
 * gone or has another password is refused before this, by `identify`). Robots' and OIDC
 * logins' rights depend on more than that, and are judged every time. Bounded per token.
 */
const granted = new WeakMap<Policy, WeakMap<AccessClaims, Set<string>>>();
const GRANTED_MAX = 64;

function grantedKey(c: Context<AuthEnv>): string {
  return grantedKeyOf(c.req.method, c.req.path, queryParameter(requestUrl(c.req.raw), "ns") ?? "");
}

function grantedKeyOf(method: string, path: string, ns: string): string {
  return `${method} ${path} ${ns}`;
}

function grantedBefore(policy: Policy, identity: Identity, c: Context<AuthEnv>): boolean {
  if (identity.kind !== "token" || identity.robot) return false;
  return granted.get(policy)?.get(identity.claims)?.has(grantedKey(c)) ?? false;
}

const OPEN_ACTOR: RequestActor = { kind: "anonymous", name: "" };

/**
 * Who made a request that needs no judging, or null: anyone, on an open registry; the
 * holder of a user's access token that was allowed this very request before (`granted`),
 * the token checked as `identify` checks it (signature, audience, expiry, the user's
 * password). Anything else (no token, a robot's, an OIDC login, a request not seen with
 * this token) is judged by `authorize`. For the pull path (routes/pull-path.ts), which
 * serves requests without a query: `path` is the request's, `?ns=` never part of it.
 */
export async function knownActor(request: Request, env: Env, path: string): Promise<RequestActor | null> {
  const policy = loadPolicy(env);
  if (policy.mode === "open") return OPEN_ACTOR;
  if (policy.mode !== "enforced") return null;
  const header = request.headers.get("Authorization");
  const bearer = header === null ? undefined : bearerOf(header);
  if (bearer === undefined) return null;
  const claims = await verifyAccessToken(tokenSettingsFor(request, env), bearer, (name) => policy.users.get(name));
  if (!claims || claims.oidc || claims.robot) return null;
  if (
    !granted
      .get(policy)
      ?.get(claims)
      ?.has(grantedKeyOf(request.method, path, ""))
  )
    return null;
  return actorOf({ kind: "token", user: claims.sub === "" ? null : claims.sub, grants: grantsOf(claims), claims });
}

function rememberGranted(policy: Policy, identity: Identity, c: Context<AuthEnv>): void {
  if (identity.kind !== "token" || identity.robot) return;
  let byClaims = granted.get(policy);
  if (!byClaims) granted.set(policy, (byClaims = new WeakMap()));
  let requests = byClaims.get(identity.claims);
  if (!requests) byClaims.set(identity.claims, (requests = new Set()));
  if (requests.size >= GRANTED_MAX) requests.clear();
  requests.add(grantedKey(c));
}

/**
 * Authentication and authorization of /v2 requests, before any route runs: the
 * request's need (from its method and path, `needOf`) against what its credentials
 * allow. No credentials, bad credentials, or a token that lacks a scope the user could
 * get: 401 UNAUTHORIZED with the challenge naming that scope (clients then fetch a
 * token for it). Credentials whose user may not do it: 403 DENIED.
 */
export const authorize: MiddlewareHandler<AuthEnv> = async (c, next) => {
  const policy = loadPolicy(c.env);
  if (policy.mode === "open") {
    c.set("can", () => true);
    return next();
  }
  // The path as sent: one with percent-encoding was refused before (app.ts), so Hono's is it.
  let known: Need | undefined;
  const needed = () => (known ??= needOf(c.req.method, c.req.path));
  const scopeOf = () => {
    const need = needed();
    return typeof need === "object" ? formatScope(need.resource, need.actions) : undefined;
  };
  const identity = policy.mode === "enforced" ? await identify(c, policy, scopeOf) : { kind: "anonymous" as const };
  c.set("can", (resource, action) => permitted(policy, identity, resource).has(action));
  c.set("actor", actorOf(identity));
  // A request this token was allowed to make before (grantedBefore) needs no judging again.
  if (grantedBefore(policy, identity, c)) return next();
  const need = needed();
  if (need === "nothing") return next();
  if (need === "base") {
    // `docker login` learns where to get a token here.
    if (policy.mode === "enforced" && identity.kind === "anonymous") {
      throw unauthorized(c, "authentication required");
    }
    return next();
  }
  // The rules apply to what is read: containerd's `?ns=` can make a name a mirrored one,
  // stored under another name (src/settings/upstreams.ts); the token's grant is for the name asked.
  const subject = nsSubject(c, need.resource);
  const allowed = permitted(policy, identity, need.resource, subject);
  if (need.actions.every((action) => allowed.has(action))) {
    rememberGranted(policy, identity, c);
    return next();
  }

  if (policy.mode === "read-only") {
    throw new RegistryError("DENIED", "this registry has no users configured, so it is read-only (set AUTH_USERS)");
  }
  // Nobody in particular (no credentials, or an anonymous token): logging in may help.
  const anonymous = identity.kind === "anonymous" || (identity.kind === "token" && identity.user === null);
  if (anonymous) throw unauthorized(c, "authentication required", scopeOf());
  if (identity.kind === "token" || (identity.kind === "oidc" && identity.grants !== null)) {
    const couldHave = couldDo(policy, identity, subject);
    if (need.actions.every((action) => couldHave.has(action))) {
      throw unauthorized(c, "the token does not grant this", scopeOf(), "insufficient_scope");
    }
  }
  throw new RegistryError("DENIED", undefined, { scope: scopeOf() });
};
