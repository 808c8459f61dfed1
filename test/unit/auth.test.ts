import { env } from "cloudflare:test";
import bcrypt from "bcryptjs";
import { sign } from "hono/jwt";
import { beforeAll, describe, expect, it } from "vitest";
import { app } from "../../src/app";
import { passwordBinding, signingKey } from "../../src/auth/tokens";
import { imageManifest, MediaTypes, sha256, utf8 } from "./helpers";

/**
 * The Docker registry token flow, served by the Worker: challenges, the token endpoint
 * (GET as docker/podman/skopeo call it, POST as containerd does), scoped JWTs, refresh
 * tokens, Basic auth straight on /v2, per-repository rules and anonymous pull.
 */
const BASE = "http://registry.test";
const SERVICE = "registry.test";
let authEnv: Env;

const ACCESS = [
  { repositories: ["**"], users: ["admin"], actions: ["pull", "push", "delete"], catalog: true },
  { repositories: ["team/**"], users: ["ci"], actions: ["pull", "push"] },
  { repositories: ["team/**", "public/**"], users: ["*"], actions: ["pull"] },
  { repositories: ["public/**"], anonymous: true, actions: ["pull"] },
];

beforeAll(() => {
  // Cost 4: the cheapest bcrypt, so the suite stays fast; production hashes use more.
  const line = (user: string, password: string) => `${user}:${bcrypt.hashSync(password, 4)}`;
  authEnv = {
    ...env,
    AUTH_MODE: undefined,
    AUTH_USERS: [line("admin", "admin-pw"), line("ci", "ci-pw"), line("reader", "reader-pw")].join("\n"),
    AUTH_ACCESS: JSON.stringify(ACCESS),
    TOKEN_SECRET: "a test key of the registry, long and random in production",
    // The failed-login limits have their own file (login-limits.test.ts); here the few
    // wrong passwords of the tests below, all from one (absent) address, must not add up.
    LOGIN_MAX_FAILURES: "1000",
    LOGIN_MAX_FAILURES_PER_ADDRESS: "1000",
  } as Env;
});

function call(path: string, init: RequestInit = {}, bindings: Env = authEnv): Promise<Response> {
  return Promise.resolve(app.request(`${BASE}${path}`, init, bindings));
}

function basic(user: string, password: string): Record<string, string> {
  return { Authorization: `Basic ${btoa(`${user}:${password}`)}` };
}

function bearer(token: string): Record<string, string> {
  return { Authorization: `Bearer ${token}` };
}

async function token(user: string | null, password: string, ...scopes: string[]): Promise<Record<string, unknown>> {
  const query = new URLSearchParams({ service: SERVICE });
  for (const scope of scopes) query.append("scope", scope);
  const response = await call(`/token?${query}`, { headers: user === null ? {} : basic(user, password) });
  expect(response.status).toBe(200);
  return response.json();
}

function claims(jwt: unknown): Record<string, unknown> {
  const [, payload = ""] = String(jwt).split(".");
  return JSON.parse(atob(payload.replace(/-/g, "+").replace(/_/g, "/"))) as Record<string, unknown>;
}

