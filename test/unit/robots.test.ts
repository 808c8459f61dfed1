import { createExecutionContext, env, waitOnExecutionContext } from "cloudflare:test";
import bcrypt from "bcryptjs";
import { afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import worker from "../../src/index";
import { auditSettled } from "../../src/audit/audit";
import { LAST_USED_INTERVAL_MS, ROBOT_CACHE_MS } from "../../src/auth/robots";
import type { RegistryEvent } from "../../src/events/event";
import { MediaTypes, sha256, utf8 } from "./helpers";

// Robot tokens (src/auth/robots.ts, src/routes/admin-tokens.ts): created and revoked at
// run time through /_admin/tokens, logging in with their name and secret wherever a
// password is taken, with grants of their own; revoked or expired, refused at once.

const ADMIN_TOKEN = "the robot test's admin token";
let authEnv: Env;

beforeAll(() => {
  authEnv = {
    ...env,
    AUTH_MODE: undefined,
    AUTH_USERS: [`alice:${bcrypt.hashSync("alice-pw", 4)}`].join("\n"),
    TOKEN_SECRET: "a test key of the registry, long and random in production",
    ADMIN_TOKEN,
    LOGIN_MAX_FAILURES: "3",
    LOGIN_MAX_FAILURES_PER_ADDRESS: "1000",
    LOGIN_LOCKOUT_SECONDS: "60",
  } as Env;
});

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
});

let address = 1;

async function request(path: string, init: RequestInit = {}, authorization?: string) {
  const headers = new Headers(init.headers);
  if (!headers.has("CF-Connecting-IP")) headers.set("CF-Connecting-IP", `198.51.100.${address}`);
  if (authorization) headers.set("Authorization", authorization);
  const ctx = createExecutionContext();
  const response = await worker.fetch(
    new Request(new URL(path, "http://registry.test"), { ...init, headers }),
    authEnv,
    ctx,
  );
  await waitOnExecutionContext(ctx);
  return response;
}

const admin = `Bearer ${ADMIN_TOKEN}`;
const basic = (user: string, password: string) => `Basic ${btoa(`${user}:${password}`)}`;

async function create(name: string, access: string[], expiresIn?: number) {
  const response = await request(
    "/_admin/tokens",
    {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name, access, ...(expiresIn === undefined ? {} : { expiresIn }) }),
    },
    admin,
  );
  return { status: response.status, body: (await response.json()) as { name: string; secret: string } };
}

async function list() {
  const response = await request("/_admin/tokens", {}, admin);
  expect(response.status).toBe(200);
  return ((await response.json()) as { tokens: { name: string; lastUsed: string | null; access: unknown }[] }).tokens;
}

async function token(authorization: string, scope: string) {
  const response = await request(`/token?service=registry.test&scope=${encodeURIComponent(scope)}`, {}, authorization);
  return { status: response.status, body: (await response.json()) as { token: string; expires_in: number } };
}

async function pushBlob(name: string, authorization: string, seed: string) {
  const bytes = utf8(`robot blob ${seed}`);
  const digest = await sha256(bytes);
  const response = await request(
    `/v2/${name}/blobs/uploads/?digest=${digest}`,
    { method: "POST", body: bytes },
    authorization,
  );
  return response.status;
}

async function pushManifest(name: string, authorization: string, seed: string) {
  const config = utf8(JSON.stringify({ architecture: "amd64", os: "linux", seed }));
  const configDigest = await sha256(config);
  expect(
    (
      await request(
        `/v2/${name}/blobs/uploads/?digest=${configDigest}`,
        { method: "POST", body: config },
        authorization,
      )
    ).status,
  ).toBe(201);
  const bytes = utf8(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.ociManifest,
      config: { mediaType: MediaTypes.ociConfig, digest: configDigest, size: config.byteLength },
      layers: [],
    }),
  );
  return request(
    `/v2/${name}/manifests/v1`,
    { method: "PUT", headers: { "Content-Type": MediaTypes.ociManifest }, body: bytes },
    authorization,
  );
}

