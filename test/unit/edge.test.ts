import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { app } from "../../src/app";
import {
  BASE,
  digestStream,
  expectError,
  imageManifest,
  MediaTypes,
  MiB,
  pushManifest,
  pushBlob,
  pushImage,
  randomBytes,
  registry,
  startUpload,
  utf8,
  withDigest,
} from "./helpers";
import { installStorage } from "./storage-faults";

/**
 * Pulls at the edge: links read from KV, bytes by digest from the location's cache, and
 * every answer's Server-Timing saying what it read.
 */

/** The size of one R2 read when a blob streams out (blob-store.ts READ_SLICE_BYTES). */
const READ_SLICE = 16 * MiB;

/** `r2;dur=1;desc="2", cache;desc="hit"` → { r2: 2, cache: "hit", … }. */
function timing(response: Response): Record<string, number | string> {
  const parsed: Record<string, number | string> = {};
  for (const metric of (response.headers.get("Server-Timing") ?? "").split(",")) {
    const [name, ...parameters] = metric.trim().split(";");
    const desc = parameters.find((parameter) => parameter.startsWith("desc="))?.slice(6, -1);
    if (name && desc !== undefined) parsed[name] = /^\d+$/.test(desc) ? Number(desc) : desc;
  }
  return parsed;
}

/** The registry with other settings (no ExecutionContext: background cache writes just run). */
function withSettings(settings: Partial<Record<string, string>>) {
  return (path: string, init?: RequestInit) =>
    Promise.resolve(app.request(new URL(path, BASE).toString(), init, { ...env, ...settings } as Env));
}

/**
 * Waits (at most 5 s) until this location's cache holds `digest` whole: the fill runs
 * beside the answer, in the background.
 */
async function cached(digest: string): Promise<void> {
  const cache = await caches.open("edge-registry");
  for (let attempt = 0; attempt < 100; attempt++) {
    const entry = await cache.match(`${BASE}/_edge-cache/blobs/${digest}`);
    await entry?.body?.cancel();
    if (entry) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`${digest} was not cached within 5 s`);
}

/** Pushes `bytes` through a chunked upload, so a blob over one part is a multipart object. */
async function pushChunked(name: string, bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = `sha256:${[...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))].map((byte) => byte.toString(16).padStart(2, "0")).join("")}`;
  const { location } = await startUpload(name);
  const patched = await registry(location, { method: "PATCH", body: bytes });
  expect(patched.status).toBe(202);
  const committed = await registry(withDigest(patched.headers.get("Location") ?? location, digest), { method: "PUT" });
  expect(committed.status).toBe(201);
  return digest;
}

describe("Server-Timing", () => {
  it("every answer says what it read: r2, kv, cache and do, each with dur and desc", async () => {
    const response = await registry("/v2/");
    expect(response.headers.get("Server-Timing")).toMatch(
      /^r2;dur=[\d.]+;desc="0", kv;dur=[\d.]+;desc="0", cache;dur=[\d.]+;desc="bypass", do;dur=[\d.]+;desc="0"$/,
    );
  });

  it("an upload counts its Durable Object calls; a manifest push its R2 writes, as class A", async () => {
    const { location } = await startUpload("edge/metered");
    const patched = await registry(location, { method: "PATCH", body: utf8("metered upload") });
    expect(timing(patched).do).toBe(1);
    const image = await imageManifest("edge/metered");
    const pushed = await registry("/v2/edge/metered/manifests/v1", {
      method: "PUT",
      headers: { "Content-Type": MediaTypes.ociManifest },
      body: JSON.stringify(image),
    });
    expect(pushed.status).toBe(201);
    expect(Number(timing(pushed)["r2-class-a"])).toBeGreaterThan(0);
    expect(Number(timing(pushed)["kv-write"])).toBeGreaterThan(0);
  });
});

