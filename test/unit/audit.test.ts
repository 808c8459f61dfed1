import { createExecutionContext, env, waitOnExecutionContext } from "cloudflare:test";
import bcrypt from "bcryptjs";
import { afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import worker from "../../src/index";
import { auditExtension, auditSettled, pruneAudit } from "../../src/audit/audit";
import { AuditLog } from "../../src/audit/audit-log";
import type { RegistryEvent } from "../../src/events/event";
import { parseDigest } from "../../src/oci/digest";
import { Meter, runMetered } from "../../src/registry/meter";
import { MediaTypes, pushImageWith } from "./helpers";

// The audit log (src/audit; docs/architecture.md, "Audit log"): a row in D1 for every
// committed change and every login, with who, from where and with what client; queried
// newest first by the operators (GET /_admin/audit) and shown on a repository's page.
// Rows are written after the answer: each test waits for them (auditSettled).

const ADMIN_TOKEN = "the audit test's admin token";
let authEnv: Env;

beforeAll(() => {
  authEnv = {
    ...env,
    AUTH_MODE: undefined,
    AUTH_USERS: [`alice:${bcrypt.hashSync("alice-pw", 4)}`, `bob:${bcrypt.hashSync("bob-pw", 4)}`].join("\n"),
    TOKEN_SECRET: "a test key of the registry, long and random in production",
    AUTH_ACCESS: JSON.stringify([
      { repositories: ["**"], users: ["*"], actions: ["pull", "push", "delete"] },
      { repositories: ["audit-public/**"], anonymous: true, actions: ["pull"] },
    ]),
    ADMIN_TOKEN,
    LOGIN_MAX_FAILURES: "1000",
    LOGIN_MAX_FAILURES_PER_ADDRESS: "1000",
  } as Env;
});

afterEach(() => {
  vi.restoreAllMocks();
});

const CLIENT = { "CF-Connecting-IP": "203.0.113.7", "User-Agent": "audit-test-client/1.0" };

/** A request through the Worker's fetch handler (as `user` with Basic auth, when given), its background work done. */
async function request(path: string, init: RequestInit = {}, user?: "alice" | "bob", settings = authEnv) {
  const headers = new Headers(init.headers);
  for (const [name, value] of Object.entries(CLIENT)) if (!headers.has(name)) headers.set(name, value);
  if (user) headers.set("Authorization", `Basic ${btoa(`${user}:${user}-pw`)}`);
  const ctx = createExecutionContext();
  const response = await worker.fetch(
    new Request(new URL(path, "http://registry.test"), { ...init, headers }),
    settings,
    ctx,
  );
  await waitOnExecutionContext(ctx);
  return response;
}

/** Pushes a one-layer image as `user` under `reference` (more tags with `?tag=`), and returns its digests. */
function push(user: "alice" | "bob", name: string, reference: string, seed: string) {
  return pushImageWith((path, init) => request(path, init, user), name, reference, seed);
}

/** GET /_admin/audit with `query`, the admin token presented. */
async function audit(query: Record<string, string> = {}, token = ADMIN_TOKEN) {
  await auditSettled();
  const response = await request(`/_admin/audit?${new URLSearchParams(query)}`, {
    headers: { Authorization: `Bearer ${token}` },
  });
  return { response, body: (await response.json()) as { events: RegistryEvent[]; next?: string } };
}

async function events(query: Record<string, string>): Promise<RegistryEvent[]> {
  const { response, body } = await audit(query);
  expect(response.status).toBe(200);
  return body.events;
}

/** An event of `time` for rows written straight to the log. */
function row(time: number, overrides: Partial<RegistryEvent> = {}): RegistryEvent {
  return {
    id: crypto.randomUUID(),
    time,
    action: "tag.delete",
    repository: "audit/rows",
    tags: ["t"],
    actor: { kind: "user", name: "carol" },
    ...overrides,
  };
}

describe("the audit log records changes", () => {
  it("a push: each blob commit and the manifest with its tags, with the user, address and user agent", async () => {
    const pushed = await push("alice", "audit/push", "v1?tag=latest", "push");
    const rows = await events({ repository: "audit/push" });
    expect(rows.map((event) => [event.action, event.digest, event.tags])).toEqual([
      ["manifest.put", pushed.digest, ["v1", "latest"]],
      ["blob.commit", pushed.layerDigest, undefined],
      ["blob.commit", pushed.configDigest, undefined],
    ]);
    for (const event of rows) {
      expect(event.actor).toEqual({ kind: "user", name: "alice" });
      expect(event.address).toBe("203.0.113.7");
      expect(event.userAgent).toBe("audit-test-client/1.0");
      expect(event.requestId).toBeTruthy();
    }
    expect(rows[0]).toMatchObject({ mediaType: MediaTypes.ociManifest, size: pushed.size });
  });

  it("a tag move (the push that moved it), a tag delete and a manifest delete, each as its own row with the actor", async () => {
    const first = await push("alice", "audit/moves", "v1?tag=keep", "first");
    const second = await push("bob", "audit/moves", "v1", "second");
    expect((await request("/v2/audit/moves/manifests/v1", { method: "DELETE" }, "bob")).status).toBe(202);
    expect((await request(`/v2/audit/moves/manifests/${first.digest}`, { method: "DELETE" }, "alice")).status).toBe(
      202,
    );
    const rows = await events({ repository: "audit/moves" });
    const changes = rows.filter((event) => event.action !== "blob.commit");
    expect(changes.map((event) => ({ action: event.action, actor: event.actor.name, tags: event.tags }))).toEqual([
      { action: "manifest.delete", actor: "alice", tags: ["keep"] },
      { action: "tag.delete", actor: "bob", tags: ["v1"] },
      { action: "manifest.put", actor: "bob", tags: ["v1"] },
      { action: "manifest.put", actor: "alice", tags: ["v1", "keep"] },
    ]);
    // The log wants no `tag.move` (it costs a read of each tag a push sets): the push that
    // moved v1 is in it, naming the manifest v1 named from then on, after alice's.
    expect(changes[2]).toMatchObject({ digest: second.digest });
    expect(changes[3]).toMatchObject({ digest: first.digest });
    expect(changes[0]?.digest).toBe(first.digest);
  });

  it("the registry's own work under its own names (collector, mirror); changes told together share one D1 call", async () => {
    const [listener] = auditExtension.listeners?.(authEnv) ?? [];
    const digest = parseDigest(`sha256:${"ab".repeat(32)}`);
    const meter = new Meter();
    await runMetered(meter, async () => {
      await listener?.changed(
        { action: "collect", kind: "tag", repository: "audit/own", digest, tag: "old" },
        { actor: { kind: "collector", name: "collector" }, requestId: "run-1" },
      );
      await listener?.changed(
        { action: "mirror.store", repository: "audit/own", digest, kind: "blob", size: 3 },
        { actor: { kind: "mirror", name: "mirror" }, requestId: "ray-2", address: "192.0.2.4" },
      );
    });
    await auditSettled();
    expect(meter.header()).toMatch(/d1;dur=[\d.]+;desc="1"/);
    expect(await events({ repository: "audit/own" })).toMatchObject([
      { action: "mirror.store", actor: { kind: "mirror", name: "mirror" }, detail: { kind: "blob" }, size: 3 },
      { action: "collect", actor: { kind: "collector", name: "collector" }, tags: ["old"], requestId: "run-1" },
    ]);
  });
});

describe("the audit log records logins", () => {
  it("a failed and a successful login at the token endpoint, with the name tried, address and user agent", async () => {
    const wrong = await request("/token?service=registry.test", {
      headers: { Authorization: `Basic ${btoa("mallory:guess")}`, "User-Agent": "podman/5.0" },
    });
    expect(wrong.status).toBe(401);
    const right = await request("/token?service=registry.test", {
      headers: { Authorization: `Basic ${btoa("bob:bob-pw")}`, "CF-Connecting-IP": "2001:db8::5" },
    });
    expect(right.status).toBe(200);
    const rows = await events({ action: "login.*" });
    expect(rows.slice(0, 2)).toMatchObject([
      {
        action: "login.success",
        actor: { kind: "user", name: "bob" },
        address: "2001:db8::5",
        userAgent: "audit-test-client/1.0",
        detail: { via: "token" },
      },
      {
        action: "login.failure",
        actor: { kind: "user", name: "mallory" },
        address: "203.0.113.7",
        userAgent: "podman/5.0",
        detail: { via: "token", reason: "password" },
      },
    ]);
  });

  it("Basic auth on /v2: a wrong password is a failed login; a right one, sent with every request, is not a row", async () => {
    const before = (await events({ action: "login.*", actor: "alice" })).length;
    expect((await request("/v2/", {}, "alice")).status).toBe(200);
    const refused = await request("/v2/", { headers: { Authorization: `Basic ${btoa("alice:nope")}` } });
    expect(refused.status).toBe(401);
    const rows = await events({ action: "login.*", actor: "alice" });
    expect(rows.length).toBe(before + 1);
    expect(rows[0]).toMatchObject({ action: "login.failure", detail: { via: "basic", reason: "password" } });
  });
  it("at the web pages' login, failed and successful", async () => {
    const form = await request("/login");
    const browser = /registry_csrf=[0-9a-f]{32}/.exec(form.headers.get("Set-Cookie") ?? "")?.[0] ?? "";
    const csrf = /name="csrf" value="([0-9a-f]+)"/.exec(await form.text())?.[1] ?? "";
    const logIn = (password: string) =>
      request("/login", {
        method: "POST",
        headers: {
          "Content-Type": "application/x-www-form-urlencoded",
          Origin: "http://registry.test",
          Cookie: browser,
          "User-Agent": "Mozilla/5.0 (audit test)",
        },
        body: new URLSearchParams({ username: "alice", password, csrf }).toString(),
        redirect: "manual",
      });
    expect((await logIn("wrong")).status).toBe(401);
    expect((await logIn("alice-pw")).status).toBe(303);
    const rows = await events({ action: "login.*", actor: "alice" });
    expect(rows.slice(0, 2)).toMatchObject([
      { action: "login.success", detail: { via: "web" }, userAgent: "Mozilla/5.0 (audit test)" },
      { action: "login.failure", detail: { via: "web", reason: "password" }, address: "203.0.113.7" },
    ]);
  });

  it("a failure that locks the name, but not the refusals of a lock this isolate knows (they cost no write)", async () => {
    const strict = { ...authEnv, LOGIN_MAX_FAILURES: "1" } as Env;
    const attempt = () =>
      request(
        "/token?service=registry.test",
        { headers: { Authorization: `Basic ${btoa("lockme:guessing")}`, "CF-Connecting-IP": "198.51.100.9" } },
        undefined,
        strict,
      );
    expect((await attempt()).status).toBe(401);
    expect((await attempt()).status).toBe(429);
    expect((await attempt()).status).toBe(429);
    const rows = await events({ action: "login.failure", actor: "lockme" });
    expect(rows.map((event) => [event.address, event.detail?.reason])).toEqual([["198.51.100.9", "password"]]);
  });
});

describe("GET /_admin/audit", () => {
  it("filters by repository, actor, action (one or a family) and time, newest first", async () => {
    const log = new AuditLog(env.AUDIT);
    const t0 = Date.parse("2026-01-10T00:00:00Z");
    await log.append([
      row(t0, { repository: "audit/filter-a", action: "manifest.put", actor: { kind: "user", name: "dan" } }),
      row(t0 + 1000, { repository: "audit/filter-b", action: "tag.delete", actor: { kind: "user", name: "erin" } }),
      row(t0 + 2000, { repository: "audit/filter-a", action: "tag.move", actor: { kind: "user", name: "erin" } }),
      row(t0 + 3000, {
        repository: "audit/filter-a",
        action: "tag.delete",
        actor: { kind: "collector", name: "collector" },
      }),
    ]);
    const summary = (rows: RegistryEvent[]) => rows.map((event) => `${event.action} ${event.actor.name}`);
    const window = { since: "2026-01-10T00:00:00Z", until: String(t0 + 10_000) };
    expect(summary(await events({ ...window, repository: "audit/filter-a" }))).toEqual([
      "tag.delete collector",
      "tag.move erin",
      "manifest.put dan",
    ]);
    expect(summary(await events({ ...window, actor: "erin" }))).toEqual(["tag.move erin", "tag.delete erin"]);
    expect(summary(await events({ ...window, action: "tag.delete" }))).toEqual([
      "tag.delete collector",
      "tag.delete erin",
    ]);
    expect(summary(await events({ ...window, action: "tag.*", repository: "audit/filter-a" }))).toEqual([
      "tag.delete collector",
      "tag.move erin",
    ]);
    // since inclusive, until exclusive; ISO times and ms alike.
    expect(
      summary(await events({ since: new Date(t0 + 1000).toISOString(), until: String(t0 + 3000), actor: "erin" })),
    ).toEqual(["tag.move erin", "tag.delete erin"]);
    expect(summary(await events({ since: String(t0 + 1001), until: String(t0 + 3000) }))).toEqual(["tag.move erin"]);
  });

  it("pages newest first through an opaque cursor, rows of one millisecond in the order they were written", async () => {
    const time = Date.parse("2026-02-01T00:00:00Z");
    const written = Array.from({ length: 7 }, (_, index) =>
      row(time + (index < 4 ? 0 : index), { repository: "audit/pages", tags: [`t${index}`] }),
    );
    await new AuditLog(env.AUDIT).append(written);
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const { response, body } = await audit({ repository: "audit/pages", limit: "3", ...(cursor ? { cursor } : {}) });
      expect(response.status).toBe(200);
      expect(body.events.length).toBeLessThanOrEqual(3);
      seen.push(...body.events.map((event) => event.tags?.[0] ?? ""));
      cursor = body.next;
      pages++;
    } while (cursor !== undefined && pages < 10);
    expect(pages).toBe(3);
    expect(seen).toEqual(["t6", "t5", "t4", "t3", "t2", "t1", "t0"]);
  });

  it("caps limit at 1000 and refuses a limit, time or cursor it cannot read", async () => {
    const time = Date.parse("2025-06-01T00:00:00Z");
    await new AuditLog(env.AUDIT).append(
      Array.from({ length: 1005 }, (_, index) => row(time + index, { repository: "audit/many" })),
    );
    const { response, body } = await audit({ repository: "audit/many", limit: "5000" });
    expect(response.status).toBe(200);
    expect(body.events.length).toBe(1000);
    expect(body.next).toBeDefined();
    const rest = await audit({ repository: "audit/many", limit: "5000", cursor: body.next ?? "" });
    expect(rest.body.events.length).toBe(5);
    expect(rest.body.next).toBeUndefined();
    const refused: Record<string, string>[] = [
      { limit: "0" },
      { limit: "ten" },
      { since: "yesterday" },
      { cursor: "bm90IG9uZQ" },
    ];
    for (const query of refused) {
      expect((await audit(query)).response.status, JSON.stringify(query)).toBe(400);
    }
  });

  it("requires the admin token (and does not exist without one)", async () => {
    expect((await audit({}, "wrong")).response.status).toBe(403);
    expect((await request("/_admin/audit")).status).toBe(403);
    expect((await request("/_admin/audit", {}, "alice")).status).toBe(403);
    const withoutToken = await request(
      "/_admin/audit",
      { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } },
      undefined,
      {
        ...authEnv,
        ADMIN_TOKEN: undefined,
      } as Env,
    );
    expect(withoutToken.status).toBe(404);
  });
});