describe("robot tokens", () => {
  it("log in by Basic and the password grant, push where granted, and are refused elsewhere", async () => {
    address++;
    const { status, body } = await create("ci-deploy", ["team/**:pull,push"]);
    expect(status).toBe(201);
    expect(body.name).toBe("ci-deploy");
    expect(body.secret).toMatch(/^ert_[A-Za-z0-9_-]{43}$/);

    // Basic on /v2.
    const credentials = basic("ci-deploy", body.secret);
    expect((await request("/v2/", {}, credentials)).status).toBe(200);
    expect((await pushManifest("team/app", credentials, "basic")).status).toBe(201);
    expect(await pushBlob("other/app", credentials, "basic")).toBe(403);

    // GET /token with Basic.
    const issued = await token(credentials, "repository:team/web:pull,push repository:other/app:push");
    expect(issued.status).toBe(200);
    expect(issued.body.expires_in).toBeLessThanOrEqual(300);
    const bearer = `Bearer ${issued.body.token}`;
    expect((await pushManifest("team/web", bearer, "token")).status).toBe(201);
    expect(await pushBlob("other/app", bearer, "token")).toBe(403);

    // POST /token with the password grant.
    const form = new URLSearchParams({
      grant_type: "password",
      username: "ci-deploy",
      password: body.secret,
      scope: "repository:team/api:pull,push",
      service: "registry.test",
      access_type: "offline",
    });
    const posted = await request("/token", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: form.toString(),
    });
    expect(posted.status).toBe(200);
    const postedBody = (await posted.json()) as { access_token: string; refresh_token?: string };
    expect(postedBody.refresh_token).toBeUndefined();
    expect((await pushManifest("team/api", `Bearer ${postedBody.access_token}`, "form")).status).toBe(201);

    // The changes name the robot.
    await auditSettled();
    const audit = await request("/_admin/audit?actor=ci-deploy", {}, admin);
    const events = ((await audit.json()) as { events: RegistryEvent[] }).events;
    expect(events.some((event) => event.action === "manifest.put" && event.repository === "team/web")).toBe(true);
    expect(events.every((event) => event.actor.kind === "robot" && event.actor.name === "ci-deploy")).toBe(true);
    expect(events.some((event) => event.action === "login.success")).toBe(true);
  });

  it("is refused at once once revoked: its access token and a new login", async () => {
    address++;
    const { body } = await create("revoked-bot", ["rev/**:pull,push"]);
    const credentials = basic("revoked-bot", body.secret);
    const issued = await token(credentials, "repository:rev/app:pull,push");
    const bearer = `Bearer ${issued.body.token}`;
    expect(await pushBlob("rev/app", bearer, "before")).toBe(201);

    const revoked = await request("/_admin/tokens/revoked-bot", { method: "DELETE" }, admin);
    expect(revoked.status).toBe(204);
    expect(await pushBlob("rev/app", bearer, "after")).toBe(401);
    expect(await pushBlob("rev/app", credentials, "after")).toBe(401);
    expect((await token(credentials, "repository:rev/app:pull")).status).toBe(401);
    expect((await list()).some((robot) => robot.name === "revoked-bot")).toBe(false);
    expect((await request("/_admin/tokens/revoked-bot", { method: "DELETE" }, admin)).status).toBe(404);

    // The audit log has who made and revoked it (the admin token: system/admin).
    await auditSettled();
    const audit = await request("/_admin/audit?action=robot.*", {}, admin);
    const rows = ((await audit.json()) as { events: RegistryEvent[] }).events.filter(
      (event) => event.detail?.robot === "revoked-bot",
    );
    expect(rows.map((event) => event.action)).toEqual(["robot.revoke", "robot.create"]);
    expect(rows[1]?.detail).toMatchObject({ access: "rev/**:pull,push" });
    expect(rows.every((event) => event.actor.kind === "system" && event.actor.name === "admin")).toBe(true);
    expect(JSON.stringify(rows)).not.toContain(body.secret);
  });

  it("is refused once revoked in another isolate, within the cache's second", async () => {
    address++;
    const { body } = await create("elsewhere-bot", ["far/**:pull,push"]);
    const bearer = `Bearer ${(await token(basic("elsewhere-bot", body.secret), "repository:far/app:pull,push")).body.token}`;
    expect(await pushBlob("far/app", bearer, "before")).toBe(201);
    // Another isolate revokes it: the row goes, this isolate's memory stays.
    await env.AUDIT.prepare("DELETE FROM robots WHERE name = ?").bind("elsewhere-bot").run();
    await new Promise((resolve) => setTimeout(resolve, ROBOT_CACHE_MS + 50));
    expect(await pushBlob("far/app", bearer, "after")).toBe(401);
  });

  it("refuses an expired robot, and gives tokens no longer than its life", async () => {
    address++;
    const { body } = await create("short-bot", ["short/**:pull,push"], 2);
    const credentials = basic("short-bot", body.secret);
    const issued = await token(credentials, "repository:short/app:pull,push");
    expect(issued.body.expires_in).toBeLessThanOrEqual(2);
    await new Promise((resolve) => setTimeout(resolve, 2100));
    expect(await pushBlob("short/app", credentials, "late")).toBe(401);
    expect((await token(credentials, "repository:short/app:pull")).status).toBe(401);
  });

  it("counts wrong secrets toward the login limits", async () => {
    address++;
    const { body } = await create("guessed-bot", ["g/**:pull"]);
    for (let attempt = 0; attempt < 3; attempt++) {
      expect((await token(basic("guessed-bot", "ert_wrong"), "repository:g/app:pull")).status).toBe(401);
    }
    // Locked: the right secret is refused too, for now.
    expect((await token(basic("guessed-bot", body.secret), "repository:g/app:pull")).status).toBe(429);
    await auditSettled();
    const audit = await request("/_admin/audit?actor=guessed-bot&action=login.failure", {}, admin);
    const events = ((await audit.json()) as { events: RegistryEvent[] }).events;
    expect(events.length).toBeGreaterThanOrEqual(3);
    expect(events.every((event) => event.actor.kind === "robot")).toBe(true);
  });

  it("lists last use, written at most once a minute", async () => {
    address++;
    const { body } = await create("busy-bot", ["busy/**:pull"]);
    expect((await list()).find((robot) => robot.name === "busy-bot")?.lastUsed).toBeNull();
    const credentials = basic("busy-bot", body.secret);
    expect((await request("/v2/", {}, credentials)).status).toBe(200);
    const first = (await list()).find((robot) => robot.name === "busy-bot")?.lastUsed;
    expect(first).not.toBeNull();
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect((await request("/v2/", {}, credentials)).status).toBe(200);
    expect((await list()).find((robot) => robot.name === "busy-bot")?.lastUsed).toBe(first);
    // A minute on: written again.
    const now = Date.now();
    vi.spyOn(Date, "now").mockReturnValue(now + LAST_USED_INTERVAL_MS + 1000);
    expect((await request("/v2/", {}, credentials)).status).toBe(200);
    const later = (await list()).find((robot) => robot.name === "busy-bot")?.lastUsed;
    expect(Date.parse(later ?? "")).toBeGreaterThan(Date.parse(first ?? ""));
  });

  it("stores secrets hashed, and refuses names of users, bad names and bad access", async () => {
    const { body } = await create("hashed-bot", ["h/**:pull"]);
    const rows = await env.AUDIT.prepare("SELECT * FROM robots WHERE name = ?").bind("hashed-bot").all();
    const text = JSON.stringify(rows.results);
    expect(text).not.toContain(body.secret);
    expect(text).not.toContain(body.secret.slice(4));
    expect(rows.results[0]?.secret_hash).toMatch(/^[0-9a-f]{64}$/);

    expect((await create("alice", ["**:pull"])).status).toBe(409);
    expect((await create("hashed-bot", ["**:pull"])).status).toBe(409);
    expect((await create("Bad Name", ["**:pull"])).status).toBe(400);
    expect((await create("ok-name", ["**:fly"])).status).toBe(400);
    expect((await create("ok-name", [])).status).toBe(400);
    // A user's password is never taken for a robot's, nor a robot's secret for a user's.
    expect((await request("/v2/", {}, basic("alice", body.secret))).status).toBe(401);
  });

  it("is behind the admin token", async () => {
    expect((await request("/_admin/tokens")).status).toBe(403);
    expect((await request("/_admin/tokens", {}, "Bearer wrong")).status).toBe(403);
  });

  it("are listed on an administrator's page, with a revoke button behind the CSRF token", async () => {
    address++;
    const { body } = await create("paged-bot", ["p/**:pull"]);
    expect((await request("/robots")).status).toBe(403);

    const form = await request("/login");
    const browser = /registry_csrf=[0-9a-f]{32}/.exec(form.headers.get("Set-Cookie") ?? "")?.[0] ?? "";
    const loginCsrf = /name="csrf" value="([0-9a-f]+)"/.exec(await form.text())?.[1] ?? "";
    const login = await request("/login", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", Cookie: browser },
      body: new URLSearchParams({ username: "alice", password: "alice-pw", csrf: loginCsrf }).toString(),
      redirect: "manual",
    });
    expect(login.status).toBe(303);
    // A robot cannot log in to the pages.
    const robotLogin = await request("/login", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", Cookie: browser },
      body: new URLSearchParams({ username: "paged-bot", password: body.secret, csrf: loginCsrf }).toString(),
      redirect: "manual",
    });
    expect(robotLogin.status).toBe(401);
    const cookie = `${browser}; ${(login.headers.get("Set-Cookie") ?? "").split(";")[0]}`;
    const page = await request("/robots", { headers: { Cookie: cookie } });
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain("paged-bot");
    expect(html).toContain("p/**:pull");
    expect(html).not.toContain(body.secret);
    const csrf = /name="csrf" value="([0-9a-f]+)"/.exec(html)?.[1] ?? "";
    const revoke = (token: string) =>
      request("/robots/revoke", {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded", Cookie: cookie },
        body: new URLSearchParams({ name: "paged-bot", csrf: token }).toString(),
        redirect: "manual",
      });
    expect((await revoke("0".repeat(64))).status).toBe(403);
    expect((await request("/v2/", {}, basic("paged-bot", body.secret))).status).toBe(200);
    expect((await revoke(csrf)).status).toBe(303);
    expect((await list()).some((robot) => robot.name === "paged-bot")).toBe(false);
    await auditSettled();
    const audit = await request("/_admin/audit?action=robot.revoke", {}, admin);
    const revokedBy = ((await audit.json()) as { events: RegistryEvent[] }).events.find(
      (event) => event.detail?.robot === "paged-bot",
    );
    expect(revokedBy?.actor).toEqual({ kind: "user", name: "alice" });
    expect((await request("/v2/", {}, basic("paged-bot", body.secret))).status).toBe(401);
  });

  it("costs a robot's requests at most one D1 read a second per isolate (Server-Timing)", async () => {
    address++;
    const { body } = await create("metered-bot", ["m/**:pull"]);
    const bearer = `Bearer ${(await token(basic("metered-bot", body.secret), "repository:m/app:pull")).body.token}`;
    const d1Calls = (response: Response) =>
      Number(/d1;dur=[\d.]+;desc="(\d+)"/.exec(response.headers.get("Server-Timing") ?? "")?.[1] ?? "0");
    await new Promise((resolve) => setTimeout(resolve, ROBOT_CACHE_MS + 50));
    const first = await request("/v2/m/app/tags/list", {}, bearer);
    expect(first.status).toBe(404);
    expect(d1Calls(first)).toBe(1);
    for (let index = 0; index < 5; index++) {
      expect(d1Calls(await request("/v2/m/app/tags/list", {}, bearer))).toBe(0);
    }
    // Basic with the secret on each request: the same, and no limiter call once a login was let through.
    const credentials = basic("metered-bot", body.secret);
    const doCalls = (response: Response) =>
      Number(/do;dur=[\d.]+;desc="(\d+)"/.exec(response.headers.get("Server-Timing") ?? "")?.[1] ?? "0");
    expect((await request("/v2/m/app/tags/list", {}, credentials)).status).toBe(404);
    for (let index = 0; index < 5; index++) {
      const response = await request("/v2/m/app/tags/list", {}, credentials);
      expect(d1Calls(response)).toBe(0);
      expect(doCalls(response)).toBe(0);
    }
  });
});