function challengeOf(response: Response): Record<string, string> {
  const header = response.headers.get("WWW-Authenticate") ?? "";
  expect(header).toMatch(/^Bearer /);
  return Object.fromEntries([...header.matchAll(/(\w+)="([^"]*)"/g)].map((match) => [match[1], match[2]]));
}

async function expectCode(response: Response, status: number, code: string): Promise<void> {
  expect(response.status).toBe(status);
  expect(((await response.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe(code);
}

/** Pushes a one-layer image as `admin` (Basic auth) and returns its manifest bytes. */
async function pushAsAdmin(name: string, tag: string): Promise<Uint8Array<ArrayBuffer>> {
  const headers = basic("admin", "admin-pw");
  const config = utf8(`{"name":"${name}"}`);
  const layer = utf8(`layer of ${name}`);
  for (const blob of [config, layer]) {
    const pushed = await call(`/v2/${name}/blobs/uploads/?digest=${await sha256(blob)}`, {
      method: "POST",
      headers,
      body: blob,
    });
    expect(pushed.status).toBe(201);
  }
  const manifest = utf8(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.ociManifest,
      config: { mediaType: MediaTypes.ociConfig, digest: await sha256(config), size: config.byteLength },
      layers: [{ mediaType: MediaTypes.ociLayer, digest: await sha256(layer), size: layer.byteLength }],
    }),
  );
  const put = await call(`/v2/${name}/manifests/${tag}`, {
    method: "PUT",
    headers: { ...headers, "Content-Type": MediaTypes.ociManifest },
    body: manifest,
  });
  expect(put.status).toBe(201);
  return manifest;
}

describe("the challenge", () => {
  it("GET /v2/ without credentials is 401 with a Bearer challenge naming the token endpoint and service", async () => {
    const response = await call("/v2/");
    await expectCode(response, 401, "UNAUTHORIZED");
    expect(challengeOf(response)).toEqual({ realm: `${BASE}/token`, service: SERVICE });
  });

  it("names the scope the request needs: pull, pull+push, delete", async () => {
    const pull = challengeOf(await call("/v2/team/app/manifests/latest"));
    expect(pull.scope).toBe("repository:team/app:pull");
    const push = challengeOf(await call("/v2/team/app/blobs/uploads/", { method: "POST" }));
    expect(push.scope).toBe("repository:team/app:pull,push");
    const remove = challengeOf(await call(`/v2/team/app/manifests/sha256:${"a".repeat(64)}`, { method: "DELETE" }));
    expect(remove.scope).toBe("repository:team/app:delete");
    const catalog = challengeOf(await call("/v2/_catalog"));
    expect(catalog.scope).toBe("registry:catalog:*");
  });

  it("HEAD gets the challenge too, with no body", async () => {
    const response = await call("/v2/team/app/manifests/latest", { method: "HEAD" });
    expect(response.status).toBe(401);
    expect(challengeOf(response).scope).toBe("repository:team/app:pull");
    expect(await response.text()).toBe("");
  });
});

describe("GET /token (docker, podman, skopeo)", () => {
  it("issues a token with only the granted subset of the requested actions", async () => {
    const answer = await token("reader", "reader-pw", "repository:team/app:pull,push");
    expect(answer.token).toBe(answer.access_token);
    expect(answer.expires_in).toBe(300);
    expect(typeof answer.issued_at).toBe("string");
    const payload = claims(answer.token);
    expect(payload).toMatchObject({ sub: "reader", aud: SERVICE, iss: "edge-registry" });
    expect(payload.access).toEqual([{ type: "repository", name: "team/app", actions: ["pull"] }]);
    expect(Number(payload.exp) - Number(payload.iat)).toBe(300);
  });

  it("a token for team/app pulls from team/app", async () => {
    const manifest = await pushAsAdmin("team/app", "v1");
    const answer = await token("reader", "reader-pw", "repository:team/app:pull");
    const pulled = await call("/v2/team/app/manifests/v1", {
      headers: { ...bearer(String(answer.token)), Accept: MediaTypes.ociManifest },
    });
    expect(pulled.status).toBe(200);
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(manifest);
    expect((await call("/v2/", { headers: bearer(String(answer.token)) })).status).toBe(200);
  });

  it("a wrong password or an unknown user is 401", async () => {
    for (const [user, password] of [
      ["reader", "wrong"],
      ["nobody", "reader-pw"],
    ] as const) {
      const response = await call(`/token?service=${SERVICE}`, { headers: basic(user, password) });
      await expectCode(response, 401, "UNAUTHORIZED");
    }
  });

  it("docker login's token request (no scope) succeeds for a valid user", async () => {
    const answer = await token("ci", "ci-pw");
    expect(claims(answer.token).access).toEqual([]);
  });

  it("offline_token=true adds a refresh token, which POST grant_type=refresh_token exchanges", async () => {
    const response = await call(`/token?service=${SERVICE}&offline_token=true&scope=repository:team/app:pull`, {
      headers: basic("ci", "ci-pw"),
    });
    const answer = (await response.json()) as Record<string, string>;
    expect(typeof answer.refresh_token).toBe("string");
    const refreshed = await call("/token", {
      method: "POST",
      body: new URLSearchParams({
        grant_type: "refresh_token",
        refresh_token: answer.refresh_token ?? "",
        service: SERVICE,
        scope: "repository:team/app:pull,push",
        client_id: "test",
      }),
    });
    expect(refreshed.status).toBe(200);
    const next = (await refreshed.json()) as Record<string, string>;
    expect(claims(next.access_token).access).toEqual([
      { type: "repository", name: "team/app", actions: ["pull", "push"] },
    ]);
  });

  it("a token request for another service is refused", async () => {
    const response = await call("/token?service=elsewhere.example&scope=repository:team/app:pull", {
      headers: basic("ci", "ci-pw"),
    });
    await expectCode(response, 403, "DENIED");
  });
});

describe("POST /token (containerd)", () => {
  it("grant_type=password issues an access token, and a refresh token with access_type=offline", async () => {
    const response = await call("/token", {
      method: "POST",
      body: new URLSearchParams({
        grant_type: "password",
        username: "ci",
        password: "ci-pw",
        service: SERVICE,
        scope: "repository:team/app:pull,push repository:public/x:pull",
        client_id: "containerd-client",
        access_type: "offline",
      }),
    });
    expect(response.status).toBe(200);
    const answer = (await response.json()) as Record<string, string>;
    expect(claims(answer.access_token).access).toEqual([
      { type: "repository", name: "team/app", actions: ["pull", "push"] },
      { type: "repository", name: "public/x", actions: ["pull"] },
    ]);
    expect(typeof answer.refresh_token).toBe("string");
  });

  it("a wrong password is 401; an unknown grant type is 400", async () => {
    const wrong = await call("/token", {
      method: "POST",
      body: new URLSearchParams({ grant_type: "password", username: "ci", password: "nope", service: SERVICE }),
    });
    await expectCode(wrong, 401, "UNAUTHORIZED");
    const unknown = await call("/token", {
      method: "POST",
      body: new URLSearchParams({ grant_type: "client_credentials", service: SERVICE }),
    });
    expect(unknown.status).toBe(400);
  });
});

describe("policy", () => {
  it("a read-only user is denied push with 403 DENIED, by token or by Basic auth", async () => {
    const answer = await token("reader", "reader-pw", "repository:team/app:pull,push");
    const byToken = await call("/v2/team/app/blobs/uploads/", {
      method: "POST",
      headers: bearer(String(answer.token)),
    });
    await expectCode(byToken, 403, "DENIED");
    const byBasic = await call("/v2/team/app/blobs/uploads/", {
      method: "POST",
      headers: basic("reader", "reader-pw"),
    });
    await expectCode(byBasic, 403, "DENIED");
  });

  it("a token lacking a scope its user could have is 401 insufficient_scope, so the client asks again", async () => {
    const answer = await token("ci", "ci-pw", "repository:team/app:pull");
    const response = await call("/v2/team/app/blobs/uploads/", {
      method: "POST",
      headers: bearer(String(answer.token)),
    });
    expect(response.status).toBe(401);
    expect(challengeOf(response)).toMatchObject({
      scope: "repository:team/app:pull,push",
      error: "insufficient_scope",
    });
  });

  it("ci pushes to team/**, not elsewhere; admin deletes", async () => {
    const ci = basic("ci", "ci-pw");
    expect((await call("/v2/team/ci/blobs/uploads/", { method: "POST", headers: ci })).status).toBe(202);
    await expectCode(await call("/v2/other/ci/blobs/uploads/", { method: "POST", headers: ci }), 403, "DENIED");
    await pushAsAdmin("team/deletable", "v1");
    const digest = `sha256:${"d".repeat(64)}`;
    await expectCode(
      await call(`/v2/team/deletable/manifests/${digest}`, { method: "DELETE", headers: ci }),
      403,
      "DENIED",
    );
    const deleted = await call("/v2/team/deletable/manifests/v1", {
      method: "DELETE",
      headers: basic("admin", "admin-pw"),
    });
    expect(deleted.status).toBe(202);
  });

  it("anonymous pull works where configured, and only there", async () => {
    await pushAsAdmin("public/base", "v1");
    const pulled = await call("/v2/public/base/manifests/v1", { headers: { Accept: MediaTypes.ociManifest } });
    expect(pulled.status).toBe(200);
    expect((await call("/v2/public/base/tags/list")).status).toBe(200);
    await expectCode(await call("/v2/public/base/blobs/uploads/", { method: "POST" }), 401, "UNAUTHORIZED");
    await expectCode(await call("/v2/team/app/tags/list"), 401, "UNAUTHORIZED");
    // An anonymous token carries only what anonymous clients may do.
    const anonymous = await token(null, "", "repository:public/base:pull,push", "repository:team/app:pull");
    expect(claims(anonymous.token).access).toEqual([{ type: "repository", name: "public/base", actions: ["pull"] }]);
    const denied = await call("/v2/team/app/tags/list", { headers: bearer(String(anonymous.token)) });
    await expectCode(denied, 401, "UNAUTHORIZED");
  });

  it("a 401 for a scope names it in its detail (docker 20.10 retries a push on a bare UNAUTHORIZED)", async () => {
    const anonymous = await token(null, "", "repository:team/app:pull,push");
    for (const headers of [{}, bearer(String(anonymous.token))]) {
      const refused = await call("/v2/team/app/blobs/uploads/", { method: "POST", headers });
      expect(refused.status).toBe(401);
      const { errors } = (await refused.json()) as { errors: { code: string; detail?: unknown }[] };
      expect(errors[0]).toMatchObject({ code: "UNAUTHORIZED", detail: { scope: "repository:team/app:pull,push" } });
    }
  });

  it("the catalog needs registry:catalog:*", async () => {
    await expectCode(await call("/v2/_catalog", { headers: basic("reader", "reader-pw") }), 403, "DENIED");
    expect((await call("/v2/_catalog", { headers: basic("admin", "admin-pw") })).status).toBe(200);
    const answer = await token("admin", "admin-pw", "registry:catalog:*");
    expect((await call("/v2/_catalog", { headers: bearer(String(answer.token)) })).status).toBe(200);
  });

  it("a mount from a repository the client cannot pull starts a plain upload instead (202)", async () => {
    const bytes = utf8("secret layer");
    const digest = await sha256(bytes);
    const pushed = await call(`/v2/secret/app/blobs/uploads/?digest=${digest}`, {
      method: "POST",
      headers: basic("admin", "admin-pw"),
      body: bytes,
    });
    expect(pushed.status).toBe(201);
    const mount = await call(`/v2/team/ci-mount/blobs/uploads/?mount=${digest}&from=secret/app`, {
      method: "POST",
      headers: basic("ci", "ci-pw"),
    });
    expect(mount.status).toBe(202);
    const admin = await call(`/v2/team/admin-mount/blobs/uploads/?mount=${digest}&from=secret/app`, {
      method: "POST",
      headers: basic("admin", "admin-pw"),
    });
    expect(admin.status).toBe(201);
  });
});

describe("tokens that must not work", () => {
  it("a token for one repository never works for another", async () => {
    const answer = await token("admin", "admin-pw", "repository:team/app:pull,push,delete");
    const response = await call("/v2/team/other/tags/list", { headers: bearer(String(answer.token)) });
    expect(response.status).toBe(401);
    expect(challengeOf(response).error).toBe("insufficient_scope");
  });

  it("a tampered token (access widened, signature kept) is refused as invalid", async () => {
    const answer = await token("reader", "reader-pw", "repository:team/app:pull");
    const [header, , signature] = String(answer.token).split(".");
    const widened = { ...claims(answer.token), access: [{ type: "repository", name: "team/app", actions: ["push"] }] };
    const payload = btoa(JSON.stringify(widened)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
    const response = await call("/v2/team/app/tags/list", { headers: bearer(`${header}.${payload}.${signature}`) });
    expect(response.status).toBe(401);
    expect(challengeOf(response).error).toBe("invalid_token");
  });

  it("expired, wrong-audience, foreign-key and refresh tokens are refused as access tokens", async () => {
    const key = signingKey(authEnv);
    const now = Math.floor(Date.now() / 1000);
    const access = [{ type: "repository", name: "team/app", actions: ["pull"] }];
    const base = { iss: "edge-registry", sub: "reader", aud: SERVICE, iat: now - 10, nbf: now - 10, access };
    const forged = [
      await sign({ ...base, exp: now - 1 }, key, "HS256"),
      await sign({ ...base, exp: now + 300, aud: "elsewhere.example" }, key, "HS256"),
      await sign({ ...base, exp: now + 300 }, "not the registry's key", "HS256"),
      await sign({ ...base, exp: now + 300, use: "refresh" }, key, "HS256"),
    ];
    for (const jwt of forged) {
      const response = await call("/v2/team/app/tags/list", { headers: bearer(jwt) });
      expect(response.status).toBe(401);
      expect(challengeOf(response).error).toBe("invalid_token");
    }
  });

  it("a refresh token dies with its user's old password", async () => {
    const response = await call(`/token?service=${SERVICE}&offline_token=true`, { headers: basic("ci", "ci-pw") });
    const refresh = ((await response.json()) as Record<string, string>).refresh_token ?? "";
    const exchange = (bindings: Env) =>
      call(
        "/token",
        {
          method: "POST",
          body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: refresh, service: SERVICE }),
        },
        bindings,
      );
    expect((await exchange(authEnv)).status).toBe(200);
    const changed = {
      ...authEnv,
      AUTH_USERS: (authEnv.AUTH_USERS ?? "").replace(/^ci:.*$/m, `ci:${bcrypt.hashSync("new-ci-pw", 4)}`),
    } as Env;
    await expectCode(await exchange(changed), 401, "UNAUTHORIZED");
  });

  it("an access token dies with its user's password, at once", async () => {
    const answer = await token("ci", "ci-pw", "repository:team/app:pull");
    const request = (bindings: Env) =>
      call("/v2/team/app/tags/list", { headers: bearer(String(answer.token)) }, bindings);
    expect((await request(authEnv)).status).not.toBe(401);
    const changed = {
      ...authEnv,
      AUTH_USERS: (authEnv.AUTH_USERS ?? "").replace(/^ci:.*$/m, `ci:${bcrypt.hashSync("new-ci-pw", 4)}`),
    } as Env;
    const refused = await request(changed);
    expect(refused.status).toBe(401);
    expect(challengeOf(refused).error).toBe("invalid_token");
  });

  it("a token this isolate verified before still expires on time, and holds for its own service only", async () => {
    const key = signingKey(authEnv);
    const now = Math.floor(Date.now() / 1000);
    // An anonymous token for what anonymous clients may pull (no password binding to check).
    const access = [{ type: "repository", name: "public/app", actions: ["pull"] }];
    const jwt = await sign({ iss: "edge-registry", sub: "", aud: SERVICE, nbf: now - 5, exp: now + 1, access }, key);
    const pull = (base: string) => app.request(`${base}/v2/public/app/tags/list`, { headers: bearer(jwt) }, authEnv);
    expect((await pull(BASE)).status).not.toBe(401);
    // The same token sent to another host (another service, as AUTH_SERVICE is unset): refused.
    expect(challengeOf(await pull("http://elsewhere.test")).error).toBe("invalid_token");
    expect((await pull(BASE)).status).not.toBe(401);
    await new Promise((resolve) => setTimeout(resolve, (now + 1) * 1000 - Date.now() + 50));
    expect(challengeOf(await pull(BASE)).error).toBe("invalid_token");
  });

  it("an access token dies with its user, and a user re-created later does not revive it", async () => {
    const answer = await token("ci", "ci-pw", "repository:team/app:pull");
    const request = (bindings: Env) =>
      call("/v2/team/app/tags/list", { headers: bearer(String(answer.token)) }, bindings);
    const removed = { ...authEnv, AUTH_USERS: (authEnv.AUTH_USERS ?? "").replace(/^ci:.*$/m, "") } as Env;
    expect(challengeOf(await request(removed)).error).toBe("invalid_token");
    // Same name, same password: a new hash (bcrypt salts), so a new binding.
    const recreated = {
      ...authEnv,
      AUTH_USERS: (authEnv.AUTH_USERS ?? "").replace(/^ci:.*$/m, `ci:${bcrypt.hashSync("ci-pw", 4)}`),
    } as Env;
    expect(challengeOf(await request(recreated)).error).toBe("invalid_token");
  });

  it("a token signed with the registry's key but without exp is refused, access or refresh", async () => {
    const key = signingKey(authEnv);
    const now = Math.floor(Date.now() / 1000);
    const hash = /^ci:(.*)$/m.exec(authEnv.AUTH_USERS ?? "")?.[1] ?? "";
    const pwb = await passwordBinding(key, "ci", hash);
    const access = [{ type: "repository", name: "team/app", actions: ["pull"] }];
    const base = { iss: "edge-registry", sub: "ci", aud: SERVICE, iat: now - 10, nbf: now - 10, pwb };
    // The same claims with exp are accepted: only the missing exp is refused.
    const withExp = await sign({ ...base, access, exp: now + 300 }, key, "HS256");
    expect((await call("/v2/team/app/tags/list", { headers: bearer(withExp) })).status).not.toBe(401);
    const withoutExp = await sign({ ...base, access }, key, "HS256");
    const response = await call("/v2/team/app/tags/list", { headers: bearer(withoutExp) });
    expect(response.status).toBe(401);
    expect(challengeOf(response).error).toBe("invalid_token");
    const refresh = await sign({ ...base, use: "refresh" }, key, "HS256");
    const exchanged = await call("/token", {
      method: "POST",
      body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: refresh, service: SERVICE }),
    });
    await expectCode(exchanged, 401, "UNAUTHORIZED");
  });

  it("an access token is not a refresh token", async () => {
    const answer = await token("ci", "ci-pw", "repository:team/app:pull");
    const response = await call("/token", {
      method: "POST",
      body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: String(answer.token), service: SERVICE }),
    });
    await expectCode(response, 401, "UNAUTHORIZED");
  });

  it("a token outliving its user's rights shrinks with them", async () => {
    const answer = await token("ci", "ci-pw", "repository:team/app:pull,push");
    const demoted = {
      ...authEnv,
      AUTH_ACCESS: JSON.stringify(ACCESS.filter((rule) => !rule.users?.includes("ci"))),
    } as Env;
    const response = await call(
      "/v2/team/app/blobs/uploads/",
      { method: "POST", headers: bearer(String(answer.token)) },
      demoted,
    );
    await expectCode(response, 403, "DENIED");
  });
});

