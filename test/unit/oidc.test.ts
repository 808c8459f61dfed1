import { createExecutionContext, env, waitOnExecutionContext } from "cloudflare:test";
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from "jose";
import { afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { auditSettled } from "../../src/audit/audit";
import { AuditLog } from "../../src/audit/audit-log";
import { forgetIssuerKeys, matchingRules, oidcHooks } from "../../src/auth/oidc";
import type { OidcClaims } from "../../src/auth/tokens";
import { parseOidcTrust } from "../../src/settings/oidc";
import { parseSettings } from "../../src/settings/settings";
import { SettingsError } from "../../src/settings/values";
import worker from "../../src/index";
import { MediaTypes, sha256, utf8 } from "./helpers";

/**
 * OIDC federation (src/auth/oidc.ts): a client logs in as `oidc` with an ID token of a
 * trusted issuer. The issuers here live in the isolate: the Worker's fetches of their
 * discovery documents and key sets are answered by a fetch spy, their tokens signed with
 * keys jose generates (RS256 and ES256).
 */
const BASE = "http://registry.test";
const SERVICE = "registry.test";
const GITHUB = "https://issuer.test";
const ES = "https://es-issuer.test";
const AUDIENCE = "registry.test";
const MAX_FAILURES_PER_ADDRESS = 4;

interface Key {
  kid: string;
  alg: "RS256" | "ES256";
  privateKey: CryptoKey;
  jwk: JWK;
}

/** A fake OIDC issuer: discovery document, key set, and counts of fetches. */
class Issuer {
  keys: Key[] = [];
  fetches = 0;
  constructor(
    readonly url: string,
    readonly alg: "RS256" | "ES256",
  ) {}

  async rotate(): Promise<Key> {
    const { privateKey, publicKey } = await generateKeyPair(this.alg, { extractable: true });
    const kid = crypto.randomUUID();
    const key: Key = {
      kid,
      alg: this.alg,
      privateKey,
      jwk: { ...(await exportJWK(publicKey)), kid, alg: this.alg, use: "sig" },
    };
    this.keys.push(key);
    return key;
  }

  handle(request: Request): Response {
    const path = new URL(request.url).pathname;
    if (path === "/.well-known/openid-configuration") {
      return Response.json({ issuer: this.url, jwks_uri: `${this.url}/keys` });
    }
    if (path === "/keys") {
      this.fetches++;
      return Response.json({ keys: this.keys.map((key) => key.jwk) });
    }
    return new Response("not found", { status: 404 });
  }

  /** An ID token with these claims (defaults: a GitHub Actions job of org/app on main), signed by `key`. */
  async token(claims: Record<string, unknown> = {}, key = this.keys.at(-1)): Promise<string> {
    if (!key) throw new Error("no key");
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({
      repository: "org/app",
      ref: "refs/heads/main",
      ...claims,
    })
      .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: "JWT" })
      .setIssuer((claims.iss as string | undefined) ?? this.url)
      .setSubject((claims.sub as string | undefined) ?? "repo:org/app:ref:refs/heads/main")
      .setAudience((claims.aud as string | undefined) ?? AUDIENCE)
      .setIssuedAt((claims.iat as number | undefined) ?? now)
      .setNotBefore((claims.nbf as number | undefined) ?? now - 5)
      .setExpirationTime((claims.exp as number | undefined) ?? now + 600)
      .sign(key.privateKey);
  }
}

const TRUST = [
  {
    issuer: GITHUB,
    audience: AUDIENCE,
    claims: { repository: "org/app", ref: "refs/heads/*" },
    repositories: ["team/**"],
    actions: ["pull", "push"],
  },
  {
    issuer: GITHUB,
    audience: AUDIENCE,
    claims: { repository: "org/*" },
    repositories: ["shared/*"],
    actions: ["pull"],
  },
  { issuer: ES, audience: "es-aud", repositories: ["es/**"], actions: ["pull", "push"] },
];

let github: Issuer;
let es: Issuer;
let authEnv: Env;

