import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import {
  descriptorOf,
  digestStream,
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
import { expectConsistent } from "./storage-faults";

/**
 * Clients racing each other. Every response must be right for some serial order of the
 * requests, and the final state consistent (the integrity check finds nothing).
 */

/** A whole image push as one client does it: config and layer blobs, then the manifest under `tag`. */
async function pushWholeImage(
  name: string,
  tag: string,
  config: Uint8Array<ArrayBuffer>,
  layer: Uint8Array<ArrayBuffer>,
) {
  const statuses: number[] = [];
  const configDigest = await sha256(config);
  const layerDigest = await sha256(layer);
  statuses.push(
    (await registry(`/v2/${name}/blobs/uploads/?digest=${configDigest}`, { method: "POST", body: config })).status,
  );
  const { location } = await startUpload(name);
  statuses.push((await registry(location, { method: "PATCH", body: layer })).status);
  statuses.push((await registry(withDigest(location, layerDigest), { method: "PUT" })).status);
  const manifest = {
    schemaVersion: 2,
    mediaType: MediaTypes.ociManifest,
    config: { mediaType: MediaTypes.ociConfig, digest: configDigest, size: config.byteLength },
    layers: [{ mediaType: MediaTypes.ociLayer, digest: layerDigest, size: layer.byteLength }],
  };
  const put = await putManifest(name, tag, manifest, MediaTypes.ociManifest);
  statuses.push(put.status);
  return { statuses, digest: put.headers.get("Docker-Content-Digest"), layerDigest };
}

async function dataObjectCount(): Promise<number> {
  return (await env.BLOBS.list({ prefix: "data/" })).objects.length;
}

describe("many clients pushing the same image to the same tag at once", () => {
  it("all succeed, the tag names that image, and each blob is stored once", async () => {
    const name = "races/same-image";
    const config = utf8(JSON.stringify({ architecture: "arm64", os: "linux" }));
    const layer = randomBytes(300_000);
    const before = await dataObjectCount();
    const pushes = await Promise.all(Array.from({ length: 8 }, () => pushWholeImage(name, "latest", config, layer)));
    for (const push of pushes) expect(push.statuses).toEqual([201, 202, 201, 201]);
    const digests = new Set(pushes.map((push) => push.digest));
    expect(digests.size).toBe(1);
    const pulled = await registry(`/v2/${name}/manifests/latest`, { headers: { Accept: MediaTypes.ociManifest } });
    expect(pulled.headers.get("Docker-Content-Digest")).toBe([...digests][0]);
    // Config, layer and manifest: one object each, however many uploads raced.
    expect((await dataObjectCount()) - before).toBe(3);
    await expectConsistent({ rehash: true });
  });
});

describe("the same blob uploaded to several repositories at once", () => {
  it("every upload succeeds, every repository reads it, and one object holds it", async () => {
    const bytes = randomBytes(400_000);
    const digest = await sha256(bytes);
    const before = await dataObjectCount();
    const names = Array.from({ length: 6 }, (_, index) => `races/shared-${index}`);
    const statuses = await Promise.all(
      names.map(async (name, index) => {
        if (index % 2 === 0) {
          return (await registry(`/v2/${name}/blobs/uploads/?digest=${digest}`, { method: "POST", body: bytes }))
            .status;
        }
        const { location } = await startUpload(name);
        await registry(location, { method: "PATCH", body: bytes });
        return (await registry(withDigest(location, digest), { method: "PUT" })).status;
      }),
    );
    expect(statuses).toEqual(names.map(() => 201));
    for (const name of names) {
      const response = await registry(`/v2/${name}/blobs/${digest}`);
      const body = response.body;
      if (!body) throw new Error("no body");
      expect(await digestStream(body)).toEqual({ digest, size: bytes.byteLength });
    }
    expect((await dataObjectCount()) - before).toBe(1);
    await expectConsistent({ rehash: true });
  });
});

describe("a tag moved while it is being pulled", () => {
  it("every pull gets one of the two manifests, whole, under its own digest", async () => {
    const name = "races/moving-tag";
    const first = await pushImage(name, "latest");
    const second = await pushImage(name, "other");
    const known = new Map([
      [first.digest, first.bytes],
      [second.digest, second.bytes],
    ]);
    const moves = (async () => {
      for (let round = 0; round < 10; round++) {
        const target = round % 2 === 0 ? second : first;
        expect((await putManifest(name, "latest", target.bytes, MediaTypes.ociManifest)).status).toBe(201);
      }
    })();
    const pulls = Array.from({ length: 30 }, async () => {
      const response = await registry(`/v2/${name}/manifests/latest`, { headers: { Accept: MediaTypes.ociManifest } });
      expect(response.status).toBe(200);
      const digest = response.headers.get("Docker-Content-Digest") ?? "";
      const bytes = new Uint8Array(await response.arrayBuffer());
      expect(known.get(digest)).toEqual(bytes);
      expect(await sha256(bytes)).toBe(digest);
    });
    await Promise.all([moves, ...pulls]);
    await expectConsistent();
  });
});

describe("a manifest deleted while a push that references it is in flight", () => {
  it("the index push and the delete each succeed or fail as some serial order allows", async () => {
    for (let round = 0; round < 5; round++) {
      const name = `races/delete-child-${round}`;
      const child = await pushImage(name);
      const index = {
        schemaVersion: 2,
        mediaType: MediaTypes.ociIndex,
        manifests: [{ ...descriptorOf(child), platform: { architecture: "amd64", os: "linux" } }],
      };
      const [pushed, deleted] = await Promise.all([
        putManifest(name, "multi", index, MediaTypes.ociIndex),
        registry(`/v2/${name}/manifests/${child.digest}`, { method: "DELETE" }),
      ]);
      expect(deleted.status).toBe(202);
      // Push first (201), or delete first (the child is gone: MANIFEST_BLOB_UNKNOWN).
      expect([201, 400]).toContain(pushed.status);
      if (pushed.status === 400) {
        expect(((await pushed.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe("MANIFEST_BLOB_UNKNOWN");
      }
      expect((await registry(`/v2/${name}/manifests/${child.digest}`)).status).toBe(404);
    }
    await expectConsistent();
  });

  it("a blob link deleted while a manifest push references it: the push succeeds or is refused, never half-stored", async () => {
    for (let round = 0; round < 5; round++) {
      const name = `races/delete-layer-${round}`;
      const config = utf8(`{"round":${round}}`);
      const configDigest = await pushBlob(name, config);
      const layer = utf8(`layer ${round}`);
      const layerDigest = await pushBlob(name, layer);
      const manifest = {
        schemaVersion: 2,
        mediaType: MediaTypes.ociManifest,
        config: { mediaType: MediaTypes.ociConfig, digest: configDigest, size: config.byteLength },
        layers: [{ mediaType: MediaTypes.ociLayer, digest: layerDigest, size: layer.byteLength }],
      };
      const [pushed, deleted] = await Promise.all([
        putManifest(name, "v1", manifest, MediaTypes.ociManifest),
        registry(`/v2/${name}/blobs/${layerDigest}`, { method: "DELETE" }),
      ]);
      expect(deleted.status).toBe(202);
      expect([201, 400]).toContain(pushed.status);
      const tagged = await registry(`/v2/${name}/manifests/v1`, { headers: { Accept: MediaTypes.ociManifest } });
      expect(tagged.status).toBe(pushed.status === 201 ? 200 : 404);
      await tagged.body?.cancel();
    }
    await expectConsistent();
  });
});