describe("blobs by digest from the location's cache", () => {
  it("the first GET reads R2 and fills the cache; the next reads nothing from R2, with Content-Length", async () => {
    const name = "edge/cached";
    const bytes = randomBytes(READ_SLICE + 5 * MiB);
    const digest = await pushChunked(name, bytes);
    const first = await registry(`/v2/${name}/blobs/${digest}`);
    expect(first.headers.get("Content-Length")).toBe(String(bytes.byteLength));
    expect(timing(first)).toMatchObject({ cache: "miss", r2: 2, kv: 1 });
    expect(await digestStream(first.body ?? new ReadableStream())).toEqual({ digest, size: bytes.byteLength });
    await cached(digest);
    const second = await registry(`/v2/${name}/blobs/${digest}`);
    expect(second.headers.get("Content-Length")).toBe(String(bytes.byteLength));
    expect(timing(second)).toMatchObject({ cache: "hit", r2: 0 });
    expect(await digestStream(second.body ?? new ReadableStream())).toEqual({ digest, size: bytes.byteLength });
  });

  it("a range is answered from the cached copy (206), across R2's read slices", async () => {
    const name = "edge/range";
    const bytes = randomBytes(READ_SLICE + 3 * MiB);
    const digest = await pushChunked(name, bytes);
    await (await registry(`/v2/${name}/blobs/${digest}`)).arrayBuffer();
    await cached(digest);
    const start = READ_SLICE - 10;
    const ranged = await registry(`/v2/${name}/blobs/${digest}`, {
      headers: { Range: `bytes=${start}-${start + 99}` },
    });
    expect(ranged.status).toBe(206);
    expect(ranged.headers.get("Content-Range")).toBe(`bytes ${start}-${start + 99}/${bytes.byteLength}`);
    expect(timing(ranged)).toMatchObject({ cache: "hit", r2: 0 });
    expect(new Uint8Array(await ranged.arrayBuffer())).toEqual(bytes.slice(start, start + 100));
  });

  it("every repository linking a blob shares one cached copy, after its own link check", async () => {
    const bytes = utf8("shared by two repositories");
    const digest = await pushBlob("edge/one", bytes);
    await pushBlob("edge/two", bytes);
    await (await registry(`/v2/edge/one/blobs/${digest}`)).arrayBuffer();
    await cached(digest);
    const other = await registry(`/v2/edge/two/blobs/${digest}`);
    expect(timing(other)).toMatchObject({ cache: "hit", r2: 0 });
    await other.arrayBuffer();
    // A repository that does not link it never reaches the cache.
    await expectError(await registry(`/v2/edge/three/blobs/${digest}`), 404, "BLOB_UNKNOWN");
  });

  it("the empty blob has Content-Length: 0", async () => {
    const digest = await pushBlob("edge/empty", new Uint8Array(0));
    const response = await registry(`/v2/edge/empty/blobs/${digest}`);
    expect(response.status).toBe(200);
    expect(response.headers.get("Content-Length")).toBe("0");
    expect((await response.arrayBuffer()).byteLength).toBe(0);
  });

  it("a blob over EDGE_CACHE_MAX_BYTES streams from R2 every time; EDGE_CACHE=off and workers.dev bypass the cache", async () => {
    const digest = await pushBlob("edge/big", randomBytes(64 * 1024));
    const small = withSettings({ EDGE_CACHE_MAX_BYTES: "1024" });
    for (let round = 0; round < 2; round++) {
      const response = await small(`/v2/edge/big/blobs/${digest}`);
      expect(timing(response)).toMatchObject({ cache: "miss", r2: 1 });
      await response.arrayBuffer();
    }
    const off = await withSettings({ EDGE_CACHE: "off" })(`/v2/edge/big/blobs/${digest}`);
    expect(timing(off)).toMatchObject({ cache: "bypass", r2: 1 });
    await off.arrayBuffer();
    const workersDev = await app.request(`https://registry.example.workers.dev/v2/edge/big/blobs/${digest}`, {}, env);
    expect(timing(workersDev)).toMatchObject({ cache: "bypass" });
    await workersDev.arrayBuffer();
  });
});