describe("retention", () => {
  it("the prune removes the rows older than AUDIT_RETENTION_DAYS (default 90) and keeps the rest", async () => {
    const now = Date.now();
    const day = 86_400_000;
    const aged = (days: number) => row(now - days * day, { repository: "audit/retention", tags: [`${days}d`] });
    await new AuditLog(env.AUDIT).append([aged(400), aged(91), aged(89), aged(10), aged(0)]);
    const kept = async () => (await events({ repository: "audit/retention" })).map((event) => event.tags?.[0] ?? "");
    expect(await pruneAudit(authEnv, now)).toBeGreaterThanOrEqual(2);
    expect(await kept()).toEqual(["0d", "10d", "89d"]);
    await pruneAudit({ ...authEnv, AUDIT_RETENTION_DAYS: "7" } as Env, now);
    expect(await kept()).toEqual(["0d"]);
  });
});

describe("when D1 fails", () => {
  it("a push and a login still succeed; the lost rows are logged; the query API is a 503", async () => {
    const logged = vi.spyOn(console, "error").mockImplementation(() => undefined);
    await auditSettled();
    await env.AUDIT.exec("ALTER TABLE audit RENAME TO audit_away");
    try {
      await push("alice", "audit/d1-down", "v1", "d1 down");
      const login = await request("/token?service=registry.test", {
        headers: { Authorization: `Basic ${btoa("bob:bob-pw")}` },
      });
      expect(login.status).toBe(200);
      await auditSettled();
      expect(logged.mock.calls.some(([message]) => /^audit: \d+ rows lost/.test(String(message)))).toBe(true);
      const { response } = await audit({ repository: "audit/d1-down" });
      expect(response.status).toBe(503);
      // The repository page still answers, without its activity.
      const page = await request("/repositories/audit/d1-down", {}, undefined, env);
      expect(page.status).toBe(200);
      expect(await page.text()).toContain("The activity cannot be read just now.");
    } finally {
      await env.AUDIT.exec("ALTER TABLE audit_away RENAME TO audit");
    }
    // The pulls are unaffected and the log goes on.
    expect((await request("/v2/audit/d1-down/manifests/v1", {}, "alice")).status).toBe(200);
    expect(await events({ repository: "audit/d1-down" })).toEqual([]);
  });
});

