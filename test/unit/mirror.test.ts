import { createExecutionContext, env, waitOnExecutionContext } from "cloudflare:test";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import worker from "../../src/index";
import { changeHooks, type Change, type ChangeContext } from "../../src/registry/changes";
import { metered } from "../../src/registry/meter";
import { parseChallenge, upstreamError } from "../../src/mirror/upstream-client";
import { mirroredName, parseUpstreams } from "../../src/settings/upstreams";
import { settingsOf } from "../../src/settings/settings";
import { SettingsError } from "../../src/settings/values";
import { allowedActions, policyOf } from "../../src/auth/policy";
import bcrypt from "bcryptjs";
import { collect, expectVerifyClean } from "./gc-helpers";
import { concat, digestStream, expectError, MediaTypes, MiB, randomBytes, sha256, utf8 } from "./helpers";

// The pull-through mirror (src/mirror) against a fake upstream registry served in this
// isolate: the Worker's outbound fetches to http://upstream.test are answered by
// `upstream` below (a registry with tags, manifests, blobs, an optional token flow, and
// faults on demand). Real clients against real upstreams (docker/distribution, and this
// registry with authentication on) are in test/e2e/mirror.test.mjs.

const UPSTREAM = "http://upstream.test";

interface FakeRepo {
  tags: Map<string, string>;
  manifests: Map<string, { bytes: Uint8Array<ArrayBuffer>; mediaType: string }>;
  blobs: Map<string, Uint8Array<ArrayBuffer>>;
}

/** A small registry: enough of /v2 for pulls, with the token flow and faults. */
class FakeUpstream {
  repos = new Map<string, FakeRepo>();
  /** Every request it got: `METHOD path`. */
  log: string[] = [];
  /** `bearer`: a 401 challenge, then tokens from /token (Basic `user:pass`, or anonymous for public/*). */
  auth: "none" | "bearer" = "none";
  fault:
    | "none"
    | "down"
    | "429"
    | "500"
    | "hang"
    | "corrupt"
    | "chunked"
    | "chunked-corrupt"
    | "stall-body"
    | "garbage"
    | "bad-realm" = "none";
  tokensIssued = 0;
  /**
   * A hostile upstream: answers what this returns for a request (undefined: the usual
   * answer), before anything else, so a test can lie, redirect or delay at will.
   */
  intercept: ((request: Request, url: URL) => Response | Promise<Response> | undefined) | null = null;

  repo(name: string): FakeRepo {
    let repo = this.repos.get(name);
    if (!repo) {
      repo = { tags: new Map(), manifests: new Map(), blobs: new Map() };
      this.repos.set(name, repo);
    }
    return repo;
  }

  async addBlob(name: string, bytes: Uint8Array<ArrayBuffer>): Promise<string> {
    const digest = await sha256(bytes);
    this.repo(name).blobs.set(digest, bytes);
    return digest;
  }

  /** An image (config and layers) tagged `tag`; returns the manifest's digest and bytes. */
  async addImage(
    name: string,
    tag: string | null,
    layers: Uint8Array<ArrayBuffer>[],
  ): Promise<{ digest: string; bytes: Uint8Array<ArrayBuffer>; layers: string[] }> {
    const config = utf8(JSON.stringify({ architecture: "amd64", os: "linux", seed: crypto.randomUUID() }));
    const configDigest = await this.addBlob(name, config);
    const layerDigests: string[] = [];
    for (const layer of layers) layerDigests.push(await this.addBlob(name, layer));
    const manifest = utf8(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaTypes.ociManifest,
        config: { mediaType: MediaTypes.ociConfig, digest: configDigest, size: config.byteLength },
        layers: layers.map((layer, index) => ({
          mediaType: MediaTypes.ociLayer,
          digest: layerDigests[index],
          size: layer.byteLength,
        })),
      }),
    );
    const digest = await sha256(manifest);
    this.repo(name).manifests.set(digest, { bytes: manifest, mediaType: MediaTypes.ociManifest });
    if (tag) this.repo(name).tags.set(tag, digest);
    return { digest, bytes: manifest, layers: [configDigest, ...layerDigests] };
  }

  async handle(request: Request): Promise<Response> {
    const url = new URL(request.url);
    this.log.push(`${request.method} ${url.pathname}`);
    const intercepted = this.intercept?.(request, url);
    if (intercepted) return intercepted;
    if (this.fault === "down") throw new TypeError("connection refused");
    if (this.fault === "hang") {
      // Answers nothing until the caller gives up (its timeout aborts the request).
      return new Promise<Response>((_, reject) => {
        request.signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
      });
    }
    if (url.pathname === "/token") {
      const scope = url.searchParams.get("scope") ?? "";
      const authorization = request.headers.get("Authorization");
      const anonymousOk = scope.startsWith("repository:public/");
      if (authorization !== `Basic ${btoa("mirror:secret")}` && !anonymousOk)
        return new Response(null, { status: 401 });
      this.tokensIssued++;
      return Response.json({ token: `token-for ${scope}`, expires_in: 300 });
    }
    if (this.fault === "429") return new Response("slow down", { status: 429, headers: { "Retry-After": "7" } });
    if (this.fault === "500") return new Response("oops", { status: 500 });
    const match = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(url.pathname);
    const tags = /^\/v2\/(.+)\/tags\/list$/.exec(url.pathname);
    const name = match?.[1] ?? tags?.[1] ?? "";
    if (this.fault === "bad-realm") {
      return new Response(null, { status: 401, headers: { "WWW-Authenticate": 'Bearer realm="::not a url"' } });
    }
    if (this.fault === "garbage")
      return new Response("<html>not json</html>", { headers: { "Content-Type": "text/html" } });
    if (this.auth === "bearer") {
      const expected = `Bearer token-for repository:${name}:pull`;
      if (request.headers.get("Authorization") !== expected) {
        return new Response(null, {
          status: 401,
          headers: {
            "WWW-Authenticate": `Bearer realm="${UPSTREAM}/token",service="upstream.test",scope="repository:${name}:pull"`,
          },
        });
      }
    }
    const repo = this.repos.get(name);
    if (tags) {
      if (!repo) return new Response(null, { status: 404 });
      return Response.json({ name, tags: [...repo.tags.keys()].sort() });
    }
    if (!match || !repo) return new Response(null, { status: 404 });
    const [, , kind, reference = ""] = match;
    if (kind === "manifests") {
      const digest = repo.tags.get(reference) ?? reference;
      const manifest = repo.manifests.get(digest);
      if (!manifest) return new Response(null, { status: 404 });
      const headers = {
        "Content-Type": manifest.mediaType,
        "Docker-Content-Digest": digest,
        "Content-Length": String(manifest.bytes.byteLength),
      };
      return new Response(request.method === "HEAD" ? null : manifest.bytes, { headers });
    }
    const blob = repo.blobs.get(reference);
    if (!blob) return new Response(null, { status: 404 });
    if (request.method === "GET" && (this.fault === "chunked" || this.fault === "chunked-corrupt")) {
      // No Content-Length: the body arrives as a stream of unknown length.
      const body = this.fault === "chunked" ? blob : blob.map((byte) => byte ^ 1);
      return new Response(streamOfBytes(body, false), { headers: { "Docker-Content-Digest": reference } });
    }
    if (request.method === "GET" && this.fault === "stall-body") {
      const headers = { "Content-Length": String(blob.byteLength) };
      return new Response(streamOfBytes(blob, true), { headers });
    }
    let bytes = blob;
    if (this.fault === "corrupt") {
      bytes = blob.slice();
      bytes[bytes.length - 1] = (bytes[bytes.length - 1] ?? 0) ^ 0xff;
    }
    const headers = { "Content-Length": String(bytes.byteLength), "Docker-Content-Digest": reference };
    return new Response(request.method === "HEAD" ? null : bytes, { headers });
  }
}

