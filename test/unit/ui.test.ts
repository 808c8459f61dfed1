import { createExecutionContext, env } from "cloudflare:test";
import bcrypt from "bcryptjs";
import { beforeAll, describe, expect, it } from "vitest";
import worker from "../../src/index";
import { descriptorOf, MediaTypes, pushBlob, pushImage, pushManifest, sha256, utf8 } from "./helpers";

// The web pages (src/ui) in workerd, as a browser would ask for them: the same storage and
// rules as the API. A real browser drives them in test/e2e/ui.test.mjs.

let authEnv: Env;

beforeAll(() => {
  authEnv = {
    ...env,
    AUTH_MODE: undefined,
    AUTH_USERS: [`admin:${bcrypt.hashSync("admin-pw", 4)}`, `reader:${bcrypt.hashSync("reader-pw", 4)}`].join("\n"),
    TOKEN_SECRET: "a test key of the registry, long and random in production",
    AUTH_ACCESS: JSON.stringify([
      { repositories: ["**"], users: ["admin"], actions: ["pull", "push", "delete"], catalog: true },
      { repositories: ["**"], users: ["reader"], actions: ["pull"] },
      { repositories: ["ui-public/**"], anonymous: true, actions: ["pull"] },
    ]),
    LOGIN_MAX_FAILURES: "1000",
    LOGIN_MAX_FAILURES_PER_ADDRESS: "1000",
  } as Env;
});

/** A page request with `settings`, like a browser's (HTML, cookies). */
async function page(path: string, init: RequestInit = {}, settings: Env = env, base = "http://registry.test") {
  const response = await worker.fetch(new Request(new URL(path, base), init), settings, createExecutionContext());
  return { response, html: await response.text() };
}

/** The `name=value` of the per-browser CSRF cookie a page set. */
function browserCookie(response: Response): string {
  const cookie = /registry_csrf=[0-9a-f]{32}/.exec(response.headers.get("Set-Cookie") ?? "")?.[0];
  expect(cookie).toBeDefined();
  return cookie ?? "";
}

/** Pushes an image whose config has labels and an entrypoint. */
async function pushLabelled(name: string, tag: string, labels: Record<string, string>) {
  const config = utf8(
    JSON.stringify({
      architecture: "arm64",
      os: "linux",
      created: "2026-12-01T10:00:00Z",
      config: { Entrypoint: ["/bin/app", "--serve"], Labels: labels },
      rootfs: { type: "layers", diff_ids: [] },
    }),
  );
  const layer = utf8(`layer of ${name}:${tag} ${crypto.randomUUID()}`);
  const configDigest = await pushBlob(name, config);
  const layerDigest = await pushBlob(name, layer);
  return pushManifest(name, tag, {
    schemaVersion: 2,
    mediaType: MediaTypes.ociManifest,
    config: { mediaType: MediaTypes.ociConfig, digest: configDigest, size: config.byteLength },
    layers: [{ mediaType: MediaTypes.ociLayer, digest: layerDigest, size: layer.byteLength }],
    annotations: { "org.opencontainers.image.source": "https://example.com/<b>repo</b>" },
  });
}

