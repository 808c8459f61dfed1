import { Hono, type Context } from "hono";
import { parseScope, type Grant } from "../oci/access";
import { loadPolicy, serviceOf, tokenSettings, type AuthEnv } from "../auth/authorize";
import { verifyLogin } from "../auth/logins";
import { basicCredentials } from "../auth/passwords";
import { allowedActions, type Policy } from "../auth/policy";
import { isOidcLogin, oidcAllowed, oidcLogin, type OidcLogin } from "../auth/oidc";
import { robotLoggedIn, robotTokenTerms, type Robot } from "../auth/robots";
import { issueAccessToken, oidcTokenSubject, issueRefreshToken, verifyRefreshToken } from "../auth/tokens";
import { RegistryError } from "../oci/errors";
import { readLimited } from "./http";

/**
 * The token endpoint of the Docker registry token authentication flow, served by the
 * Worker itself (the realm of every challenge):
 *
 * - `GET /token?service=…&scope=…&scope=…[&offline_token=true]`, with Basic credentials
 *   or none (anonymous), as docker, podman, skopeo and buildah call it;
 * - `POST /token` with a form: `grant_type=password` (username, password) or
 *   `grant_type=refresh_token` (refresh_token), plus scope (space-separated), service,
 *   client_id, access_type: the OAuth2 form containerd uses.
 *
 * A token carries only the granted subset of what was asked: unknown scopes and
 * actions are dropped, never an error (the registry then answers 401/403 for them).
 */
export const tokenRoutes = new Hono<AuthEnv>();

/** Who logged in other than a user by password: an OIDC login, or a robot. */
type Login = { oidc: OidcLogin } | { robot: Robot };

function grantsFor(policy: Policy, user: string | null, scopes: string[], login?: Login): Grant[] {
  const grants = new Map<string, Grant>();
  for (const text of scopes.flatMap((scope) => scope.split(" ")).filter((scope) => scope !== "")) {
    const requested = parseScope(text);
    if (!requested) continue;
    const allowed =
      login && "oidc" in login
        ? oidcAllowed(policy, login.oidc.rules, requested.resource)
        : login && "robot" in login
          ? robotTokenTerms(policy, login.robot).actions(requested.resource)
          : allowedActions(policy, user, requested.resource);
    const actions = requested.actions.filter((action) => allowed.has(action));
    if (actions.length === 0) continue;
    const key = `${requested.resource.type}:${requested.resource.name}`;
    const grant = grants.get(key) ?? { type: requested.resource.type, name: requested.resource.name, actions: [] };
    for (const action of requested.resource.type === "registry" ? ["*"] : actions) {
      if (!grant.actions.includes(action)) grant.actions.push(action);
    }
    grants.set(key, grant);
  }
  return [...grants.values()];
}

async function refreshTokenFor(c: Context<AuthEnv>, policy: Policy, user: string): Promise<string> {
  return issueRefreshToken(tokenSettings(c), user, policy.users.get(user) ?? "");
}

function checkService(c: Context<AuthEnv>, service: string | undefined): void {
  if (service !== undefined && service !== "" && service !== serviceOf(c)) {
    throw new RegistryError("DENIED", "tokens of this registry are for another service", {
      requested: service,
      service: serviceOf(c),
    });
  }
}

function badCredentials(): RegistryError {
  return new RegistryError("UNAUTHORIZED", "incorrect username or password", undefined, {
    "WWW-Authenticate": 'Basic realm="edge-registry"',
  });
}

async function answer(
  c: Context<AuthEnv>,
  user: string | null,
  scopes: string[],
  refresh: string | null,
  login?: Login,
) {
  const policy = loadPolicy(c.env);
  const settings = tokenSettings(c);
  const robot = login && "robot" in login ? login.robot : undefined;
  if (robot) settings.accessTtlSeconds = robotTokenTerms(policy, robot).ttlSeconds(settings.accessTtlSeconds);
  const access = grantsFor(policy, user, scopes, login);
  const { token, expiresIn, issuedAt } =
    login && "oidc" in login
      ? // An OIDC login's token: its grants, no refresh token, and no longer-lived than the ID token.
        await issueAccessToken(
          settings,
          { sub: oidcTokenSubject(login.oidc.oidc), access, oidc: login.oidc.oidc },
          undefined,
          login.oidc.exp,
        )
      : await issueAccessToken(
          settings,
          { sub: user ?? "", access, ...(robot ? { robot: true } : {}) },
          user === null || robot ? undefined : policy.users.get(user),
        );
  c.header("Cache-Control", "no-store");
  return c.json({
    token,
    access_token: token,
    expires_in: expiresIn,
    issued_at: issuedAt,
    scope: access.map((grant) => `${grant.type}:${grant.name}:${grant.actions.join(",")}`).join(" "),
    ...(refresh !== null ? { refresh_token: refresh } : {}),
  });
}