describe("Basic auth straight on /v2", () => {
  it("a valid user works without a token; a wrong password is 401 with the challenge", async () => {
    expect((await call("/v2/", { headers: basic("reader", "reader-pw") })).status).toBe(200);
    const wrong = await call("/v2/team/app/tags/list", { headers: basic("reader", "nope") });
    await expectCode(wrong, 401, "UNAUTHORIZED");
    expect(challengeOf(wrong).scope).toBe("repository:team/app:pull");
  });
});

describe("defaults", () => {
  it("without users and not running locally open, the registry is read-only: pulls work, writes are DENIED", async () => {
    const bare = { ...env, AUTH_MODE: undefined, AUTH_USERS: undefined } as Env;
    expect((await call("/v2/", {}, bare)).status).toBe(200);
    const manifest = await imageManifest("defaults/readonly");
    const put = await call(
      "/v2/defaults/readonly/manifests/v1",
      { method: "PUT", headers: { "Content-Type": MediaTypes.ociManifest }, body: JSON.stringify(manifest) },
      bare,
    );
    await expectCode(put, 403, "DENIED");
    expect((await call("/v2/defaults/readonly/blobs/uploads/", { method: "POST" }, bare)).status).toBe(403);
    // Reads work (the blobs were pushed by the open registry of the other tests); the denied tag is not there.
    const tags = await call("/v2/defaults/readonly/tags/list", {}, bare);
    expect(tags.status).toBe(200);
    expect(((await tags.json()) as { tags: string[] }).tags).toEqual([]);
  });

  it("AUTH_MODE=open (npm start without users) needs no credentials at all", async () => {
    const open = { ...env, AUTH_MODE: "open", AUTH_USERS: undefined } as Env;
    expect((await call("/v2/open/app/blobs/uploads/", { method: "POST" }, open)).status).toBe(202);
  });

  it("without users but with AUTH_ACCESS, only what the rules give anonymous clients can be read", async () => {
    await pushAsAdmin("team/hidden", "v1");
    await pushAsAdmin("public/shown", "v1");
    const noUsers = { ...authEnv, AUTH_USERS: undefined } as Env;
    expect(
      (await call("/v2/public/shown/manifests/v1", { headers: { Accept: MediaTypes.ociManifest } }, noUsers)).status,
    ).toBe(200);
    await expectCode(await call("/v2/team/hidden/manifests/v1", {}, noUsers), 403, "DENIED");
    await expectCode(await call("/v2/public/shown/blobs/uploads/", { method: "POST" }, noUsers), 403, "DENIED");
  });

  it("users without TOKEN_SECRET refuse every request, naming the setting", async () => {
    const keyless = { ...authEnv, TOKEN_SECRET: undefined } as Env;
    const response = await call("/v2/", {}, keyless);
    expect(response.status).toBe(500);
    expect(await response.text()).toMatch(/TOKEN_SECRET/);
  });

  it("settings that do not parse refuse every request rather than run open", async () => {
    const broken = { ...authEnv, AUTH_ACCESS: "{not json" } as Env;
    const response = await call("/v2/public/base/tags/list", {}, broken);
    expect(response.status).toBe(500);
    expect(await response.text()).toMatch(/AUTH_ACCESS/);
    const badUsers = { ...authEnv, AUTH_USERS: "alice:plaintext" } as Env;
    expect((await call("/v2/", {}, badUsers)).status).toBe(500);
  });
});
