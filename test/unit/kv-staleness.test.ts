import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import {
  digestStream,
  expectError,
  imageManifest,
  MediaTypes,
  pushBlob,
  pushImage,
  putManifest,
  randomBytes,
  registry,
  sha256,
  startUpload,
  utf8,
  withDigest,
} from "./helpers";
import { expectConsistent, installStorage } from "./storage-faults";

/**
 * In production KV is eventually consistent: a write can take ~60 s to reach other
 * locations, a miss can be cached, an old value can still be served. miniflare's KV is
 * instantly consistent, so these tests run the registry on a KV that lags on purpose.
 */

async function pulledDigest(response: Response): Promise<string> {
  expect(response.status).toBe(200);
  const body = response.body;
  if (!body) throw new Error("no body");
  return (await digestStream(body)).digest;
}

describe("a KV that has not seen any write yet (every read a miss)", () => {
  it("a push (blobs, then manifest, then tag) always succeeds and the pusher reads back what it wrote", async () => {
    installStorage(undefined, { misses: true });
    for (let round = 0; round < 5; round++) {
      const name = `stale/miss-${round}`;
      // One blob monolithic, one chunked: both paths publish through the upload object.
      const config = utf8(JSON.stringify({ architecture: "amd64", os: "linux", round }));
      const configDigest = await pushBlob(name, config);
      const layer = randomBytes(50_000);
      const layerDigest = await sha256(layer);
      const { location } = await startUpload(name);
      expect((await registry(location, { method: "PATCH", body: layer })).status).toBe(202);
      expect((await registry(withDigest(location, layerDigest), { method: "PUT" })).status).toBe(201);
      const manifest = {
        schemaVersion: 2,
        mediaType: MediaTypes.ociManifest,
        config: { mediaType: MediaTypes.ociConfig, digest: configDigest, size: config.byteLength },
        layers: [{ mediaType: MediaTypes.ociLayer, digest: layerDigest, size: layer.byteLength }],
      };
      // Never MANIFEST_BLOB_UNKNOWN for blobs whose uploads returned 201.
      const put = await putManifest(name, "v1", manifest, MediaTypes.ociManifest);
      expect(put.status).toBe(201);
      const pulled = await registry(`/v2/${name}/manifests/v1`, { headers: { Accept: MediaTypes.ociManifest } });
      expect(await pulledDigest(pulled)).toBe(put.headers.get("Docker-Content-Digest"));
      expect(await pulledDigest(await registry(`/v2/${name}/blobs/${layerDigest}`))).toBe(layerDigest);
      const tags = (await (await registry(`/v2/${name}/tags/list`)).json()) as { tags: string[] };
      expect(tags.tags).toEqual(["v1"]);
    }
    await expectConsistent();
  });

  it("a blob mounted into another repository is readable there at once", async () => {
    const bytes = utf8("mount under stale kv");
    const digest = await pushBlob("stale/mount-source", bytes);
    installStorage(undefined, { misses: true });
    const mounted = await registry(`/v2/stale/mount-target/blobs/uploads/?mount=${digest}&from=stale/mount-source`, {
      method: "POST",
    });
    expect(mounted.status).toBe(201);
    expect(await pulledDigest(await registry(`/v2/stale/mount-target/blobs/${digest}`))).toBe(digest);
  });
});