describe("the repository page", () => {
  it("lists the repository's recent activity, escaped, to those who may pull it, in one D1 query", async () => {
    const pushed = await push("alice", "audit-public/app", "v1", "page");
    expect((await request("/v2/audit-public/app/manifests/v1", { method: "DELETE" }, "bob")).status).toBe(202);
    await new AuditLog(env.AUDIT).append([
      row(Date.now() + 1000, {
        repository: "audit-public/app",
        actor: { kind: "user", name: "<img src=x onerror=alert(1)>" },
        tags: ["<b>bold</b>"],
      }),
    ]);
    await auditSettled();
    const response = await request("/repositories/audit-public/app");
    expect(response.status).toBe(200);
    expect(response.headers.get("Server-Timing")).toMatch(/d1;dur=[\d.]+;desc="1"/);
    const html = await response.text();
    const activity = html.slice(html.indexOf("Recent activity"));
    expect(activity).toContain("&lt;img src=x onerror=alert(1)&gt;");
    expect(activity).toContain("&lt;b&gt;bold&lt;/b&gt;");
    expect(activity).not.toContain("<img src=x");
    expect(activity).not.toContain("<b>bold");
    const actions = [...activity.matchAll(/data-action="([^"]+)"/g)].map((match) => match[1]);
    expect(actions).toEqual(["tag.delete", "tag.delete", "manifest.put", "blob.commit", "blob.commit"]);
    expect(activity).toContain(pushed.digest.slice(0, 19));
    expect(activity).toMatch(/>bob<\/td>/);
    expect(activity).toMatch(/>alice<\/td>/);
    // Nobody who may not pull it sees the page, or its activity.
    const hidden = await push("alice", "audit/private", "v1", "hidden");
    expect(hidden.digest).toBeTruthy();
    const refused = await request("/repositories/audit/private");
    expect(refused.status).toBe(404);
    expect(await refused.text()).not.toContain("Recent activity");
  });
});