/** A body of `bytes` in 64 KiB chunks; `stall`: half of it, then nothing more, ever. */
function streamOfBytes(bytes: Uint8Array<ArrayBuffer>, stall: boolean): ReadableStream<Uint8Array> {
  let offset = 0;
  const end = stall ? Math.floor(bytes.byteLength / 2) : bytes.byteLength;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (offset >= end) {
        if (!stall) controller.close();
        return stall ? new Promise<void>(() => undefined) : undefined;
      }
      controller.enqueue(bytes.slice(offset, Math.min(end, offset + 64 * 1024)));
      offset += 64 * 1024;
      return undefined;
    },
  });
}

/**
 * Another server an upstream may redirect to (a CDN, or an address the mirror must not
 * reach for it): answers `answer`, and records every request with its Range header.
 */
const ELSEWHERE = "http://elsewhere.test";
class Elsewhere {
  log: string[] = [];
  answer: (request: Request) => Response = () => new Response(null, { status: 404 });

  handle(request: Request): Response {
    const url = new URL(request.url);
    const range = request.headers.get("Range");
    this.log.push(`${request.method} ${url.pathname}${range ? ` ${range}` : ""}`);
    return this.answer(request);
  }
}

let upstream: FakeUpstream;
let elsewhere: Elsewhere;

const mirrorEnv = (upstreams: Record<string, unknown>[], extra: Record<string, string> = {}) =>
  ({ ...env, UPSTREAMS: JSON.stringify(upstreams), ...extra }) as Env;

let settings = mirrorEnv([{ prefix: "up.test", url: UPSTREAM, tagTtlSeconds: 300 }]);

/** A request to the Worker with the mirror's settings; waits for its background work (the fill). */
async function request(path: string, init?: RequestInit): Promise<Response> {
  const ctx = createExecutionContext();
  const response = await worker.fetch(new Request(new URL(path, "http://registry.test"), init), settings, ctx);
  const body = response.body ? new Uint8Array(await response.arrayBuffer()) : null;
  await waitOnExecutionContext(ctx);
  return new Response(response.status === 204 || response.status === 304 ? null : body, response);
}

async function bodyDigest(response: Response): Promise<string> {
  return sha256(new Uint8Array(await response.arrayBuffer()));
}

async function dataObjects(): Promise<number> {
  return (await env.BLOBS.list({ prefix: "data/" })).objects.length;
}

function upstreamCalls(response: Response): number {
  const match = /upstream;dur=[\d.]+;desc="(\d+)"/.exec(response.headers.get("Server-Timing") ?? "");
  return Number(match?.[1] ?? 0);
}

beforeEach(() => {
  upstream = new FakeUpstream();
  elsewhere = new Elsewhere();
  settings = mirrorEnv([{ prefix: "up.test", url: UPSTREAM, tagTtlSeconds: 300 }]);
  const original = globalThis.fetch;
  vi.spyOn(globalThis, "fetch").mockImplementation(async (input, init) => {
    const outbound = new Request(input, init);
    const host = new URL(outbound.url).host;
    if (host === "upstream.test") return upstream.handle(outbound);
    if (host === "elsewhere.test") return elsewhere.handle(outbound);
    return original(input, init);
  });
});

afterEach(() => {
  vi.restoreAllMocks();
});

