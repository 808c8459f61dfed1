import { createExecutionContext, env, waitOnExecutionContext } from "cloudflare:test";
import bcrypt from "bcryptjs";
import { beforeAll, describe, expect, it } from "vitest";
import { app } from "../../src/app";
import { servePull } from "../../src/routes/pull-path";
import { MediaTypes, pushImageWith, type Send } from "./helpers";

/**
 * The pull path (src/routes/pull-path.ts): a pull's requests whose authorization is known
 * are answered without Hono. It must answer exactly as the routes through Hono do, and
 * only requests a token was allowed before may take it.
 */
const BASE = "http://registry.test";
const SERVICE = "registry.test";
let authEnv: Env;

beforeAll(() => {
  const line = (user: string, password: string) => `${user}:${bcrypt.hashSync(password, 4)}`;
  authEnv = {
    ...env,
    AUTH_MODE: undefined,
    AUTH_USERS: [line("admin", "admin-pw"), line("reader", "reader-pw")].join("\n"),
    AUTH_ACCESS: JSON.stringify([
      { repositories: ["**"], users: ["admin"], actions: ["pull", "push", "delete"] },
      { repositories: ["team/**"], users: ["reader"], actions: ["pull"] },
    ]),
    TOKEN_SECRET: "a test key of the registry, long and random in production",
    LOGIN_MAX_FAILURES: "1000",
    LOGIN_MAX_FAILURES_PER_ADDRESS: "1000",
  } as Env;
});

const basic = (user: string, password: string) => ({ Authorization: `Basic ${btoa(`${user}:${password}`)}` });

function call(path: string, init: RequestInit = {}, bindings: Env = authEnv): Promise<Response> {
  return Promise.resolve(app.request(`${BASE}${path}`, init, bindings));
}

/** What the pull path alone answers (null: not its request, or not known to be allowed). */
function pullPath(path: string, init: RequestInit = {}, bindings: Env = authEnv): Promise<Response | null> {
  return servePull(new Request(`${BASE}${path}`, init), bindings, undefined);
}

async function pullToken(user: string, password: string, name: string): Promise<Record<string, string>> {
  const query = new URLSearchParams({ service: SERVICE, scope: `repository:${name}:pull` });
  const response = await call(`/token?${query}`, { headers: basic(user, password) });
  expect(response.status).toBe(200);
  return { Authorization: `Bearer ${((await response.json()) as { token: string }).token}` };
}

/** Pushes a one-layer image as admin (Basic); its manifest's and layer's digests. */
async function push(name: string, tag: string): Promise<{ manifest: string; layer: string }> {
  const asAdmin: Send = (path, init = {}) =>
    call(path, { ...init, headers: { ...(init.headers as Record<string, string>), ...basic("admin", "admin-pw") } });
  const { digest, layerDigest } = await pushImageWith(asAdmin, name, tag);
  return { manifest: digest, layer: layerDigest };
}

/** An answer as a client sees it: status, every header (Server-Timing's durations left out), the body. */
async function seen(response: Response): Promise<{ status: number; headers: [string, string][]; body: string }> {
  const headers = [...response.headers].map(([name, value]): [string, string] =>
    name === "server-timing" ? [name, value.replace(/dur=[\d.]+/g, "dur=*")] : [name, value],
  );
  return { status: response.status, headers, body: await response.text() };
}

/** A request's answer as seen, once the work it left running (a cache fill) is done. */
async function settled(path: string, init: RequestInit): Promise<Awaited<ReturnType<typeof seen>>> {
  const ctx = createExecutionContext();
  const answer = await seen(await app.request(`${BASE}${path}`, init, authEnv, ctx));
  await waitOnExecutionContext(ctx);
  return answer;
}

/**
 * A request made with one token goes through Hono (judged, allowed); made again with it,
 * it takes the pull path, and answers what the same request with a second token, judged
 * through Hono, answered just before (the storage's state the same for both).
 */
async function expectSameOnPullPath(path: string, init: RequestInit, user: string, name: string): Promise<void> {
  const password = `${user}-pw`;
  const [known, fresh] = [await pullToken(user, password, name), await pullToken(user, password, name)];
  const withToken = (auth: Record<string, string>): RequestInit => ({ ...init, headers: { ...init.headers, ...auth } });
  expect(await pullPath(path, withToken(known))).toBeNull();
  await settled(path, withToken(known));
  const throughHono = await settled(path, withToken(fresh));
  const direct = await pullPath(path, withToken(known));
  expect(direct).not.toBeNull();
  await direct?.body?.cancel();
  expect(await settled(path, withToken(known))).toEqual(throughHono);
}