beforeAll(async () => {
  github = new Issuer(GITHUB, "RS256");
  es = new Issuer(ES, "ES256");
  await github.rotate();
  await es.rotate();
  authEnv = {
    ...env,
    AUTH_MODE: undefined,
    AUTH_USERS: undefined,
    OIDC_TRUST: JSON.stringify(TRUST),
    TOKEN_SECRET: "a test key of the registry, long and random in production",
    TOKEN_TTL_SECONDS: "300",
    LOGIN_MAX_FAILURES: "1000",
    LOGIN_MAX_FAILURES_PER_ADDRESS: String(MAX_FAILURES_PER_ADDRESS),
  } as Env;
});

beforeEach(() => {
  const original = globalThis.fetch;
  vi.spyOn(globalThis, "fetch").mockImplementation(async (input, init) => {
    const outbound = new Request(input, init);
    const origin = new URL(outbound.url).origin;
    if (origin === GITHUB) return github.handle(outbound);
    if (origin === ES) return es.handle(outbound);
    return original(input, init);
  });
});

afterEach(() => {
  vi.restoreAllMocks();
});

let addressCounter = 0;
/** Each test its own client address: failed logins count per address. */
function newAddress(): string {
  addressCounter++;
  return `192.0.2.${addressCounter}`;
}
let address = "192.0.2.250";
beforeEach(() => {
  address = newAddress();
});

async function call(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  headers.set("CF-Connecting-IP", address);
  const ctx = createExecutionContext();
  const response = await worker.fetch(new Request(`${BASE}${path}`, { ...init, headers }), authEnv, ctx);
  await waitOnExecutionContext(ctx);
  return response;
}

function basic(user: string, password: string): Record<string, string> {
  return { Authorization: `Basic ${btoa(`${user}:${password}`)}` };
}

function claimsOf(jwt: string): Record<string, unknown> {
  const [, payload = ""] = jwt.split(".");
  return JSON.parse(atob(payload.replace(/-/g, "+").replace(/_/g, "/"))) as Record<string, unknown>;
}

async function tokenGet(idToken: string, ...scopes: string[]): Promise<Response> {
  const query = new URLSearchParams({ service: SERVICE });
  for (const scope of scopes) query.append("scope", scope);
  return call(`/token?${query}`, { headers: basic("oidc", idToken) });
}

async function tokenPost(idToken: string, scope: string): Promise<Response> {
  const form = new URLSearchParams({
    grant_type: "password",
    username: "oidc",
    password: idToken,
    service: SERVICE,
    scope,
  });
  return call("/token", { method: "POST", body: form });
}