describe("mirror settings", () => {
  it("parses upstreams, sorts the longest prefix first and resolves names", () => {
    const mirrors = parseUpstreams(
      JSON.stringify([
        { prefix: "docker.io", url: "https://registry-1.docker.io/" },
        { prefix: "ghcr.io", url: "https://ghcr.io", tagTtlSeconds: 60, credentials: "UPSTREAM_GHCR" },
        { prefix: "ghcr.io/team", url: "https://team.example" },
      ]),
      "docker.io",
    );
    expect(mirrors.upstreams.map((u) => u.prefix)).toEqual(["ghcr.io/team", "docker.io", "ghcr.io"]);
    expect(mirrors.fallback?.url).toBe("https://registry-1.docker.io");
    expect(mirrors.upstreams.find((u) => u.prefix === "docker.io")?.library).toBe(true);
    expect(mirrors.upstreams.find((u) => u.prefix === "ghcr.io")?.library).toBe(false);
    expect(mirroredName(mirrors, "docker.io/alpine")).toMatchObject({
      remote: "library/alpine",
      local: "docker.io/library/alpine",
    });
    expect(mirroredName(mirrors, "alpine")?.local).toBe("docker.io/library/alpine");
    expect(mirroredName(mirrors, "bitnami/redis")?.local).toBe("docker.io/bitnami/redis");
    expect(mirroredName(mirrors, "ghcr.io/team/app")?.upstream.url).toBe("https://team.example");
    expect(mirroredName(mirrors, "ghcr.io/other/app")?.remote).toBe("other/app");
    // containerd's ?ns= names the upstream by prefix or host.
    expect(mirroredName(mirrors, "org/app", "ghcr.io")?.local).toBe("ghcr.io/org/app");
    expect(
      mirroredName(parseUpstreams(mirrors.upstreams.length ? '[{"prefix":"a","url":"http://a"}]' : "", ""), "b/c"),
    ).toBeNull();
  });

  it("refuses settings it cannot follow, saying which", () => {
    const refused = (text: string, fallback = "") => {
      try {
        parseUpstreams(text, fallback);
      } catch (error) {
        expect(error).toBeInstanceOf(SettingsError);
        return (error as Error).message;
      }
      throw new Error("accepted");
    };
    expect(refused("{")).toMatch(/not valid JSON/);
    expect(refused('[{"prefix":"Docker.io","url":"https://x"}]')).toMatch(/prefix/);
    expect(refused('[{"prefix":"a","url":"ftp://x"}]')).toMatch(/http/);
    expect(refused('[{"prefix":"a","url":"http://x"},{"prefix":"a","url":"http://y"}]')).toMatch(/twice/);
    expect(refused('[{"prefix":"a","url":"http://x"}]', "b")).toMatch(/UPSTREAM_DEFAULT/);
    expect(refused("", "b")).toMatch(/UPSTREAMS is empty/);
  });

  it("parses challenges and maps upstream failures to OCI errors", () => {
    expect(
      parseChallenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"',
      ),
    ).toEqual({
      scheme: "bearer",
      params: {
        realm: "https://auth.docker.io/token",
        service: "registry.docker.io",
        scope: "repository:library/alpine:pull",
      },
    });
    expect(parseChallenge('Basic realm="x"')?.scheme).toBe("basic");
    const tooMany = upstreamError(
      new Response(null, { status: 429, headers: { "Retry-After": "9" } }),
      "BLOB_UNKNOWN",
      {},
    );
    expect([tooMany.code, tooMany.status, tooMany.headers["Retry-After"]]).toEqual(["TOOMANYREQUESTS", 429, "9"]);
    expect(upstreamError(new Response(null, { status: 404 }), "MANIFEST_UNKNOWN", {}).status).toBe(404);
    expect(upstreamError(new Response(null, { status: 401 }), "BLOB_UNKNOWN", {}).code).toBe("DENIED");
    expect(upstreamError(new Response(null, { status: 502 }), "BLOB_UNKNOWN", {}).status).toBe(503);
  });

  it("matches access rules against the name a mirrored repository is stored as", () => {
    const rules = mirrorEnv([{ prefix: "docker.io", url: "https://registry-1.docker.io" }], {
      UPSTREAM_DEFAULT: "docker.io",
      AUTH_MODE: "read-only-test",
      AUTH_ACCESS: JSON.stringify([{ repositories: ["docker.io/**"], anonymous: true, actions: ["pull"] }]),
    });
    // The policy matches a requested name by the name it is stored as (settings/upstreams.ts).
    const policy = policyOf(settingsOf(rules));
    const pull = (name: string) => allowedActions(policy, null, { type: "repository", name }).has("pull");
    expect(pull("docker.io/library/alpine")).toBe(true);
    expect(pull("library/alpine")).toBe(true);
    expect(pull("alpine")).toBe(true);
  });
});