describe("web pages, open registry", () => {
  it("lists repositories, tags with sizes and pull commands, images with config, labels and layers, all escaped", async () => {
    const image = await pushLabelled("ui-open/app", "v1", { evil: "<script>alert(1)</script>", team: "blue" });
    const { response, html } = await page("/");
    expect(response.status).toBe(200);
    expect(response.headers.get("Content-Type")).toMatch(/text\/html/);
    expect(html).toMatch(/^<!DOCTYPE html>/);
    expect(html).toContain('href="/repositories/ui-open/app"');
    // Only the page's own style and script may run: the CSP names their hashes.
    const policy = response.headers.get("Content-Security-Policy") ?? "";
    const hashOf = async (text: string) =>
      btoa(String.fromCharCode(...new Uint8Array(await crypto.subtle.digest("SHA-256", utf8(text)))));
    for (const [tag, directive] of [
      ["script", "script-src"],
      ["style", "style-src"],
    ]) {
      const inline = new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`).exec(html)?.[1] ?? "";
      expect(policy).toContain(`${directive} 'sha256-${await hashOf(inline)}'`);
    }
    expect(policy).not.toContain("unsafe-inline");

    const repository = await page("/repositories/ui-open/app");
    expect(repository.html).toContain('data-tag="v1"');
    expect(repository.html).toContain("docker pull registry.test/ui-open/app:v1");
    expect(repository.html).toMatch(/class="num size">\d+ B</);

    const detail = await page(`/repositories/ui-open/app/-/manifests/${image.digest}`);
    expect(detail.response.status).toBe(200);
    expect(detail.html).toContain("linux/arm64");
    expect(detail.html).toContain("&quot;/bin/app&quot;");
    expect(detail.html).toContain("&lt;script&gt;alert(1)&lt;/script&gt;");
    expect(detail.html).not.toContain("<script>alert(1)</script>");
    expect(detail.html).toContain("https://example.com/&lt;b&gt;repo&lt;/b&gt;");
    expect((await page("/repositories/ui-open/nope")).response.status).toBe(404);
    expect((await page(`/repositories/ui-open/app/-/manifests/sha256:${"0".repeat(64)}`)).response.status).toBe(404);
  });

  it("shows an index's platforms, and referrers under their subject grouped by artifact type", async () => {
    const amd = await pushImage("ui-open/multi");
    const arm = await pushImage("ui-open/multi");
    const index = await pushManifest(
      "ui-open/multi",
      "latest",
      {
        schemaVersion: 2,
        mediaType: MediaTypes.ociIndex,
        manifests: [
          { ...descriptorOf(amd), platform: { os: "linux", architecture: "amd64" } },
          { ...descriptorOf(arm), platform: { os: "linux", architecture: "arm64", variant: "v8" } },
        ],
      },
      MediaTypes.ociIndex,
    );
    const emptyConfig = utf8("{}");
    const emptyDigest = await pushBlob("ui-open/multi", emptyConfig);
    const signature = await pushManifest("ui-open/multi", await sha256(utf8("unused")).then(() => "sig"), {
      schemaVersion: 2,
      mediaType: MediaTypes.ociManifest,
      artifactType: "application/vnd.dev.cosign.artifact.sig.v1+json",
      config: { mediaType: "application/vnd.oci.empty.v1+json", digest: emptyDigest, size: emptyConfig.byteLength },
      layers: [{ mediaType: "application/vnd.oci.empty.v1+json", digest: emptyDigest, size: emptyConfig.byteLength }],
      subject: descriptorOf(index),
    });
    const tags = await page("/repositories/ui-open/multi");
    expect(tags.html).toMatch(/data-tag="latest"[\s\S]*?class="platforms">linux\/amd64, linux\/arm64\/v8</);
    const detail = await page(`/repositories/ui-open/multi/-/manifests/${index.digest}`);
    expect(detail.html).toContain(`href="/repositories/ui-open/multi/-/manifests/${amd.digest}">linux/amd64<`);
    expect(detail.html).toContain(`href="/repositories/ui-open/multi/-/manifests/${arm.digest}">linux/arm64/v8<`);
    expect(detail.html).toContain('data-artifact-type="application/vnd.dev.cosign.artifact.sig.v1+json"');
    expect(detail.html).toContain(`/repositories/ui-open/multi/-/manifests/${signature.digest}`);
  });

  it("deletes a tag behind a confirmation, with a CSRF token from the page and from this origin only", async () => {
    await pushImage("ui-open/deletable", "old");
    await pushImage("ui-open/deletable", "keep");
    const confirm = await page("/repositories/ui-open/deletable/-/delete?tag=old");
    expect(confirm.response.status).toBe(200);
    const csrf = /name="csrf" value="([0-9a-f]+)"/.exec(confirm.html)?.[1] ?? "";
    expect(csrf).toMatch(/^[0-9a-f]{64}$/);
    // The token is this browser's: bound to the random cookie its first page set.
    const browser = browserCookie(confirm.response);
    const post = (fields: Record<string, string>, headers: Record<string, string> = {}, cookie = browser) =>
      page("/repositories/ui-open/deletable/-/delete", {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded", Cookie: cookie, ...headers },
        body: new URLSearchParams(fields).toString(),
        redirect: "manual",
      });
    expect((await post({ tag: "old" })).response.status).toBe(403);
    expect((await post({ tag: "old", csrf }, {}, "registry_csrf=" + "0".repeat(32))).response.status).toBe(403);
    expect((await post({ tag: "old", csrf }, {}, "")).response.status).toBe(403);
    expect((await post({ tag: "old", csrf }, { Origin: "https://evil.example" })).response.status).toBe(403);
    expect((await post({ tag: "old", csrf }, { "Sec-Fetch-Site": "cross-site" })).response.status).toBe(403);
    const done = await post({ tag: "old", csrf }, { Origin: "http://registry.test" });
    expect(done.response.status).toBe(303);
    const listed = await worker.fetch(
      new Request("http://registry.test/v2/ui-open/deletable/tags/list"),
      env,
      createExecutionContext(),
    );
    expect(((await listed.json()) as { tags: string[] }).tags).toEqual(["keep"]);
  });
});

describe("web pages against hostile input", () => {
  it("a deeply nested manifest, absurd platforms and odd forms never break a page or a push", async () => {
    const image = await pushImage("ui-open/hostile");
    const deep = `${"[".repeat(5000)}${"]".repeat(5000)}`;
    const bytes = utf8(
      `{"schemaVersion":2,"mediaType":"${MediaTypes.ociIndex}","x":${deep},"manifests":[` +
        `{"mediaType":"${MediaTypes.ociManifest}","digest":"${image.digest}","size":${image.size},` +
        `"platform":{"os":"${"o".repeat(5000)}","architecture":"a,b"}}]}`,
    );
    const put = await worker.fetch(
      new Request("http://registry.test/v2/ui-open/hostile/manifests/deep", {
        method: "PUT",
        headers: { "Content-Type": MediaTypes.ociIndex },
        body: bytes,
      }),
      env,
      createExecutionContext(),
    );
    expect(put.status).toBe(201);
    const listed = await page("/repositories/ui-open/hostile");
    expect(listed.response.status).toBe(200);
    expect(listed.html).toContain('data-tag="deep"');
    const shown = await page(`/repositories/ui-open/hostile/-/manifests/${await sha256(bytes)}`);
    expect(shown.response.status).toBe(200);
    // A form that is not the page's: refused with 400, not a 500.
    const odd = await page("/login", { method: "POST", headers: { "Content-Type": "text/plain" }, body: "x" }, authEnv);
    expect(odd.response.status).toBe(400);
  });
});

describe("web pages that fail", () => {
  it("keep the page's headers (no-store, no framing, the CSP) on the error's answer", async () => {
    // A broken setting fails the page after its headers were set (render: viewerOf).
    const broken = { ...env, AUTH_ACCESS: "not json" } as Env;
    const { response } = await page("/", {}, broken);
    expect(response.status).toBe(500);
    expect(response.headers.get("Cache-Control")).toBe("no-store");
    expect(response.headers.get("X-Frame-Options")).toBe("DENY");
    expect(response.headers.get("Content-Security-Policy")).not.toBeNull();
    expect(response.headers.get("Content-Type")).toBe("application/json");
  });
});

describe("web pages, with users and access rules", () => {
  it("shows anonymous visitors only what anonymous clients may pull, and nothing to delete", async () => {
    const open = await pushImage("ui-public/app", "v1");
    await pushImage("ui-private/app", "v1");
    const home = await page("/", {}, authEnv);
    expect(home.html).toContain("ui-public/app");
    expect(home.html).not.toContain("ui-private/app");
    expect(home.html).toContain('href="/login"');
    expect((await page("/repositories/ui-private/app", {}, authEnv)).response.status).toBe(404);
    const visible = await page("/repositories/ui-public/app", {}, authEnv);
    expect(visible.html).toContain('data-tag="v1"');
    expect(visible.html).not.toContain("/-/delete?");
    expect((await page("/repositories/ui-public/app/-/delete?tag=v1", {}, authEnv)).response.status).toBe(403);
    expect((await page(`/repositories/ui-public/app/-/manifests/${open.digest}`, {}, authEnv)).response.status).toBe(
      200,
    );
  });

  it("logs in with the registry's users into an HttpOnly, SameSite=Strict, Secure session", async () => {
    await pushImage("ui-private/login", "v1");
    const form = await page("/login", {}, authEnv, "https://registry.test");
    const csrf = /name="csrf" value="([0-9a-f]+)"/.exec(form.html)?.[1] ?? "";
    const browser = browserCookie(form.response);
    expect(form.response.headers.get("Set-Cookie")).toMatch(/HttpOnly.*Secure|Secure.*HttpOnly/i);
    const attempt = (password: string) =>
      page(
        "/login",
        {
          method: "POST",
          headers: {
            "Content-Type": "application/x-www-form-urlencoded",
            Origin: "https://registry.test",
            Cookie: browser,
          },
          body: new URLSearchParams({ username: "admin", password, csrf }).toString(),
          redirect: "manual",
        },
        authEnv,
        "https://registry.test",
      );
    const wrong = await attempt("nope");
    expect(wrong.response.status).toBe(401);
    expect(wrong.html).toContain("Incorrect username or password");
    const right = await attempt("admin-pw");
    expect(right.response.status).toBe(303);
    const cookie = right.response.headers.get("Set-Cookie") ?? "";
    expect(cookie).toMatch(/^registry_session=[^;]+/);
    expect(cookie).toMatch(/HttpOnly/i);
    expect(cookie).toMatch(/SameSite=Strict/i);
    expect(cookie).toMatch(/Secure/i);
    const session = cookie.split(";")[0] ?? "";
    const home = await page("/", { headers: { Cookie: session } }, authEnv, "https://registry.test");
    expect(home.html).toContain("ui-private/login");
    expect(home.html).toContain("admin");
    const repository = await page("/repositories/ui-private/login", { headers: { Cookie: session } }, authEnv);
    expect(repository.html).toContain("/repositories/ui-private/login/-/delete?tag=v1");
    // The session is not an API credential, and a forged cookie is nobody.
    const api = await worker.fetch(
      new Request("https://registry.test/v2/ui-private/login/tags/list", {
        headers: { Authorization: `Bearer ${session.split("=")[1]}` },
      }),
      authEnv,
      createExecutionContext(),
    );
    expect(api.status).toBe(401);
    const forged = await page("/", { headers: { Cookie: "registry_session=not-a-token" } }, authEnv);
    expect(forged.html).not.toContain("ui-private/login");
  });

  it("logout revokes the session server-side: a kept copy of the cookie is nobody afterwards", async () => {
    await pushImage("ui-private/logout", "v1");
    const form = await page("/login", {}, authEnv);
    const browser = browserCookie(form.response);
    const post = (path: string, body: Record<string, string>, cookie: string) =>
      page(
        path,
        {
          method: "POST",
          headers: {
            "Content-Type": "application/x-www-form-urlencoded",
            Origin: "http://registry.test",
            Cookie: cookie,
          },
          body: new URLSearchParams(body).toString(),
          redirect: "manual",
        },
        authEnv,
      );
    const csrf = /name="csrf" value="([0-9a-f]+)"/.exec(form.html)?.[1] ?? "";
    const login = await post("/login", { username: "reader", password: "reader-pw", csrf }, browser);
    expect(login.response.status).toBe(303);
    const session = (login.response.headers.get("Set-Cookie") ?? "").split(";")[0] ?? "";
    const before = await page("/", { headers: { Cookie: session } }, authEnv);
    expect(before.html).toContain("ui-private/logout");
    const sessionCsrf = /name="csrf" value="([0-9a-f]+)"/.exec(before.html)?.[1] ?? "";
    const logout = await post("/logout", { csrf: sessionCsrf }, session);
    expect(logout.response.status).toBe(303);
    expect(logout.response.headers.get("Set-Cookie")).toMatch(/registry_session=;/);
    // The browser dropped the cookie; a copy kept elsewhere no longer logs anyone in.
    const after = await page("/", { headers: { Cookie: session } }, authEnv);
    expect(after.html).not.toContain("ui-private/logout");
    expect(after.html).toContain('href="/login"');
    expect(
      (await page("/repositories/ui-private/logout", { headers: { Cookie: session } }, authEnv)).response.status,
    ).toBe(404);
    // Another session of the same user is not affected.
    const again = await post("/login", { username: "reader", password: "reader-pw", csrf }, browser);
    const other = (again.response.headers.get("Set-Cookie") ?? "").split(";")[0] ?? "";
    expect((await page("/", { headers: { Cookie: other } }, authEnv)).html).toContain("ui-private/logout");
  });

  it("lists a repository of 1000 tags from one listing, newest first", async () => {
    const image = await pushImage("ui-open/many", "t0000");
    const manifest = (await (
      await worker.fetch(
        new Request(`http://registry.test/v2/ui-open/many/manifests/${image.digest}`),
        env,
        createExecutionContext(),
      )
    ).arrayBuffer()) as ArrayBuffer;
    for (let batch = 1; batch < 1000; batch += 20) {
      const tags = Array.from(
        { length: Math.min(20, 1000 - batch) },
        (_, index) => `t${String(batch + index).padStart(4, "0")}`,
      );
      const query = tags.map((tag) => `tag=${tag}`).join("&");
      const response = await worker.fetch(
        new Request(`http://registry.test/v2/ui-open/many/manifests/${image.digest}?${query}`, {
          method: "PUT",
          headers: { "Content-Type": MediaTypes.ociManifest },
          body: manifest,
        }),
        env,
        createExecutionContext(),
      );
      expect(response.status).toBe(201);
    }
    const { response, html } = await page("/repositories/ui-open/many");
    expect(response.status).toBe(200);
    expect(html).toContain("1000 tags");
    expect((html.match(/data-tag="/g) ?? []).length).toBe(100);
    // The newest batch first (tags of one PUT share a time; ties in name order).
    expect(html.indexOf('data-tag="t0981"')).toBeGreaterThan(0);
    expect(html.indexOf('data-tag="t0000"')).toBe(-1);
    // No read per tag: the catalog entry, and the tag listing (R2 lists at most 100 keys a
    // page with their metadata: 10 pages).
    const calls = Number(/r2;dur=[\d.]+;desc="(\d+)"/.exec(response.headers.get("Server-Timing") ?? "")?.[1]);
    expect(calls).toBe(11);
    const last = await page("/repositories/ui-open/many?page=10");
    expect(last.html).toContain('data-tag="t0000"');
  });
});