describe("manifests at the edge", () => {
  it("by digest: a small manifest rides in its link's KV copy: one KV read, nothing else", async () => {
    const image = await pushImage("edge/manifest", "v1");
    const warm = await registry(`/v2/edge/manifest/manifests/${image.digest}`, {
      headers: { Accept: MediaTypes.ociManifest },
    });
    expect(timing(warm)).toMatchObject({ r2: 0, kv: 1, cache: "bypass" });
    expect(new Uint8Array(await warm.arrayBuffer())).toEqual(image.bytes);
    const head = await registry(`/v2/edge/manifest/manifests/${image.digest}`, { method: "HEAD" });
    expect(head.headers.get("Content-Length")).toBe(String(image.size));
    expect(timing(head)).toMatchObject({ r2: 0, kv: 1 });
  });

  it("by tag: one R2 read, the tag record, which carries a small manifest (strong by default)", async () => {
    const image = await pushImage("edge/by-tag", "v1");
    const warm = await registry("/v2/edge/by-tag/manifests/v1", { headers: { Accept: MediaTypes.ociManifest } });
    expect(timing(warm)).toMatchObject({ r2: 1, kv: 0 });
    expect(new Uint8Array(await warm.arrayBuffer())).toEqual(image.bytes);
  });

  it("a HEAD by tag reads the tag object's metadata: one R2 head, no body", async () => {
    const image = await pushImage("edge/head-by-tag", "v1");
    const storage = installStorage();
    const head = await registry("/v2/edge/head-by-tag/manifests/v1", { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.headers.get("Docker-Content-Digest")).toBe(image.digest);
    expect(head.headers.get("Content-Type")).toBe(MediaTypes.ociManifest);
    expect(head.headers.get("Content-Length")).toBe(String(image.size));
    expect(timing(head)).toMatchObject({ r2: 1, kv: 0 });
    expect(storage.log.map((call) => `${call.store}.${call.method}`)).toEqual(["r2.head"]);
  });

  it("a HEAD by tag of a tag written without that metadata reads its record", async () => {
    const image = await pushImage("edge/head-old-tag", "v1");
    const key = "repositories/edge/head-old-tag/_manifests/tags/v1";
    const record = await (await env.BLOBS.get(key))?.text();
    // As tags were written before: the record, and the digest alone in the metadata.
    await env.BLOBS.put(key, record ?? "", { customMetadata: { digest: image.digest } });
    const head = await registry("/v2/edge/head-old-tag/manifests/v1", { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.headers.get("Docker-Content-Digest")).toBe(image.digest);
    expect(head.headers.get("Content-Length")).toBe(String(image.size));
    // The oldest records name the digest alone: the revision link has the rest.
    await env.BLOBS.put(key, image.digest, { customMetadata: { digest: image.digest } });
    const oldest = await registry("/v2/edge/head-old-tag/manifests/v1", { method: "HEAD" });
    expect(oldest.headers.get("Content-Type")).toBe(MediaTypes.ociManifest);
    expect(oldest.headers.get("Content-Length")).toBe(String(image.size));
  });

  it("a manifest too large to ride along (over 64 KiB) is served from the cache once warm", async () => {
    const name = "edge/large-manifest";
    const manifest = { ...(await imageManifest(name)), annotations: { padding: "x".repeat(70_000) } };
    const pushed = await pushManifest(name, "v1", manifest);
    const get = () =>
      registry(`/v2/${name}/manifests/${pushed.digest}`, { headers: { Accept: MediaTypes.ociManifest } });
    await (await get()).arrayBuffer();
    await cached(pushed.digest);
    const warm = await get();
    expect(timing(warm)).toMatchObject({ r2: 0, cache: "hit" });
    expect(new Uint8Array(await warm.arrayBuffer())).toEqual(pushed.bytes);
    const byTag = await registry(`/v2/${name}/manifests/v1`, { headers: { Accept: MediaTypes.ociManifest } });
    expect(timing(byTag)).toMatchObject({ r2: 1, cache: "hit" });
    expect(new Uint8Array(await byTag.arrayBuffer())).toEqual(pushed.bytes);
  });

  it("bytes riding along that do not hash to the digest are not served: R2 answers", async () => {
    const image = await pushImage("edge/bad-copy", "v1");
    const key = `link:edge/bad-copy/_manifests/${image.digest}`;
    const copy = (await env.META.get(key, "json")) as Record<string, unknown>;
    await env.META.put(key, JSON.stringify({ ...copy, content: btoa("{}") }));
    const answer = await registry(`/v2/edge/bad-copy/manifests/${image.digest}`, {
      headers: { Accept: MediaTypes.ociManifest },
    });
    expect(new Uint8Array(await answer.arrayBuffer())).toEqual(image.bytes);
  });

  it("with EDGE_TAG_TTL_SECONDS a tag read elsewhere is kept here; moved here, it is seen moved at once", async () => {
    const withTtl = withSettings({ EDGE_TAG_TTL_SECONDS: "60" });
    const first = await pushImage("edge/tag-ttl", "latest");
    const resolve = async () => {
      const response = await withTtl("/v2/edge/tag-ttl/manifests/latest", { method: "HEAD" });
      return { digest: response.headers.get("Docker-Content-Digest"), r2: timing(response).r2 };
    };
    expect((await resolve()).digest).toBe(first.digest);
    // The tag's record is kept in the background: wait (bounded) until it is.
    let again = await resolve();
    for (let attempt = 0; attempt < 100 && again.r2 !== 0; attempt++) {
      await new Promise((wait) => setTimeout(wait, 50));
      again = await resolve();
    }
    expect(again).toEqual({ digest: first.digest, r2: 0 });
    // Moved at another location: this one may answer the old digest until the TTL ends.
    const second = await pushImage("edge/tag-ttl", undefined, "second");
    await env.BLOBS.put("repositories/edge/tag-ttl/_manifests/tags/latest", second.digest);
    expect((await resolve()).digest).toBe(first.digest);
    // Moved here: seen at once.
    const moved = await withTtl("/v2/edge/tag-ttl/manifests/latest", {
      method: "PUT",
      headers: { "Content-Type": MediaTypes.ociManifest },
      body: second.bytes,
    });
    expect(moved.status).toBe(201);
    expect((await resolve()).digest).toBe(second.digest);
  });
});

describe("links at the edge", () => {
  it("a link pushed at another location (not yet in KV here) is never a false 404: R2 answers", async () => {
    installStorage(undefined, { misses: true });
    const bytes = utf8("pushed elsewhere a moment ago");
    const digest = await pushBlob("edge/fresh", bytes);
    const response = await registry(`/v2/edge/fresh/blobs/${digest}`);
    expect(response.status).toBe(200);
    await response.arrayBuffer();
  });

  it("a link deleted at another location stays visible here only through KV's copy (≤ the TTL); with TTL 0, never", async () => {
    const bytes = utf8("deleted elsewhere");
    const digest = await pushBlob("edge/deleted-elsewhere", bytes);
    const copy = await env.META.get(`link:edge/deleted-elsewhere/_layers/${digest}`);
    expect(copy).not.toBeNull();
    // Deleted at another location: R2 has no link; this location's KV still serves the copy.
    await registry(`/v2/edge/deleted-elsewhere/blobs/${digest}`, { method: "DELETE" });
    installStorage(undefined, {
      oldValues: new Map([[`link:edge/deleted-elsewhere/_layers/${digest}`, copy ?? "{}"]]),
    });
    const stale = await registry(`/v2/edge/deleted-elsewhere/blobs/${digest}`, { method: "HEAD" });
    expect(stale.status).toBe(200);
    const strong = await withSettings({ EDGE_LINK_TTL_SECONDS: "0" })(`/v2/edge/deleted-elsewhere/blobs/${digest}`, {
      method: "HEAD",
    });
    expect(strong.status).toBe(404);
  });

  it("a link deleted here is gone here at once (its KV copy is deleted first)", async () => {
    const digest = await pushBlob("edge/deleted-here", utf8("deleted here"));
    expect((await registry(`/v2/edge/deleted-here/blobs/${digest}`, { method: "DELETE" })).status).toBe(202);
    expect(await env.META.get(`link:edge/deleted-here/_layers/${digest}`)).toBeNull();
    await expectError(await registry(`/v2/edge/deleted-here/blobs/${digest}`), 404, "BLOB_UNKNOWN");
  });

  it("a pull that finds no KV copy writes one, so the next pull reads no R2", async () => {
    const digest = await pushBlob("edge/repaired", utf8("copy lost"));
    await env.META.delete(`link:edge/repaired/_layers/${digest}`);
    const first = await registry(`/v2/edge/repaired/blobs/${digest}`, { method: "HEAD" });
    expect(timing(first).r2).toBeGreaterThan(0);
    expect(await env.META.get(`link:edge/repaired/_layers/${digest}`)).not.toBeNull();
    const second = await registry(`/v2/edge/repaired/blobs/${digest}`, { method: "HEAD" });
    expect(timing(second)).toMatchObject({ r2: 0, kv: 1 });
  });
});

describe("what the cache keeps is the blob, whole", () => {
  /** Reads `bytes` of a response's body, then gives up on the rest (a client going away). */
  async function readThenDrop(response: Response, bytes: number): Promise<void> {
    const reader = response.body?.getReader();
    if (!reader) throw new Error("no body");
    for (let read = 0; read < bytes;) {
      const { done, value } = await reader.read();
      if (done) break;
      read += value.byteLength;
    }
    await reader.cancel();
  }

  it("a client that goes away mid-pull leaves no cut-short copy: the next pulls get the whole blob", async () => {
    const name = "edge/dropped";
    const bytes = randomBytes(READ_SLICE + 4 * MiB);
    const digest = await pushChunked(name, bytes);
    await readThenDrop(await registry(`/v2/${name}/blobs/${digest}`), 2 * MiB);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const again = await registry(`/v2/${name}/blobs/${digest}`);
    expect(again.headers.get("Content-Length")).toBe(String(bytes.byteLength));
    expect(await digestStream(again.body ?? new ReadableStream())).toEqual({ digest, size: bytes.byteLength });
    await cached(digest);
    const hit = await registry(`/v2/${name}/blobs/${digest}`);
    expect(timing(hit).cache).toBe("hit");
    expect(await digestStream(hit.body ?? new ReadableStream())).toEqual({ digest, size: bytes.byteLength });
  });

  it("bytes in R2 that do not match their digest are never cached, and a long answer of them fails", async () => {
    for (const size of [64 * 1024, READ_SLICE + MiB]) {
      const name = `edge/corrupt-${size}`;
      const bytes = randomBytes(size);
      const digest = await pushChunked(name, bytes);
      const record = await env.BLOBS.get(`blobs/${digest.replace(":", "/")}`);
      const { key } = (await record?.json()) as { key: string };
      await env.BLOBS.put(key, randomBytes(size));
      const first = await registry(`/v2/${name}/blobs/${digest}`);
      const read = await digestStream(first.body ?? new ReadableStream()).catch(() => null);
      // One slice goes out as R2's own body (the client's digest check catches it); a
      // longer answer is failed before its end.
      if (size > READ_SLICE) expect(read).toBeNull();
      else expect(read?.digest).not.toBe(digest);
      await new Promise((resolve) => setTimeout(resolve, 100));
      const second = await registry(`/v2/${name}/blobs/${digest}`, { method: "GET" });
      expect(timing(second).cache).toBe("miss");
      await second.body?.cancel();
    }
  });

  it("a cached entry that is not the whole blob is deleted and never served", async () => {
    const name = "edge/short-entry";
    const bytes = randomBytes(100_000);
    const digest = await pushBlob(name, bytes);
    const cache = await caches.open("edge-registry");
    const key = `${BASE}/_edge-cache/blobs/${digest}`;
    await cache.put(
      key,
      new Response(bytes.slice(0, 1000), {
        headers: { "Content-Length": "1000", "Cache-Control": "public, max-age=3600" },
      }),
    );
    const answer = await registry(`/v2/${name}/blobs/${digest}`);
    expect(timing(answer).cache).toBe("miss");
    expect(await digestStream(answer.body ?? new ReadableStream())).toEqual({ digest, size: bytes.byteLength });
    const entry = await cache.match(key);
    expect(entry?.headers.get("Content-Length") ?? String(bytes.byteLength)).toBe(String(bytes.byteLength));
    await entry?.body?.cancel();
  });
});

describe("deletes reach the edge copies", () => {
  it("a link copy left at the edge with no link in R2 is removed by a DELETE (202), and pulls stop seeing it", async () => {
    const name = "edge/orphan-copy";
    const digest = await pushBlob(name, utf8("copy without its link"));
    await env.BLOBS.delete(`repositories/${name}/_layers/${digest.replace(":", "/")}`);
    expect((await registry(`/v2/${name}/blobs/${digest}`, { method: "HEAD" })).status).toBe(200);
    expect((await registry(`/v2/${name}/blobs/${digest}`, { method: "DELETE" })).status).toBe(202);
    expect(await env.META.get(`link:${name}/_layers/${digest}`)).toBeNull();
    await expectError(await registry(`/v2/${name}/blobs/${digest}`), 404, "BLOB_UNKNOWN");
  });
});

describe("blob redirects", () => {
  const redirecting = {
    BLOB_REDIRECT_MIN_BYTES: "1000",
    R2_ENDPOINT: "https://account.r2.cloudflarestorage.com",
    R2_BUCKET_NAME: "edge-registry-blobs",
    R2_ACCESS_KEY_ID: "key-id",
    R2_SECRET_ACCESS_KEY: "secret",
  };

  it("name the object that is there now, even when the descriptor copy is stale, and are never cacheable", async () => {
    const name = "edge/redirect";
    const digest = await pushBlob(name, randomBytes(5000));
    const record = await env.BLOBS.get(`blobs/${digest.replace(":", "/")}`);
    const { key } = (await record?.json()) as { key: string };
    const stale = { link: {}, descriptor: { digest, size: 5000, key: "data/00000000-0000-4000-8000-000000000000" } };
    await env.META.put(`link:${name}/_layers/${digest}`, JSON.stringify(stale));
    const answer = await withSettings(redirecting)(`/v2/${name}/blobs/${digest}`);
    expect(answer.status).toBe(307);
    expect(new URL(answer.headers.get("Location") ?? "").pathname).toBe(`/edge-registry-blobs/${key}`);
    expect(answer.headers.get("Cache-Control")).toBe("no-store");
    expect(answer.headers.get("ETag")).toBeNull();
    const small = await pushBlob(name, randomBytes(100));
    expect((await withSettings(redirecting)(`/v2/${name}/blobs/${small}`)).status).toBe(200);
  });
});