describe("pull-through mirroring", () => {
  it("fetches, stores and serves an image by tag, and serves it from storage afterwards", async () => {
    const layer = randomBytes(3 * MiB);
    const image = await upstream.addImage("team/app", "v1", [layer]);
    const stored = await dataObjects();

    const manifest = await request("/v2/up.test/team/app/manifests/v1");
    expect(manifest.status).toBe(200);
    expect(manifest.headers.get("Docker-Content-Digest")).toBe(image.digest);
    expect(manifest.headers.get("Content-Type")).toBe(MediaTypes.ociManifest);
    expect(await bodyDigest(manifest)).toBe(image.digest);
    for (const digest of image.layers) {
      const blob = await request(`/v2/up.test/team/app/blobs/${digest}`);
      expect(blob.status).toBe(200);
      expect(upstreamCalls(blob)).toBe(1);
      expect(await bodyDigest(blob)).toBe(digest);
    }
    // Stored: each blob once (config, layer) and the manifest, published under their digests.
    expect(await dataObjects()).toBe(stored + 3);
    for (const digest of image.layers) {
      expect(await env.BLOBS.head(`blobs/sha256/${digest.slice("sha256:".length)}`)).not.toBeNull();
    }
    const before = upstream.log.length;
    const again = await request("/v2/up.test/team/app/manifests/v1");
    expect(upstreamCalls(again)).toBe(0);
    expect(await bodyDigest(again)).toBe(image.digest);
    const byDigest = await request(`/v2/up.test/team/app/manifests/${image.digest}`, { method: "HEAD" });
    expect(byDigest.status).toBe(200);
    for (const digest of image.layers) {
      const blob = await request(`/v2/up.test/team/app/blobs/${digest}`);
      expect(upstreamCalls(blob)).toBe(0);
      expect(await bodyDigest(blob)).toBe(digest);
    }
    expect(upstream.log.length).toBe(before);
    const catalog = (await (await request("/v2/_catalog")).json()) as { repositories: string[] };
    expect(catalog.repositories).toContain("up.test/team/app");
  });

  it("tells the change seam of each manifest and blob it stores, once, as the mirror, within the pull's request", async () => {
    const heard: { change: Change; context: ChangeContext }[] = [];
    changeHooks.listeners.push({
      name: "test",
      // A listener kept per isolate finds the GET's meter (repository.ts `metering`), as the
      // events sender does for its queue sends.
      changed: async (change, context) => {
        heard.push({ change, context });
        await metered("queue", "send", () => Promise.resolve());
      },
    });
    try {
      const image = await upstream.addImage("team/seam", "v1", [randomBytes(1000)]);
      const pulled = await request("/v2/up.test/team/seam/manifests/v1", { headers: { "CF-Ray": "ray-pull" } });
      expect(pulled.status).toBe(200);
      expect(pulled.headers.get("Server-Timing")).toMatch(/queue;dur=[\d.]+;desc="1"/);
      for (const digest of image.layers) {
        expect(
          (await request(`/v2/up.test/team/seam/blobs/${digest}`, { headers: { "CF-Ray": "ray-pull" } })).status,
        ).toBe(200);
      }
      // Served from storage afterwards: nothing more is stored, nobody told.
      await request("/v2/up.test/team/seam/manifests/v1");
      for (const digest of image.layers) await request(`/v2/up.test/team/seam/blobs/${digest}`);
      expect(
        heard.map(({ change }) => [
          change.action,
          "kind" in change ? change.kind : "",
          "digest" in change ? change.digest.value : "",
        ]),
      ).toEqual([
        ["mirror.store", "manifest", image.digest],
        ...image.layers.map((digest) => ["mirror.store", "blob", digest]),
      ]);
      for (const { change, context } of heard) {
        expect(context.actor).toEqual({ kind: "mirror", name: "up.test" });
        expect(context.requestId).toBe("ray-pull");
        expect("repository" in change && change.repository).toBe("up.test/team/seam");
      }
      expect(heard[0]?.change).toMatchObject({ tag: "v1", mediaType: MediaTypes.ociManifest });
    } finally {
      changeHooks.listeners.length = 0;
    }
  });

  it("serves names without a prefix from the default upstream, one-component names under library/", async () => {
    settings = mirrorEnv([{ prefix: "hub.test", url: UPSTREAM, library: true }], { UPSTREAM_DEFAULT: "hub.test" });
    const image = await upstream.addImage("library/alpine", "3", [randomBytes(1000)]);
    for (const path of [
      "/v2/alpine/manifests/3",
      "/v2/library/alpine/manifests/3",
      "/v2/hub.test/alpine/manifests/3",
    ]) {
      const response = await request(path);
      expect(response.status, path).toBe(200);
      expect(response.headers.get("Docker-Content-Digest")).toBe(image.digest);
    }
    // One stored repository, fetched once.
    expect(upstream.log.filter((line) => line.startsWith("GET /v2/library/alpine/manifests"))).toHaveLength(1);
    const tags = (await (await request("/v2/alpine/tags/list")).json()) as { name: string; tags: string[] };
    expect(tags).toEqual({ name: "alpine", tags: ["3"] });
  });

  it("revalidates a tag once its TTL has passed, and fetches it again only when it moved", async () => {
    settings = mirrorEnv([{ prefix: "up.test", url: UPSTREAM, tagTtlSeconds: 0.3 }]);
    const first = await upstream.addImage("team/app", "latest", [randomBytes(100)]);
    expect((await request("/v2/up.test/team/app/manifests/latest")).headers.get("Docker-Content-Digest")).toBe(
      first.digest,
    );
    const second = await upstream.addImage("team/app", "latest", [randomBytes(100)]);
    // Within the TTL: the stored tag, no upstream call.
    const early = await request("/v2/up.test/team/app/manifests/latest");
    expect(early.headers.get("Docker-Content-Digest")).toBe(first.digest);
    expect(upstreamCalls(early)).toBe(0);
    await new Promise((resolve) => setTimeout(resolve, 400));
    const late = await request("/v2/up.test/team/app/manifests/latest");
    expect(late.headers.get("Docker-Content-Digest")).toBe(second.digest);
    expect(await bodyDigest(late)).toBe(second.digest);
    await new Promise((resolve) => setTimeout(resolve, 400));
    // Unchanged upstream: a HEAD only.
    const marker = upstream.log.length;
    const same = await request("/v2/up.test/team/app/manifests/latest");
    expect(same.headers.get("Docker-Content-Digest")).toBe(second.digest);
    expect(upstream.log.slice(marker)).toEqual(["HEAD /v2/team/app/manifests/latest"]);
    // The old manifest stays pullable by digest (stored), without the upstream.
    upstream.fault = "down";
    expect((await request(`/v2/up.test/team/app/manifests/${first.digest}`)).status).toBe(200);
  });

  it("serves what it stored when the upstream is down, slow or failing, and a clear error for the rest", async () => {
    settings = mirrorEnv([{ prefix: "up.test", url: UPSTREAM, tagTtlSeconds: 0, timeoutSeconds: 0.2 }]);
    const image = await upstream.addImage("team/app", "v1", [randomBytes(2000)]);
    await request("/v2/up.test/team/app/manifests/v1");
    for (const digest of image.layers) await request(`/v2/up.test/team/app/blobs/${digest}`);
    const other = await upstream.addImage("team/app", "v2", [randomBytes(2000)]);
    for (const fault of ["down", "hang", "500", "429"] as const) {
      upstream.fault = fault;
      const manifest = await request("/v2/up.test/team/app/manifests/v1");
      expect(manifest.status, fault).toBe(200);
      expect(await bodyDigest(manifest)).toBe(image.digest);
      for (const digest of image.layers)
        expect((await request(`/v2/up.test/team/app/blobs/${digest}`)).status).toBe(200);
      const missing = await request("/v2/up.test/team/app/manifests/v2");
      if (fault === "429") {
        await expectError(missing, 429, "TOOMANYREQUESTS");
        expect(missing.headers.get("Retry-After")).toBe("7");
      } else {
        await expectError(missing, 503, "UNAVAILABLE");
      }
      await expectError(await request(`/v2/up.test/team/app/blobs/${other.layers[1]}`), fault === "429" ? 429 : 503);
    }
    upstream.fault = "none";
    await expectError(await request("/v2/up.test/team/app/manifests/nope"), 404, "MANIFEST_UNKNOWN");
    await expectError(await request(`/v2/up.test/team/app/blobs/sha256:${"0".repeat(64)}`), 404, "BLOB_UNKNOWN");
  });

  it("never stores bytes that do not match their digest", async () => {
    const image = await upstream.addImage("team/app", "v1", [randomBytes(6 * MiB)]);
    const layer = image.layers[1] ?? "";
    const stored = await dataObjects();
    upstream.fault = "corrupt";
    const ctx = createExecutionContext();
    const response = await worker.fetch(
      new Request(`http://registry.test/v2/up.test/team/app/blobs/${layer}`),
      settings,
      ctx,
    );
    // The answer fails before its end: never a whole body of the wrong bytes.
    const read = await digestStream(response.body as ReadableStream<Uint8Array>).then(
      (result) => result,
      () => "failed",
    );
    expect(read).toBe("failed");
    await waitOnExecutionContext(ctx);
    expect(await env.BLOBS.head(`blobs/sha256/${layer.slice("sha256:".length)}`)).toBeNull();
    expect(await dataObjects()).toBe(stored);
    // The next pull asks the upstream again, and stores the right bytes.
    upstream.fault = "none";
    const fixed = await request(`/v2/up.test/team/app/blobs/${layer}`);
    expect(await bodyDigest(fixed)).toBe(layer);
    expect(await dataObjects()).toBe(stored + 1);
  });

  it("stores a blob once however many pulls ask for it at the same time", async () => {
    const image = await upstream.addImage("team/app", "v1", [randomBytes(12 * MiB)]);
    const layer = image.layers[1] ?? "";
    const before = new Set((await env.BLOBS.list({ prefix: "data/" })).objects.map((object) => object.key));
    const answers = await Promise.all(
      Array.from({ length: 8 }, async () => bodyDigest(await request(`/v2/up.test/team/app/blobs/${layer}`))),
    );
    expect(answers).toEqual(Array.from({ length: 8 }, () => layer));
    const added = (await env.BLOBS.list({ prefix: "data/" })).objects.filter((object) => !before.has(object.key));
    expect(added.map((object) => object.size)).toEqual([12 * MiB]);
    const descriptor = await env.BLOBS.get(`blobs/sha256/${layer.slice("sha256:".length)}`);
    expect(((await descriptor?.json()) as { key: string }).key).toBe(added[0]?.key);
  });

  it("gets tokens from the upstream's realm, with the configured credentials or anonymously", async () => {
    upstream.auth = "bearer";
    settings = mirrorEnv([{ prefix: "up.test", url: UPSTREAM, credentials: "UPSTREAM_TEST_CREDS" }], {
      UPSTREAM_TEST_CREDS: "mirror:secret",
    });
    const image = await upstream.addImage("private/app", "v1", [randomBytes(1000)]);
    const manifest = await request("/v2/up.test/private/app/manifests/v1");
    expect(manifest.status).toBe(200);
    for (const digest of image.layers)
      expect(await bodyDigest(await request(`/v2/up.test/private/app/blobs/${digest}`))).toBe(digest);
    // One token for the repository's scope, reused by the requests after the first.
    expect(upstream.tokensIssued).toBe(1);
    // Without credentials: the anonymous flow works where the upstream allows it, and a
    // refusal is DENIED (never a 401 that would send the client to log in here).
    settings = mirrorEnv([{ prefix: "anon.test", url: UPSTREAM }]);
    const open = await upstream.addImage("public/app", "v1", [randomBytes(1000)]);
    const pulled = await request("/v2/anon.test/public/app/manifests/v1");
    expect(pulled.headers.get("Docker-Content-Digest")).toBe(open.digest);
    await expectError(await request("/v2/anon.test/private/app/manifests/v1"), 403, "DENIED");
  });

  it("applies access rules to what a request reads, whichever way it names it", async () => {
    await upstream.addImage("library/alpine", "3", [randomBytes(100)]);
    await upstream.addImage("own/app", "v1", [randomBytes(100)]);
    settings = mirrorEnv([{ prefix: "docker.io", url: UPSTREAM, library: true }], {
      AUTH_MODE: "",
      AUTH_USERS: `admin:${bcrypt.hashSync("admin-pw", 4)}`,
      TOKEN_SECRET: "a test key of the registry, long and random in production",
      AUTH_ACCESS: JSON.stringify([
        { repositories: ["docker.io/library/**"], anonymous: true, actions: ["pull"] },
        { repositories: ["own/**"], anonymous: true, actions: ["pull"] },
      ]),
    });
    expect((await request("/v2/docker.io/alpine/manifests/3")).status).toBe(200);
    // `?ns=` makes `own/app` docker.io's: the rules judge docker.io/own/app, which they do not open.
    await expectError(await request("/v2/own/app/manifests/v1?ns=docker.io"), 401, "UNAUTHORIZED");
    await expectError(await request("/v2/docker.io/own/app/manifests/v1"), 401, "UNAUTHORIZED");
    // Without it, own/app is this registry's own (nothing pushed: unknown).
    await expectError(await request("/v2/own/app/manifests/v1"), 404, "MANIFEST_UNKNOWN");
  });

  it("is collected like pushed content: kept while tagged, its blobs gone once nothing uses them", async () => {
    settings = mirrorEnv([{ prefix: "gc.test", url: UPSTREAM, tagTtlSeconds: 0 }]);
    const first = await upstream.addImage("team/app", "v1", [randomBytes(3000)]);
    await request("/v2/gc.test/team/app/manifests/v1");
    for (const digest of first.layers) await request(`/v2/gc.test/team/app/blobs/${digest}`);
    const ours = new Set([first.digest, ...first.layers]);
    const kept = await collect({});
    expect((kept.items ?? []).filter((item) => ours.has(item.name))).toEqual([]);
    upstream.fault = "down";
    for (const digest of first.layers) expect((await request(`/v2/gc.test/team/app/blobs/${digest}`)).status).toBe(200);
    // The tag moves upstream and the mirror follows; the old image, untagged and deleted, goes.
    upstream.fault = "none";
    await upstream.addImage("team/app", "v1", [randomBytes(3000)]);
    await request("/v2/gc.test/team/app/manifests/v1");
    await request(`/v2/gc.test/team/app/manifests/${first.digest}`, { method: "DELETE" });
    // (Refused: mirrored names are read-only; the deletion is done as an operator would, in storage.)
    await env.BLOBS.delete(`repositories/gc.test/team/app/_manifests/revisions/sha256/${first.digest.slice(7)}`);
    await env.META.delete(`link:gc.test/team/app/_manifests/${first.digest}`);
    const run = await collect({});
    const removed = (run.items ?? []).filter((item) => item.kind === "blob").map((item) => item.name);
    expect(removed).toEqual(expect.arrayContaining([first.digest, ...first.layers]));
    for (const digest of first.layers) {
      expect(await env.BLOBS.head(`blobs/sha256/${digest.slice(7)}`).then((head) => head?.customMetadata?.gc)).toBe(
        "tombstone",
      );
    }
    await expectVerifyClean();
  });

  it("never answers 500 or hangs on an upstream that misbehaves after its headers", async () => {
    settings = mirrorEnv([{ prefix: "odd.test", url: UPSTREAM, tagTtlSeconds: 0, timeoutSeconds: 0.3 }]);
    const image = await upstream.addImage("team/odd", "v1", [randomBytes(2 * MiB)]);
    const layer = image.layers[1] ?? "";
    expect((await request("/v2/odd.test/team/odd/manifests/v1")).status).toBe(200);
    // A refresh answered with garbage, or with a challenge naming no usable realm: the stored tag.
    for (const fault of ["garbage", "bad-realm"] as const) {
      upstream.fault = fault;
      const stale = await request("/v2/odd.test/team/odd/manifests/v1");
      expect(stale.status, fault).toBe(200);
      expect(stale.headers.get("Docker-Content-Digest")).toBe(image.digest);
      await expectError(await request("/v2/odd.test/team/odd/manifests/v2"), 503, "UNAVAILABLE");
    }
    upstream.fault = "garbage";
    expect(((await (await request("/v2/odd.test/team/odd/tags/list")).json()) as { tags: string[] }).tags).toEqual([
      "v1",
    ]);
    // A body of unknown length: checked on the way, not stored; one that does not match is cut short.
    const stored = await dataObjects();
    upstream.fault = "chunked";
    expect(await bodyDigest(await request(`/v2/odd.test/team/odd/blobs/${layer}`))).toBe(layer);
    upstream.fault = "chunked-corrupt";
    const ctx = createExecutionContext();
    const cut = await worker.fetch(
      new Request(`http://registry.test/v2/odd.test/team/odd/blobs/${layer}`),
      settings,
      ctx,
    );
    const outcome = await digestStream(cut.body as ReadableStream<Uint8Array>).then(
      () => "whole",
      () => "failed",
    );
    expect(outcome).toBe("failed");
    await waitOnExecutionContext(ctx);
    expect(await dataObjects()).toBe(stored);
    // A body that stops half-way: the answer fails within the timeout, the fill is released,
    // and the next pull stores the blob.
    upstream.fault = "stall-body";
    const started = Date.now();
    const stalled = createExecutionContext();
    const half = await worker.fetch(
      new Request(`http://registry.test/v2/odd.test/team/odd/blobs/${layer}`),
      settings,
      stalled,
    );
    expect(
      await digestStream(half.body as ReadableStream<Uint8Array>).then(
        () => "whole",
        () => "failed",
      ),
    ).toBe("failed");
    await waitOnExecutionContext(stalled);
    expect(Date.now() - started).toBeLessThan(5000);
    upstream.fault = "none";
    expect(await bodyDigest(await request(`/v2/odd.test/team/odd/blobs/${layer}`))).toBe(layer);
    expect(await dataObjects()).toBe(stored + 1);
  });

  it("answers NAME_UNKNOWN when containerd's ns names a registry it does not mirror", async () => {
    settings = mirrorEnv([{ prefix: "hub.test", url: UPSTREAM, library: true }], { UPSTREAM_DEFAULT: "hub.test" });
    await upstream.addImage("org/app", "v1", [randomBytes(100)]);
    // Not Docker Hub's org/app for quay.io's: containerd goes on to the next host.
    await expectError(await request("/v2/org/app/manifests/v1?ns=quay.io"), 404, "NAME_UNKNOWN");
    expect((await request("/v2/org/app/manifests/v1?ns=hub.test")).status).toBe(200);
    expect((await request("/v2/org/app/manifests/v1?ns=upstream.test")).status).toBe(200);
  });

  it("refuses writes to mirrored names", async () => {
    await expectError(await request("/v2/up.test/team/app/blobs/uploads/", { method: "POST" }), 403, "DENIED");
    await expectError(
      await request("/v2/up.test/team/app/manifests/v1", {
        method: "PUT",
        headers: { "Content-Type": MediaTypes.ociManifest },
        body: "{}",
      }),
      403,
      "DENIED",
    );
    await expectError(await request("/v2/up.test/team/app/manifests/v1", { method: "DELETE" }), 403, "DENIED");
    // A name outside every prefix is this registry's own.
    expect((await request("/v2/own/app/blobs/uploads/", { method: "POST" })).status).toBe(202);
  });
});