describe("a KV that still serves old values", () => {
  it("a cached descriptor naming an object that is gone is corrected from R2", async () => {
    const name = "stale/old-descriptor";
    const bytes = randomBytes(20_000);
    const digest = await pushBlob(name, bytes);
    // As if the blob had been removed and pushed again: the old copy names another object.
    const stale = JSON.stringify({ digest, size: bytes.byteLength, key: "data/00000000-0000-4000-8000-000000000000" });
    installStorage(undefined, { oldValues: new Map([[`blob:${digest}`, stale]]) });
    expect(await pulledDigest(await registry(`/v2/${name}/blobs/${digest}`))).toBe(digest);
    const ranged = await registry(`/v2/${name}/blobs/${digest}`, { headers: { Range: "bytes=0-9" } });
    expect(ranged.status).toBe(206);
    expect(new Uint8Array(await ranged.arrayBuffer())).toEqual(bytes.slice(0, 10));
  });

  it("a cached manifest descriptor naming an object that is gone is corrected from R2", async () => {
    const name = "stale/old-manifest";
    const image = await pushImage(name, "v1");
    const stale = JSON.stringify({ digest: image.digest, size: image.size, key: "data/gone" });
    installStorage(undefined, { oldValues: new Map([[`blob:${image.digest}`, stale]]) });
    const pulled = await registry(`/v2/${name}/manifests/v1`, { headers: { Accept: MediaTypes.ociManifest } });
    expect(await pulledDigest(pulled)).toBe(image.digest);
  });

  it("a deleted blob link is gone at once, though KV still holds the blob's descriptor", async () => {
    const name = "stale/deleted-link";
    const bytes = utf8("deleted while cached");
    const digest = await pushBlob(name, bytes);
    expect((await registry(`/v2/${name}/blobs/${digest}`)).status).toBe(200);
    const cached = await env.META.get(`blob:${digest}`);
    expect(cached).not.toBeNull();
    installStorage(undefined, { oldValues: new Map([[`blob:${digest}`, cached ?? ""]]) });
    expect((await registry(`/v2/${name}/blobs/${digest}`, { method: "DELETE" })).status).toBe(202);
    await expectError(await registry(`/v2/${name}/blobs/${digest}`), 404, "BLOB_UNKNOWN");
    expect((await registry(`/v2/${name}/blobs/${digest}`, { method: "HEAD" })).status).toBe(404);
  });

  it("a deleted manifest is gone at once by digest and by tag", async () => {
    const name = "stale/deleted-manifest";
    const image = await pushImage(name, "v1");
    const cached = await env.META.get(`blob:${image.digest}`);
    installStorage(undefined, { oldValues: new Map([[`blob:${image.digest}`, cached ?? ""]]) });
    expect((await registry(`/v2/${name}/manifests/${image.digest}`, { method: "DELETE" })).status).toBe(202);
    await expectError(await registry(`/v2/${name}/manifests/${image.digest}`), 404, "MANIFEST_UNKNOWN");
    await expectError(await registry(`/v2/${name}/manifests/v1`), 404, "MANIFEST_UNKNOWN");
  });

  it("a tag moved is seen moved by the next pull", async () => {
    const name = "stale/moved-tag";
    const first = await pushImage(name, "latest");
    installStorage(undefined, { misses: true });
    const second = await putManifest(name, "latest", await imageManifest(name), MediaTypes.ociManifest);
    expect(second.status).toBe(201);
    const pulled = await registry(`/v2/${name}/manifests/latest`, { headers: { Accept: MediaTypes.ociManifest } });
    const digest = await pulledDigest(pulled);
    expect(digest).toBe(second.headers.get("Docker-Content-Digest"));
    expect(digest).not.toBe(first.digest);
  });
});

describe("a KV still holding a descriptor R2 no longer has (withdrawn by npm run verify --repair)", () => {
  it("the write path does not trust it: a manifest naming that blob is refused, and pushing the bytes stores them", async () => {
    const name = "stale/withdrawn";
    const bytes = randomBytes(30_000);
    const digest = await sha256(bytes);
    const ghost = JSON.stringify({ digest, size: bytes.byteLength, key: "data/withdrawn-object" });
    installStorage(undefined, { oldValues: new Map([[`blob:${digest}`, ghost]]) });
    // Linked but withdrawn: the link exists in R2, the descriptor does not.
    await env.BLOBS.put(`repositories/${name}/_layers/${digest.replace(":", "/")}`, "{}");
    const config = utf8('{"os":"linux"}');
    const configDigest = await pushBlob(name, config);
    const manifest = {
      schemaVersion: 2,
      mediaType: MediaTypes.ociManifest,
      config: { mediaType: MediaTypes.ociConfig, digest: configDigest, size: config.byteLength },
      layers: [{ mediaType: MediaTypes.ociLayer, digest, size: bytes.byteLength }],
    };
    await expectError(await putManifest(name, "v1", manifest, MediaTypes.ociManifest), 400, "MANIFEST_BLOB_UNKNOWN");
    // The client pushes the layer again: it is stored for real, not "deduplicated" into nothing.
    expect(await pushBlob(name, bytes)).toBe(digest);
    const { location } = await startUpload(`${name}-chunked`);
    expect((await registry(location, { method: "PATCH", body: bytes })).status).toBe(202);
    expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);
    expect((await putManifest(name, "v1", manifest, MediaTypes.ociManifest)).status).toBe(201);
    expect(await pulledDigest(await registry(`/v2/${name}/blobs/${digest}`))).toBe(digest);
    await expectConsistent({ rehash: true });
  });
});

describe("a KV whose list lags", () => {
  it("tags and the catalog list what was just pushed (they are R2 listings, never KV lists)", async () => {
    installStorage(undefined, { laggingList: true });
    await pushImage("stale/listing", "fresh");
    const tags = (await (await registry("/v2/stale/listing/tags/list")).json()) as { tags: string[] };
    expect(tags.tags).toEqual(["fresh"]);
    const catalog = (await (await registry("/v2/_catalog")).json()) as { repositories: string[] };
    expect(catalog.repositories).toContain("stale/listing");
  });
});