async function expectCode(response: Response, status: number, code: string): Promise<void> {
  expect(response.status).toBe(status);
  expect(((await response.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe(code);
}

/** Pushes a one-layer image with these headers; the manifest PUT's response. */
async function push(name: string, tag: string, headers: Record<string, string>): Promise<Response> {
  const config = utf8(JSON.stringify({ architecture: "amd64", os: "linux", name, tag }));
  const layer = utf8(`layer of ${name}:${tag}`);
  for (const blob of [config, layer]) {
    const pushed = await call(`/v2/${name}/blobs/uploads/?digest=${await sha256(blob)}`, {
      method: "POST",
      headers,
      body: blob,
    });
    if (pushed.status !== 201) return pushed;
  }
  const manifest = utf8(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.ociManifest,
      config: { mediaType: MediaTypes.ociConfig, digest: await sha256(config), size: config.byteLength },
      layers: [{ mediaType: MediaTypes.ociLayer, digest: await sha256(layer), size: layer.byteLength }],
    }),
  );
  return call(`/v2/${name}/manifests/${tag}`, {
    method: "PUT",
    headers: { ...headers, "Content-Type": MediaTypes.ociManifest },
    body: manifest,
  });
}

describe("OIDC logins", () => {
  it("a matching RS256 token logs in at GET /token (Basic) and pushes to a granted repository", async () => {
    const idToken = await github.token();
    const response = await tokenGet(idToken, "repository:team/app:pull,push");
    expect(response.status).toBe(200);
    const body = (await response.json()) as { token: string; scope: string; refresh_token?: string };
    expect(body.scope).toBe("repository:team/app:pull,push");
    expect(body.refresh_token).toBeUndefined();
    const claims = claimsOf(body.token);
    expect(claims.sub).toBe(`oidc:${GITHUB}#repo:org/app:ref:refs/heads/main`);
    expect(claims.pwb).toBeUndefined();
    expect((await push("team/app", "v1", { Authorization: `Bearer ${body.token}` })).status).toBe(201);
  });

  it("the password grant works too, and an ES256 issuer's token", async () => {
    // The ES rule needs its own audience: a token for another is no login.
    await expectCode(await tokenPost(await es.token(), "repository:es/one:pull,push"), 401, "UNAUTHORIZED");
    const right = await tokenPost(await es.token({ aud: "es-aud" }), "repository:es/one:pull,push");
    const granted = (await right.json()) as { token: string; scope: string };
    expect(granted.scope).toBe("repository:es/one:pull,push");
    expect((await push("es/one", "v1", { Authorization: `Bearer ${granted.token}` })).status).toBe(201);
  });

  it("Basic oidc:<token> straight on /v2 pushes, and the actor is the issuer and subject", async () => {
    const idToken = await github.token({ sub: "basic-subject" });
    expect((await push("team/basic", "v1", basic("oidc", idToken))).status).toBe(201);
    await auditSettled();
    const page = await new AuditLog(env.AUDIT).query({ repository: "team/basic", limit: 10 });
    expect(page.events.length).toBeGreaterThan(0);
    for (const event of page.events) expect(event.actor).toEqual({ kind: "oidc", name: `${GITHUB}#basic-subject` });
  });

  it("another repository: 403 DENIED with Basic; a token for it grants nothing", async () => {
    const idToken = await github.token();
    await expectCode(await push("private/app", "v1", basic("oidc", idToken)), 403, "DENIED");
    const response = await tokenGet(idToken, "repository:private/app:pull,push", "repository:shared/x:pull,push");
    const body = (await response.json()) as { token: string; scope: string };
    // The second rule (repository org/*) grants pull on shared/*: the union of the matching rules.
    expect(body.scope).toBe("repository:shared/x:pull");
    await expectCode(await push("private/app", "v1", { Authorization: `Bearer ${body.token}` }), 403, "DENIED");
  });

  it("refuses an expired token, another issuer, a wrong audience, a claim that does not match", async () => {
    const now = Math.floor(Date.now() / 1000);
    const refused = [
      await github.token({ exp: now - 120, iat: now - 700, nbf: now - 700 }),
      await github.token({ nbf: now + 600 }),
      await github.token({ iat: now + 600 }),
      await github.token({ iss: "https://elsewhere.test" }),
      await github.token({ aud: "another-registry" }),
      await github.token({ repository: "evil/app" }),
      await github.token({ ref: "refs/tags/v1", repository: "other/app" }),
      "not a jwt",
    ];
    for (const idToken of refused) {
      address = newAddress();
      await expectCode(await tokenGet(idToken, "repository:team/app:pull"), 401, "UNAUTHORIZED");
      address = newAddress();
      await expectCode(await call("/v2/team/app/tags/list", { headers: basic("oidc", idToken) }), 401, "UNAUTHORIZED");
    }
  });

  it("refuses a token signed by an unknown key, and alg none", async () => {
    const stranger = new Issuer(GITHUB, "RS256");
    const key = await stranger.rotate();
    await expectCode(await tokenGet(await github.token({}, key), "repository:team/app:pull"), 401, "UNAUTHORIZED");
    const header = btoa(JSON.stringify({ alg: "none", typ: "JWT" })).replace(/=+$/, "");
    const now = Math.floor(Date.now() / 1000);
    const payload = btoa(
      JSON.stringify({
        iss: GITHUB,
        sub: "x",
        aud: AUDIENCE,
        iat: now,
        exp: now + 600,
        repository: "org/app",
        ref: "refs/heads/main",
      }),
    ).replace(/=+$/, "");
    address = newAddress();
    await expectCode(await tokenGet(`${header}.${payload}.`, "repository:team/app:pull"), 401, "UNAUTHORIZED");
  });

  it("picks up a rotated key (a new kid) without a restart", async () => {
    const previous = oidcHooks.refreshCooldownMs;
    oidcHooks.refreshCooldownMs = 0;
    try {
      expect((await tokenGet(await github.token(), "repository:team/app:pull")).status).toBe(200);
      await github.rotate();
      const fetches = github.fetches;
      const response = await tokenGet(await github.token({ sub: "rotated" }), "repository:team/app:pull");
      expect(response.status).toBe(200);
      expect(github.fetches).toBe(fetches + 1);
    } finally {
      oidcHooks.refreshCooldownMs = previous;
    }
  });

  it("refetches keys for an unknown kid at most once per cooldown", async () => {
    forgetIssuerKeys();
    expect((await tokenGet(await github.token({ sub: "cooldown" }), "repository:team/app:pull")).status).toBe(200);
    const fetches = github.fetches;
    const stranger = new Issuer(GITHUB, "RS256");
    const key = await stranger.rotate();
    for (let attempt = 0; attempt < 3; attempt++) {
      address = newAddress();
      await expectCode(await tokenGet(await github.token({}, key), "repository:team/app:pull"), 401, "UNAUTHORIZED");
    }
    expect(github.fetches).toBe(fetches);
  });

  it("the access token expires no later than the ID token", async () => {
    const now = Math.floor(Date.now() / 1000);
    const response = await tokenGet(await github.token({ exp: now + 60, sub: "short" }), "repository:team/app:pull");
    const body = (await response.json()) as { token: string; expires_in: number };
    expect(claimsOf(body.token).exp).toBeLessThanOrEqual(now + 60);
    expect(body.expires_in).toBeLessThanOrEqual(60);
  });

  it("an OIDC access token is not taken for a user's, nor a forged one", async () => {
    const response = await tokenGet(await github.token(), "repository:team/app:pull");
    const { token } = (await response.json()) as { token: string };
    const [header, , signature] = token.split(".");
    const claims = claimsOf(token);
    const tampered = btoa(JSON.stringify({ ...claims, sub: "admin" })).replace(/=+$/, "");
    await expectCode(
      await call("/v2/team/app/tags/list", { headers: { Authorization: `Bearer ${header}.${tampered}.${signature}` } }),
      401,
      "UNAUTHORIZED",
    );
  });

  it("records OIDC logins in the audit log as kind oidc: the subject and issuer, or `oidc` when refused", async () => {
    expect((await tokenGet(await github.token({ sub: "audited" }), "repository:team/app:pull")).status).toBe(200);
    address = newAddress();
    expect((await tokenGet(await github.token({ aud: "nope" }), "repository:team/app:pull")).status).toBe(401);
    await auditSettled();
    const log = new AuditLog(env.AUDIT);
    const success = await log.query({ actor: `${GITHUB}#audited`, action: "login.success", limit: 10 });
    expect(success.events).toHaveLength(1);
    expect(success.events[0]?.actor).toEqual({ kind: "oidc", name: `${GITHUB}#audited` });
    const failures = await log.query({ actor: "oidc", action: "login.failure", limit: 100 });
    expect(failures.events.map((event) => [event.address, event.actor.kind])).toContainEqual([address, "oidc"]);
  });

  it("an issuer that cannot be reached is a 503, not a failed login", async () => {
    forgetIssuerKeys();
    vi.restoreAllMocks();
    vi.spyOn(globalThis, "fetch").mockImplementation(() => Promise.reject(new Error("connection refused")));
    const idToken = await github.token({ sub: "unreachable" });
    await expectCode(await tokenGet(idToken, "repository:team/app:pull"), 503, "UNAVAILABLE");
    forgetIssuerKeys();
  });

  it("an access token shrinks with the rules: its claims are matched again on every request", async () => {
    const response = await tokenGet(await github.token({ sub: "shrinks" }), "repository:team/app:pull,push");
    const { token } = (await response.json()) as { token: string };
    expect((await call("/v2/team/app/tags/list", { headers: { Authorization: `Bearer ${token}` } })).status).toBe(200);
    const before = authEnv;
    authEnv = { ...authEnv, OIDC_TRUST: JSON.stringify(TRUST.slice(1)) } as Env;
    try {
      await expectCode(
        await call("/v2/team/app/tags/list", { headers: { Authorization: `Bearer ${token}` } }),
        403,
        "DENIED",
      );
    } finally {
      authEnv = before;
    }
  });

  it("failed OIDC logins count toward the address's login limit", async () => {
    const statuses: number[] = [];
    for (let attempt = 0; attempt < MAX_FAILURES_PER_ADDRESS + 2; attempt++) {
      statuses.push((await tokenGet(await github.token({ aud: "wrong" }), "repository:team/app:pull")).status);
    }
    expect(statuses.slice(0, MAX_FAILURES_PER_ADDRESS)).toEqual(Array(MAX_FAILURES_PER_ADDRESS).fill(401));
    expect(statuses.slice(MAX_FAILURES_PER_ADDRESS)).toEqual([429, 429]);
    // A good token from that address is refused while it is locked.
    expect((await tokenGet(await github.token({ sub: "locked-out" }), "repository:team/app:pull")).status).toBe(429);
  });
});

describe("OIDC trust rules", () => {
  const claims = (values: Record<string, string>, aud = [AUDIENCE]): OidcClaims => ({
    iss: GITHUB,
    sub: "s",
    aud,
    claims: values,
  });

  it("matches claims with * patterns, issuer and audience; grants add up", () => {
    const rules = parseOidcTrust(JSON.stringify(TRUST));
    expect(matchingRules(rules, claims({ repository: "org/app", ref: "refs/heads/feature/x" }))).toHaveLength(2);
    expect(matchingRules(rules, claims({ repository: "org/lib", ref: "refs/heads/main" }))).toHaveLength(1);
    expect(matchingRules(rules, claims({ repository: "org/app" }))).toHaveLength(1);
    expect(matchingRules(rules, claims({ repository: "org/app", ref: "refs/heads/main" }, ["other"]))).toHaveLength(0);
    expect(matchingRules(rules, { ...claims({ repository: "org/app" }), iss: ES })).toHaveLength(0);
    expect(matchingRules(rules, { ...claims({}, ["es-aud"]), iss: ES })).toHaveLength(1);
  });

  function refusal(text: string, more: Record<string, string> = {}): string {
    try {
      parseSettings({ ...env, OIDC_TRUST: text, TOKEN_SECRET: "k", ...more } as Env);
    } catch (error) {
      expect(error).toBeInstanceOf(SettingsError);
      return (error as Error).message;
    }
    throw new Error("accepted");
  }

  it("refuses rules it cannot follow, naming OIDC_TRUST", () => {
    const rule = { issuer: GITHUB, audience: "a", repositories: ["x/**"], actions: ["pull"] };
    expect(refusal("{")).toMatch(/OIDC_TRUST is not valid JSON/);
    expect(refusal("{}")).toMatch(/OIDC_TRUST must be a JSON list/);
    expect(refusal(JSON.stringify([{ ...rule, issuer: "http://issuer.example" }]))).toMatch(
      /OIDC_TRUST\[0\].issuer.*https/,
    );
    expect(refusal(JSON.stringify([{ ...rule, issuer: "not a url" }]))).toMatch(/OIDC_TRUST\[0\].issuer/);
    expect(refusal(JSON.stringify([{ ...rule, audience: undefined }]))).toMatch(/OIDC_TRUST\[0\].audience/);
    expect(refusal(JSON.stringify([{ ...rule, actions: ["fly"] }]))).toMatch(/OIDC_TRUST\[0\]: unknown actions fly/);
    expect(refusal(JSON.stringify([{ ...rule, repositories: [] }]))).toMatch(/OIDC_TRUST\[0\].repositories/);
    expect(refusal(JSON.stringify([{ ...rule, claims: { ref: 1 } }]))).toMatch(/OIDC_TRUST\[0\].claims.ref/);
    expect(refusal(JSON.stringify([{ ...rule, users: ["x"] }]))).toMatch(/OIDC_TRUST\[0\]: unknown fields users/);
    expect(() =>
      parseSettings({
        ...env,
        OIDC_TRUST: JSON.stringify([{ ...rule, issuer: "http://127.0.0.1:9/" }]),
        TOKEN_SECRET: "k",
      } as Env),
    ).not.toThrow();
    expect(() => parseSettings({ ...env, OIDC_TRUST: JSON.stringify([rule]), TOKEN_SECRET: undefined } as Env)).toThrow(
      /TOKEN_SECRET/,
    );
    // A user named `oidc` would be shadowed by the OIDC login: refused.
    const users = `oidc:$2y$04$${"a".repeat(53)}`;
    expect(refusal(JSON.stringify([rule]), { AUTH_USERS: users })).toMatch(/OIDC_TRUST.*"oidc"/);
  });
});