/** A request to the Worker whose body is read as it comes: the bytes it delivered, and whether it ended in an error. */
async function pull(
  path: string,
  init?: RequestInit,
): Promise<{ response: Response; bytes: Uint8Array<ArrayBuffer>; failed: boolean }> {
  const ctx = createExecutionContext();
  const response = await worker.fetch(new Request(new URL(path, "http://registry.test"), init), settings, ctx);
  const chunks: Uint8Array[] = [];
  let failed = false;
  const reader = response.body?.getReader();
  try {
    for (;;) {
      const read = await reader?.read();
      if (!read || read.done) break;
      chunks.push(read.value);
    }
  } catch {
    failed = true;
  }
  await waitOnExecutionContext(ctx);
  return { response, bytes: concat(...chunks), failed };
}

/** Mirroring with authentication on: anonymous clients may pull mirrored names, `admin` may push anywhere. */
function withAuthentication(): Env {
  return mirrorEnv([{ prefix: "up.test", url: UPSTREAM, tagTtlSeconds: 300 }], {
    AUTH_MODE: "",
    AUTH_USERS: `admin:${bcrypt.hashSync("admin-pw", 4)}`,
    TOKEN_SECRET: "a test key of the registry, long and random in production",
    AUTH_ACCESS: JSON.stringify([
      { repositories: ["up.test/**"], anonymous: true, actions: ["pull"] },
      { repositories: ["**"], users: ["admin"], actions: ["pull", "push", "delete"] },
    ]),
  });
}