tokenRoutes.get("/", async (c) => {
  checkService(c, c.req.query("service"));
  const policy = loadPolicy(c.env);
  const credentials = basicCredentials(c.req.header("Authorization"));
  if (c.req.header("Authorization") && !credentials) throw badCredentials();
  if (credentials && isOidcLogin(c, credentials.user)) {
    const login = await oidcLogin(c, credentials.password, "token");
    if (!login) throw badCredentials();
    return answer(c, null, c.req.queries("scope") ?? [], null, { oidc: login });
  }
  let user: string | null = null;
  let robot: Robot | undefined;
  if (credentials) {
    if (!(await verifyLogin(c, policy, credentials.user, credentials.password, "token"))) throw badCredentials();
    user = credentials.user;
    robot = await robotLoggedIn(c.env, policy, credentials.user, credentials.password);
  }
  // A robot gets no refresh token: its secret is what it logs in with again.
  const offline = c.req.query("offline_token") === "true" && !robot;
  const refresh = offline && user !== null ? await refreshTokenFor(c, policy, user) : null;
  return answer(c, user, c.req.queries("scope") ?? [], refresh, robot ? { robot } : undefined);
});

/**
 * Largest token request form read: a password grant with scopes fits in well under 1 KiB.
 * The cap is enforced while reading (readLimited), so a huge form never reaches memory.
 */
export const MAX_TOKEN_FORM_BYTES = 8 * 1024;

/** The POST /token form (urlencoded, or multipart), read within MAX_TOKEN_FORM_BYTES. */
async function readForm(c: Context<AuthEnv>): Promise<FormData> {
  const bytes = await readLimited(
    c,
    MAX_TOKEN_FORM_BYTES,
    () =>
      new RegistryError(
        "SIZE_INVALID",
        `the token request form exceeds ${MAX_TOKEN_FORM_BYTES} bytes`,
        {
          limit: MAX_TOKEN_FORM_BYTES,
        },
        {},
        413,
      ),
  );
  const contentType = c.req.header("Content-Type") ?? "";
  try {
    return await new Response(bytes, { headers: { "Content-Type": contentType } }).formData();
  } catch {
    throw new RegistryError(
      "UNSUPPORTED",
      "the token request must be a form (application/x-www-form-urlencoded)",
      undefined,
      {},
      400,
    );
  }
}

tokenRoutes.post("/", async (c) => {
  const form = await readForm(c);
  const field = (name: string): string | undefined => {
    const value = form.get(name);
    return typeof value === "string" ? value : undefined;
  };
  checkService(c, field("service"));
  const policy = loadPolicy(c.env);
  const scopes = [field("scope") ?? ""];
  const grantType = field("grant_type");
  if (grantType === "password") {
    const user = field("username") ?? "";
    if (isOidcLogin(c, user)) {
      const login = await oidcLogin(c, field("password") ?? "", "token");
      if (!login) throw badCredentials();
      return answer(c, null, scopes, null, { oidc: login });
    }
    if (!(await verifyLogin(c, policy, user, field("password") ?? "", "token"))) throw badCredentials();
    const robot = await robotLoggedIn(c.env, policy, user, field("password") ?? "");
    const refresh = field("access_type") === "offline" && !robot ? await refreshTokenFor(c, policy, user) : null;
    return answer(c, user, scopes, refresh, robot ? { robot } : undefined);
  }
  if (grantType === "refresh_token") {
    const presented = field("refresh_token") ?? "";
    // A refresh token outlives neither its user nor the user's password.
    const user = await verifyRefreshToken(tokenSettings(c), presented, (name) => policy.users.get(name));
    if (user === null) {
      throw new RegistryError("UNAUTHORIZED", "the refresh token is invalid, expired or for another service");
    }
    return answer(c, user, scopes, presented);
  }
  throw new RegistryError("UNSUPPORTED", "grant_type must be password or refresh_token", { grantType }, {}, 400);
});