describe("the pull path", () => {
  it("answers a token's manifest, blob and tag-list requests as the routes through Hono did", async () => {
    const name = "team/pull-path";
    const { manifest, layer } = await push(name, "v1");
    const requests: [string, RequestInit][] = [
      [`/v2/${name}/manifests/v1`, { method: "HEAD" }],
      [`/v2/${name}/manifests/v1`, { headers: { Accept: MediaTypes.ociManifest } }],
      [`/v2/${name}/manifests/${manifest}`, {}],
      [`/v2/${name}/manifests/${manifest}`, { headers: { "If-None-Match": `"${manifest}"` } }],
      [`/v2/${name}/blobs/${layer}`, { method: "HEAD" }],
      [`/v2/${name}/blobs/${layer}`, {}],
      [`/v2/${name}/blobs/${layer}`, { headers: { Range: "bytes=2-5" } }],
      [`/v2/${name}/tags/list`, {}],
      // Errors too: the request was allowed, what it names is not there.
      [`/v2/${name}/manifests/missing`, { method: "HEAD" }],
      [`/v2/${name}/manifests/missing`, {}],
      [`/v2/${name}/blobs/sha256:${"0".repeat(64)}`, {}],
      [`/v2/${name}/blobs/sha256:nothex`, {}],
      [`/v2/${name}/manifests/${"x".repeat(200)}`, {}],
    ];
    for (const [path, init] of requests) await expectSameOnPullPath(path, init, "reader", name);
  });

  it("finds the same name, reference and digest as Hono's routes in names that hold their words", async () => {
    const name = "team/manifests/blobs/tags/list";
    const { manifest, layer } = await push(name, "list");
    for (const path of [
      `/v2/${name}/manifests/list`,
      `/v2/${name}/manifests/${manifest}`,
      `/v2/${name}/blobs/${layer}`,
      `/v2/${name}/tags/list`,
    ]) {
      await expectSameOnPullPath(path, {}, "admin", name);
    }
  });

  it("takes only the very request a token was allowed before: another method or repository is judged", async () => {
    const name = "team/pull-path-scope";
    await push(name, "v1");
    await push("team/elsewhere", "v1");
    const auth = await pullToken("reader", "reader-pw", name);
    expect((await call(`/v2/${name}/manifests/v1`, { method: "HEAD", headers: auth })).status).toBe(200);
    expect(await pullPath(`/v2/${name}/manifests/v1`, { method: "HEAD", headers: auth })).not.toBeNull();
    expect(await pullPath(`/v2/${name}/manifests/v1`, { headers: auth })).toBeNull();
    expect(await pullPath(`/v2/team/elsewhere/manifests/v1`, { method: "HEAD", headers: auth })).toBeNull();
    // The token is for one repository: the other is refused, however often asked.
    for (let i = 0; i < 2; i++) {
      const other = await call(`/v2/team/elsewhere/manifests/v1`, { method: "HEAD", headers: auth });
      expect(other.status).toBe(401);
      expect(other.headers.get("WWW-Authenticate")).toContain('error="insufficient_scope"');
    }
  });

  it("refuses a known request once the token's user has another password, or no token is sent", async () => {
    const name = "team/pull-path-password";
    await push(name, "v1");
    const auth = await pullToken("reader", "reader-pw", name);
    const path = `/v2/${name}/tags/list`;
    expect((await call(path, { headers: auth })).status).toBe(200);
    expect(await pullPath(path, { headers: auth })).not.toBeNull();
    const changed = {
      ...authEnv,
      AUTH_USERS: (authEnv.AUTH_USERS ?? "").replace(/^reader:.*$/m, `reader:${bcrypt.hashSync("new-pw", 4)}`),
    } as Env;
    expect(await pullPath(path, { headers: auth }, changed)).toBeNull();
    expect((await call(path, { headers: auth }, changed)).status).toBe(401);
    expect(await pullPath(path)).toBeNull();
    expect((await call(path)).status).toBe(401);
  });

  it("leaves requests with a query, percent-encoding or another method to Hono", async () => {
    const name = "team/pull-path-other";
    await push(name, "v1");
    const auth = await pullToken("admin", "admin-pw", name);
    for (const [path, init] of [
      [`/v2/${name}/tags/list?n=1`, { headers: auth }],
      [`/v2/${name}/manifests/v1?ns=docker.io`, { headers: auth }],
      [`/v2/team%2Fpull-path-other/manifests/v1`, { headers: auth }],
      [`/v2/${name}/tags/list`, { method: "HEAD", headers: auth }],
      [`/v2/${name}/manifests/v1`, { method: "DELETE", headers: auth }],
      [`/v2/${name}/blobs/uploads/`, { headers: auth }],
    ] as [string, RequestInit][]) {
      await call(path, init);
      expect(await pullPath(path, init)).toBeNull();
    }
  });
});