/** Pushes `bytes` as `admin` to a repository anonymous clients cannot read; returns its digest. */
async function pushPrivate(name: string, bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = await sha256(bytes);
  const pushed = await request(`/v2/${name}/blobs/uploads/?digest=${digest}`, {
    method: "POST",
    body: bytes,
    headers: { Authorization: `Basic ${btoa("admin:admin-pw")}` },
  });
  expect(pushed.status).toBe(201);
  await expectError(await request(`/v2/${name}/blobs/${digest}`), 401, "UNAUTHORIZED");
  return digest;
}

/** A config blob no anonymous client may read. */
function secretConfig(): Uint8Array<ArrayBuffer> {
  const env = [`SECRET=${crypto.randomUUID()}`];
  return utf8(JSON.stringify({ architecture: "amd64", os: "linux", config: { Env: env }, pad: "x".repeat(5000) }));
}

/** Whether `name` links `digest` (its R2 link or the link's KV copy). */
async function linked(name: string, digest: string): Promise<boolean> {
  const r2 = await env.BLOBS.head(`repositories/${name}/_layers/sha256/${digest.slice("sha256:".length)}`);
  const kv = await env.META.get(`link:${name}/_layers/${digest}`);
  return r2 !== null || kv !== null;
}

function redirectTo(location: string): Response {
  return new Response(null, { status: 307, headers: { Location: location } });
}

describe("a hostile upstream", () => {
  it("never links a blob stored by a push on the upstream's word alone: a redirect or a HEAD not naming it", async () => {
    settings = withAuthentication();
    const secret = secretConfig();
    const digest = await pushPrivate("private/app", secret);
    const size = secret.byteLength;
    // A CDN that describes the blob right and sends other bytes of its length.
    elsewhere.answer = (asked) =>
      new Response(asked.method === "HEAD" ? null : randomBytes(size), {
        headers: { "Content-Length": String(size), "Docker-Content-Digest": digest },
      });
    const lies: Record<string, () => Response> = {
      "a redirect": () => redirectTo(`${ELSEWHERE}/cdn/${digest}`),
      "a 200 naming nothing": () => new Response(null, { status: 200 }),
      "a 200 with another size": () =>
        new Response(null, { headers: { "Docker-Content-Digest": digest, "Content-Length": String(size + 1) } }),
      "a 200 without the digest": () => new Response(null, { headers: { "Content-Length": String(size) } }),
    };
    for (const [lie, answer] of Object.entries(lies)) {
      upstream.intercept = (asked, url) => {
        if (url.pathname !== `/v2/team/app/blobs/${digest}`) return undefined;
        if (asked.method === "HEAD") return answer();
        // It has no such bytes: a 404, or its CDN's other bytes.
        return lie === "a redirect" ? redirectTo(`${ELSEWHERE}/cdn/${digest}`) : new Response(null, { status: 404 });
      };
      const got = await pull(`/v2/up.test/team/app/blobs/${digest}`);
      if (lie === "a redirect") {
        // The CDN's bytes, checked on the way: the answer fails before its end.
        expect(got.response.status, lie).toBe(200);
        expect(got.failed, lie).toBe(true);
        expect(got.bytes.byteLength, lie).toBeLessThan(size);
      } else {
        await expectError(new Response(got.bytes, got.response), 404, "BLOB_UNKNOWN");
      }
      expect(await sha256(got.bytes), lie).not.toBe(digest);
      const head = await pull(`/v2/up.test/team/app/blobs/${digest}`, { method: "HEAD" });
      expect(head.bytes.byteLength, lie).toBe(0);
      expect(await linked("up.test/team/app", digest), lie).toBe(false);
    }
    // Nothing was linked: with the upstream gone, the mirrored name has nothing to serve.
    upstream.intercept = null;
    upstream.fault = "down";
    await expectError(await request(`/v2/up.test/team/app/blobs/${digest}`), 503, "UNAVAILABLE");
    expect((await request(`/v2/up.test/team/app/blobs/${digest}`, { method: "HEAD" })).status).toBe(503);
    expect(await linked("up.test/team/app", digest)).toBe(false);
  });

  it("links a stored blob on the upstream's own HEAD naming its digest and size, or once its bytes matched", async () => {
    settings = withAuthentication();
    const secret = secretConfig();
    const digest = await pushPrivate("private/shared", secret);
    const size = secret.byteLength;
    const stored = await dataObjects();
    // The upstream's own answer names the digest and the size: linked at once.
    upstream.intercept = (asked, url) =>
      url.pathname === `/v2/team/named/blobs/${digest}` && asked.method === "HEAD"
        ? new Response(null, { headers: { "Docker-Content-Digest": digest, "Content-Length": String(size) } })
        : undefined;
    const named = await request(`/v2/up.test/team/named/blobs/${digest}`);
    expect(upstreamCalls(named)).toBe(1);
    expect(await bodyDigest(named)).toBe(digest);
    expect(await linked("up.test/team/named", digest)).toBe(true);
    // A HEAD redirected to its CDN proves nothing; the CDN's bytes do, once they hashed to the digest.
    upstream.intercept = (_, url) =>
      url.pathname === `/v2/team/shown/blobs/${digest}` ? redirectTo(`${ELSEWHERE}/cdn/${digest}`) : undefined;
    elsewhere.answer = (asked) =>
      new Response(asked.method === "HEAD" ? null : secret, { headers: { "Content-Length": String(size) } });
    const shown = await pull(`/v2/up.test/team/shown/blobs/${digest}`);
    expect([shown.response.status, shown.failed]).toEqual([200, false]);
    expect(await sha256(shown.bytes)).toBe(digest);
    expect(elsewhere.log).toEqual([`GET /cdn/${digest}`]);
    expect(await linked("up.test/team/shown", digest)).toBe(true);
    // Linked, not stored again; served from storage from now on.
    expect(await dataObjects()).toBe(stored);
    const again = await request(`/v2/up.test/team/shown/blobs/${digest}`);
    expect(upstreamCalls(again)).toBe(0);
    expect(await bodyDigest(again)).toBe(digest);
  });

  it("a fill that finds the blob stored meanwhile links it only once the upstream's bytes match", async () => {
    settings = withAuthentication();
    /**
     * Pulls a blob through `repository` while it is pushed to a private one (after the
     * mirror found it not stored, before its fill starts); the upstream then sends
     * `bytes` (or the blob's own). Returns the digest and what the pull got.
     */
    const pullWhilePushed = async (repository: string, lie: boolean) => {
      const secret = secretConfig();
      const digest = await sha256(secret);
      const bytes = lie ? randomBytes(secret.byteLength) : secret;
      let asked: () => void = () => undefined;
      const gotRequest = new Promise<void>((resolve) => (asked = resolve));
      let release: () => void = () => undefined;
      const released = new Promise<void>((resolve) => (release = resolve));
      upstream.intercept = (outbound, url) => {
        if (url.pathname !== `/v2/${repository}/blobs/${digest}` || outbound.method !== "GET") return undefined;
        asked();
        return released.then(() => new Response(bytes, { headers: { "Content-Length": String(bytes.byteLength) } }));
      };
      const pulling = pull(`/v2/up.test/${repository}/blobs/${digest}`);
      await gotRequest;
      await pushPrivate(`private/${repository}`, secret);
      release();
      return { digest, got: await pulling };
    };
    // Other bytes of the right length: nothing linked.
    const lied = await pullWhilePushed("team/raced", true);
    expect(lied.got.failed).toBe(true);
    expect(await linked("up.test/team/raced", lied.digest)).toBe(false);
    // The right bytes: linked to the stored blob, nothing stored but the push.
    const stored = await dataObjects();
    const right = await pullWhilePushed("team/honest", false);
    expect([right.got.failed, await sha256(right.got.bytes)]).toEqual([false, right.digest]);
    expect(await linked("up.test/team/honest", right.digest)).toBe(true);
    expect(await dataObjects()).toBe(stored + 1);
  });

  it("sends a blob of unknown length with a length, so bytes that do not match end it short", async () => {
    const layerBytes = randomBytes(2 * MiB);
    const image = await upstream.addImage("team/chunky", "v1", [layerBytes]);
    const layer = image.layers[1] ?? "";
    // Chunked, not matching: the length comes from the upstream's HEAD, and the answer is cut short of it.
    upstream.fault = "chunked-corrupt";
    const cut = await pull(`/v2/up.test/team/chunky/blobs/${layer}`);
    expect(cut.response.status).toBe(200);
    expect(cut.response.headers.get("Content-Length")).toBe(String(layerBytes.byteLength));
    expect(cut.failed).toBe(true);
    expect(cut.bytes.byteLength).toBeLessThan(layerBytes.byteLength);
    // Chunked and right: whole, with its length.
    upstream.fault = "chunked";
    const whole = await pull(`/v2/up.test/team/chunky/blobs/${layer}`);
    expect(whole.response.headers.get("Content-Length")).toBe(String(layerBytes.byteLength));
    expect([whole.failed, await sha256(whole.bytes)]).toEqual([false, layer]);
    // No length anywhere (the HEAD names none either): refused before any byte, never sent chunked.
    upstream.intercept = (asked) =>
      asked.method === "HEAD" ? new Response(null, { headers: { "Docker-Content-Digest": layer } }) : undefined;
    const refused = await pull(`/v2/up.test/team/chunky/blobs/${layer}`);
    await expectError(new Response(refused.bytes, refused.response), 503, "UNAVAILABLE");
  });

  it("follows redirects only for a blob's bytes, to http(s), and passes no unchecked range on", async () => {
    settings = mirrorEnv([{ prefix: "up.test", url: UPSTREAM, tagTtlSeconds: 0 }]);
    const layerBytes = randomBytes(300_000);
    const image = await upstream.addImage("team/redirected", "v1", [layerBytes]);
    expect((await request("/v2/up.test/team/redirected/manifests/v1")).status).toBe(200);
    const other = await upstream.addImage("team/redirected", "v2", [randomBytes(100)]);
    // Tag lists, manifests and tokens come from the upstream itself: a redirect is a failure.
    elsewhere.answer = () => Response.json({ name: "team/redirected", tags: ["planted"], token: "planted" });
    upstream.intercept = (_, url) =>
      /\/(tags\/list|manifests\/[^/]+)$/.test(url.pathname) ? redirectTo(`${ELSEWHERE}${url.pathname}`) : undefined;
    const tags = (await (await request("/v2/up.test/team/redirected/tags/list")).json()) as { tags: string[] };
    expect(tags.tags).toEqual(["v1"]);
    const tagged = await request("/v2/up.test/team/redirected/manifests/v1");
    expect(tagged.headers.get("Docker-Content-Digest")).toBe(image.digest);
    await expectError(await request(`/v2/up.test/team/redirected/manifests/${other.digest}`), 503, "UNAVAILABLE");
    upstream.intercept = (_, url) => (url.pathname === "/token" ? redirectTo(`${ELSEWHERE}/token`) : undefined);
    upstream.auth = "bearer";
    await expectError(await request(`/v2/up.test/team/redirected/manifests/${other.digest}`), 503, "UNAVAILABLE");
    upstream.auth = "none";
    expect(elsewhere.log).toEqual([]);

    // A range of a blob not stored: the whole blob is fetched (no Range upstream), checked,
    // stored, and sent whole; its CDN's 206 of other bytes is never asked for.
    const layer = image.layers[1] ?? "";
    upstream.intercept = (asked, url) =>
      url.pathname === `/v2/team/redirected/blobs/${layer}` && asked.method === "GET"
        ? redirectTo(`${ELSEWHERE}/cdn/${layer}`)
        : undefined;
    elsewhere.answer = (asked) =>
      asked.headers.has("Range")
        ? new Response(randomBytes(10), {
            status: 206,
            headers: { "Content-Range": `bytes 0-9/${layerBytes.byteLength}`, "Content-Length": "10" },
          })
        : new Response(layerBytes, { headers: { "Content-Length": String(layerBytes.byteLength) } });
    const ranged = await pull(`/v2/up.test/team/redirected/blobs/${layer}`, { headers: { Range: "bytes=0-9" } });
    expect([ranged.response.status, ranged.failed, await sha256(ranged.bytes)]).toEqual([200, false, layer]);
    expect(elsewhere.log).toEqual([`GET /cdn/${layer}`]);
    // Stored now: a range is served from what was checked.
    const part = await request(`/v2/up.test/team/redirected/blobs/${layer}`, { headers: { Range: "bytes=0-9" } });
    expect(part.status).toBe(206);
    expect(new Uint8Array(await part.arrayBuffer())).toEqual(layerBytes.slice(0, 10));

    // A redirect to anything but http(s) is not followed.
    const config = image.layers[0] ?? "";
    upstream.intercept = (_, url) =>
      url.pathname === `/v2/team/redirected/blobs/${config}` ? redirectTo("gopher://elsewhere.test/config") : undefined;
    await expectError(await request(`/v2/up.test/team/redirected/blobs/${config}`), 503, "UNAVAILABLE");
    expect(elsewhere.log).toEqual([`GET /cdn/${layer}`]);
  });

  it("names the mirror's prefix in its errors, never the upstream's address", async () => {
    settings = mirrorEnv([{ prefix: "up.test", url: UPSTREAM, tagTtlSeconds: 0, timeoutSeconds: 0.2 }]);
    const image = await upstream.addImage("team/failing", "v1", [randomBytes(100)]);
    const texts: string[] = [];
    const failing = async (path: string, status: number) => {
      const response = await request(path);
      expect(response.status, path).toBe(status);
      texts.push(await response.text());
    };
    for (const fault of ["down", "hang", "bad-realm"] as const) {
      upstream.fault = fault;
      await failing("/v2/up.test/team/failing/manifests/v1", 503);
      await failing(`/v2/up.test/team/failing/blobs/${image.layers[1] ?? ""}`, 503);
    }
    upstream.fault = "none";
    upstream.intercept = (_, url) => (url.pathname.includes("/blobs/") ? redirectTo("gopher://10.1.2.3/x") : undefined);
    await failing(`/v2/up.test/team/failing/blobs/${image.layers[0] ?? ""}`, 503);
    texts.push(await (await request("/v2/up.test/team/failing/blobs/uploads/", { method: "POST" })).text());
    for (const text of texts) {
      expect(text).toContain("up.test");
      expect(text).not.toMatch(/upstream\.test|10\.1\.2\.3|gopher|not a url/i);
    }
  });
});
