import { describe, expect, it } from "vitest";
import {
  BASE,
  descriptorOf,
  expectError,
  header,
  imageManifest,
  MediaTypes,
  pushBlob,
  pushImage,
  pushManifest,
  putManifest,
  registry,
  sha256,
  utf8,
} from "./helpers";

async function getManifest(name: string, reference: string, method = "GET"): Promise<Response> {
  return registry(`/v2/${name}/manifests/${reference}`, {
    method,
    headers: { Accept: Object.values(MediaTypes).join(", ") },
  });
}

describe("PUT /v2/<name>/manifests/<tag>", () => {
  it("stores an OCI image manifest: 201 with Location and Docker-Content-Digest", async () => {
    const name = "put/oci";
    const manifest = await imageManifest(name);
    const bytes = utf8(JSON.stringify(manifest));
    const digest = await sha256(bytes);
    const response = await putManifest(name, "v1", bytes, MediaTypes.ociManifest);
    expect(response.status).toBe(201);
    expect(response.headers.get("Docker-Content-Digest")).toBe(digest);
    expect(new URL(header(response, "Location"), BASE).pathname).toBe(`/v2/${name}/manifests/${digest}`);
  });

  it("moves a tag to the manifest pushed last", async () => {
    const name = "put/retag";
    await pushImage(name, "latest", "first");
    const second = await pushImage(name, "latest", "second");
    const response = await getManifest(name, "latest");
    expect(response.headers.get("Docker-Content-Digest")).toBe(second.digest);
    expect(new Uint8Array(await response.arrayBuffer())).toEqual(second.bytes);
  });

  it("accepts a tag of exactly 128 characters", async () => {
    const tag = "t".repeat(128);
    await pushImage("put/long-tag", tag);
    expect((await getManifest("put/long-tag", tag)).status).toBe(200);
  });
});

describe("GET /v2/<name>/manifests/<reference>", () => {
  it("returns identical bytes by tag and by digest, with the pushed Content-Type and Docker-Content-Digest", async () => {
    const name = "get/image";
    const pushed = await pushImage(name, "v1");
    for (const reference of ["v1", pushed.digest]) {
      const response = await getManifest(name, reference);
      expect(response.status).toBe(200);
      expect(response.headers.get("Content-Type")).toBe(MediaTypes.ociManifest);
      expect(response.headers.get("Docker-Content-Digest")).toBe(pushed.digest);
      expect(response.headers.get("Content-Length")).toBe(String(pushed.size));
      expect(new Uint8Array(await response.arrayBuffer())).toEqual(pushed.bytes);
    }
  });

  it("returns the exact bytes pushed, whitespace and key order included", async () => {
    const name = "get/exact-bytes";
    const manifest = await imageManifest(name);
    const bytes = utf8(`{\n  "schemaVersion":   2,\n${JSON.stringify(manifest, null, 4).slice(1)}`);
    const response = await putManifest(name, "pretty", bytes, MediaTypes.ociManifest);
    expect(response.status).toBe(201);
    expect(response.headers.get("Docker-Content-Digest")).toBe(await sha256(bytes));
    const pulled = await getManifest(name, "pretty");
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(bytes);
  });

  it("returns 404 MANIFEST_UNKNOWN for an unknown tag", async () => {
    await pushImage("get/unknown", "exists");
    await expectError(await getManifest("get/unknown", "missing"), 404, "MANIFEST_UNKNOWN");
  });

  it("returns 404 MANIFEST_UNKNOWN for an unknown digest", async () => {
    await expectError(await getManifest("get/unknown", "sha256:" + "cd".repeat(32)), 404, "MANIFEST_UNKNOWN");
  });

  it("does not serve a manifest pushed to another repository", async () => {
    const pushed = await pushImage("get/owner", "v1");
    await expectError(await getManifest("get/other", pushed.digest), 404, "MANIFEST_UNKNOWN");
    await expectError(await getManifest("get/other", "v1"), 404, "MANIFEST_UNKNOWN");
  });
});

describe("HEAD /v2/<name>/manifests/<reference>", () => {
  it("returns 200 with Content-Type, Content-Length and Docker-Content-Digest, and no body", async () => {
    const name = "head/image";
    const pushed = await pushImage(name, "v1");
    for (const reference of ["v1", pushed.digest]) {
      const response = await getManifest(name, reference, "HEAD");
      expect(response.status).toBe(200);
      expect(response.headers.get("Content-Type")).toBe(MediaTypes.ociManifest);
      expect(response.headers.get("Content-Length")).toBe(String(pushed.size));
      expect(response.headers.get("Docker-Content-Digest")).toBe(pushed.digest);
      expect((await response.arrayBuffer()).byteLength).toBe(0);
    }
  });

  it("returns 404 with no body for an unknown tag", async () => {
    const response = await getManifest("head/image", "missing", "HEAD");
    expect(response.status).toBe(404);
    expect((await response.arrayBuffer()).byteLength).toBe(0);
  });
});

describe("manifest media types round-trip", () => {
  it("a Docker schema 2 manifest is served with its Docker media type", async () => {
    const name = "types/docker";
    const manifest = await imageManifest(name, {
      mediaType: MediaTypes.dockerManifest,
      configType: MediaTypes.dockerConfig,
      layerType: MediaTypes.dockerLayer,
    });
    const pushed = await pushManifest(name, "v1", manifest, MediaTypes.dockerManifest);
    const response = await getManifest(name, "v1");
    expect(response.headers.get("Content-Type")).toBe(MediaTypes.dockerManifest);
    expect(response.headers.get("Docker-Content-Digest")).toBe(pushed.digest);
    expect(new Uint8Array(await response.arrayBuffer())).toEqual(pushed.bytes);
  });

  it("a Docker manifest list is served with its media type", async () => {
    const name = "types/docker-list";
    const child = await pushManifest(
      name,
      "amd64",
      await imageManifest(name, {
        mediaType: MediaTypes.dockerManifest,
        configType: MediaTypes.dockerConfig,
        layerType: MediaTypes.dockerLayer,
      }),
      MediaTypes.dockerManifest,
    );
    const list = {
      schemaVersion: 2,
      mediaType: MediaTypes.dockerManifestList,
      manifests: [{ ...descriptorOf(child), platform: { architecture: "amd64", os: "linux" } }],
    };
    const pushed = await pushManifest(name, "multi", list, MediaTypes.dockerManifestList);
    const response = await getManifest(name, "multi");
    expect(response.headers.get("Content-Type")).toBe(MediaTypes.dockerManifestList);
    expect(new Uint8Array(await response.arrayBuffer())).toEqual(pushed.bytes);
  });

  it("an OCI index is served with its media type, and its children by digest", async () => {
    const name = "types/oci-index";
    const amd64 = await pushImage(name, undefined, "amd64");
    const arm64 = await pushImage(name, undefined, "arm64");
    const index = {
      schemaVersion: 2,
      mediaType: MediaTypes.ociIndex,
      manifests: [
        { ...descriptorOf(amd64), platform: { architecture: "amd64", os: "linux" } },
        { ...descriptorOf(arm64), platform: { architecture: "arm64", os: "linux" } },
      ],
    };
    const pushed = await pushManifest(name, "multi", index, MediaTypes.ociIndex);
    const response = await getManifest(name, "multi");
    expect(response.headers.get("Content-Type")).toBe(MediaTypes.ociIndex);
    expect(new Uint8Array(await response.arrayBuffer())).toEqual(pushed.bytes);
    for (const child of [amd64, arm64]) {
      const pulled = await getManifest(name, child.digest);
      expect(pulled.headers.get("Content-Type")).toBe(MediaTypes.ociManifest);
      expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(child.bytes);
    }
  });
});

describe("manifest validation on PUT", () => {
  it("an index referencing a child manifest the repository lacks gives 400 MANIFEST_BLOB_UNKNOWN", async () => {
    const child = await pushImage("invalid/has-child");
    const index = { schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [descriptorOf(child)] };
    const response = await putManifest("invalid/lacks-child", "multi", index, MediaTypes.ociIndex);
    await expectError(response, 400, "MANIFEST_BLOB_UNKNOWN");
    await expectError(await getManifest("invalid/lacks-child", "multi"), 404, "MANIFEST_UNKNOWN");
  });

  it("a manifest referencing a layer the repository lacks gives 400 MANIFEST_BLOB_UNKNOWN and stores nothing", async () => {
    const name = "invalid/missing-layer";
    const manifest = await imageManifest(name);
    const missing = utf8("a layer pushed only elsewhere");
    const missingDigest = await pushBlob("invalid/elsewhere", missing);
    manifest.layers = [{ mediaType: MediaTypes.ociLayer, digest: missingDigest, size: missing.byteLength }];
    const bytes = utf8(JSON.stringify(manifest));
    await expectError(await putManifest(name, "v1", bytes, MediaTypes.ociManifest), 400, "MANIFEST_BLOB_UNKNOWN");
    await expectError(await getManifest(name, "v1"), 404, "MANIFEST_UNKNOWN");
    await expectError(await getManifest(name, await sha256(bytes)), 404, "MANIFEST_UNKNOWN");
  });

  it("a manifest may reference blobs mounted from another repository", async () => {
    const manifest = await imageManifest("valid/mount-source");
    const config = manifest.config as { digest: string };
    const layers = manifest.layers as { digest: string }[];
    for (const digest of [config.digest, ...layers.map((layer) => layer.digest)]) {
      const mount = await registry(`/v2/valid/mount-target/blobs/uploads/?mount=${digest}&from=valid/mount-source`, {
        method: "POST",
      });
      expect(mount.status).toBe(201);
    }
    const response = await putManifest("valid/mount-target", "v1", manifest, MediaTypes.ociManifest);
    expect(response.status).toBe(201);
  });

  it("a manifest referencing a config never pushed gives 400 MANIFEST_BLOB_UNKNOWN", async () => {
    const name = "invalid/missing-config";
    const manifest = await imageManifest(name);
    manifest.config = { mediaType: MediaTypes.ociConfig, digest: "sha256:" + "ef".repeat(32), size: 10 };
    await expectError(await putManifest(name, "v1", manifest, MediaTypes.ociManifest), 400, "MANIFEST_BLOB_UNKNOWN");
  });

  it("invalid JSON gives 400 MANIFEST_INVALID", async () => {
    const response = await putManifest("invalid/json", "v1", utf8("{ not json"), MediaTypes.ociManifest);
    await expectError(response, 400, "MANIFEST_INVALID");
  });

  it("a JSON value that is not an object gives 400 MANIFEST_INVALID", async () => {
    const response = await putManifest("invalid/json", "v1", utf8("[1, 2, 3]"), MediaTypes.ociManifest);
    await expectError(response, 400, "MANIFEST_INVALID");
  });

  it("schemaVersion 1 gives 400 MANIFEST_INVALID", async () => {
    const name = "invalid/schema1";
    const manifest = { ...(await imageManifest(name)), schemaVersion: 1 };
    await expectError(await putManifest(name, "v1", manifest, MediaTypes.ociManifest), 400, "MANIFEST_INVALID");
    const schema1 = { schemaVersion: 1, name, tag: "v1", architecture: "amd64", fsLayers: [], history: [] };
    await expectError(
      await putManifest(name, "v1", schema1, "application/vnd.docker.distribution.manifest.v1+prettyjws"),
      400,
      "MANIFEST_INVALID",
    );
  });

  it("a Content-Type disagreeing with the body's mediaType gives 400 MANIFEST_INVALID", async () => {
    const name = "invalid/content-type";
    const manifest = await imageManifest(name);
    await expectError(await putManifest(name, "v1", manifest, MediaTypes.dockerManifest), 400, "MANIFEST_INVALID");
    await expectError(await getManifest(name, "v1"), 404, "MANIFEST_UNKNOWN");
  });

  it("an image manifest without a config gives 400 MANIFEST_INVALID", async () => {
    const name = "invalid/no-config";
    const manifest = await imageManifest(name);
    delete manifest.config;
    await expectError(await putManifest(name, "v1", manifest, MediaTypes.ociManifest), 400, "MANIFEST_INVALID");
  });

  it("a manifest larger than 4 MiB gives 413", async () => {
    const name = "invalid/too-large";
    const manifest = { ...(await imageManifest(name)), annotations: { padding: "x".repeat(4 * 1024 * 1024) } };
    const response = await putManifest(name, "v1", manifest, MediaTypes.ociManifest);
    await expectError(response, 413);
    await expectError(await getManifest(name, "v1"), 404, "MANIFEST_UNKNOWN");
  });

  it("a manifest larger than 4 MiB sent without Content-Length gives 413", async () => {
    const name = "invalid/too-large-streamed";
    const manifest = { ...(await imageManifest(name)), annotations: { padding: "x".repeat(4 * 1024 * 1024) } };
    const bytes = utf8(JSON.stringify(manifest));
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let offset = 0; offset < bytes.byteLength; offset += 64 * 1024) {
          controller.enqueue(bytes.slice(offset, offset + 64 * 1024));
        }
        controller.close();
      },
    });
    const response = await registry(`/v2/${name}/manifests/v1`, {
      method: "PUT",
      headers: { "Content-Type": MediaTypes.ociManifest },
      body,
    });
    await expectError(response, 413);
    await expectError(await getManifest(name, "v1"), 404, "MANIFEST_UNKNOWN");
  });

  it("a manifest of exactly 4 MiB is accepted", async () => {
    const name = "valid/four-mib";
    const base = { ...(await imageManifest(name)), annotations: { padding: "" } };
    const padding = 4 * 1024 * 1024 - utf8(JSON.stringify(base)).byteLength;
    const manifest = { ...base, annotations: { padding: "x".repeat(padding) } };
    const bytes = utf8(JSON.stringify(manifest));
    expect(bytes.byteLength).toBe(4 * 1024 * 1024);
    const response = await putManifest(name, "big", bytes, MediaTypes.ociManifest);
    expect(response.status).toBe(201);
    // Compared by digest: a deep equality over 4 MiB of elements is slow.
    const pulled = new Uint8Array(await (await getManifest(name, "big")).arrayBuffer());
    expect(pulled.byteLength).toBe(bytes.byteLength);
    expect(await sha256(pulled)).toBe(await sha256(bytes));
  });

  it("a manifest referencing a blob whose link was deleted gives 400 MANIFEST_BLOB_UNKNOWN", async () => {
    const name = "invalid/unlinked-layer";
    const manifest = await imageManifest(name);
    const layers = manifest.layers as { digest: string }[];
    const layer = layers[0]?.digest ?? "";
    expect((await registry(`/v2/${name}/blobs/${layer}`, { method: "DELETE" })).status).toBe(202);
    await expectError(await putManifest(name, "v1", manifest, MediaTypes.ociManifest), 400, "MANIFEST_BLOB_UNKNOWN");
  });

  it("PUT by a digest its bytes do not match gives 400 DIGEST_INVALID and stores nothing", async () => {
    const name = "invalid/digest";
    const manifest = await imageManifest(name);
    const bytes = utf8(JSON.stringify(manifest));
    const wrong = await sha256(utf8("another manifest"));
    await expectError(await putManifest(name, wrong, bytes, MediaTypes.ociManifest), 400, "DIGEST_INVALID");
    await expectError(await getManifest(name, wrong), 404, "MANIFEST_UNKNOWN");
    await expectError(await getManifest(name, await sha256(bytes)), 404, "MANIFEST_UNKNOWN");
  });

  it("PUT by its own digest stores the manifest without a tag", async () => {
    const name = "valid/by-digest";
    const manifest = await imageManifest(name);
    const bytes = utf8(JSON.stringify(manifest));
    const digest = await sha256(bytes);
    const response = await putManifest(name, digest, bytes, MediaTypes.ociManifest);
    expect(response.status).toBe(201);
    expect(response.headers.get("Docker-Content-Digest")).toBe(digest);
    expect(new Uint8Array(await (await getManifest(name, digest)).arrayBuffer())).toEqual(bytes);
  });
});

describe("manifest tags must follow the tag grammar", () => {
  const name = "tags/grammar";
  const invalid = [".hidden", "-dash", "t".repeat(129), "a+b"];

  it.each(invalid)("PUT with tag %j gives 400 TAG_INVALID", async (tag) => {
    const manifest = await imageManifest(name);
    await expectError(await putManifest(name, tag, manifest, MediaTypes.ociManifest), 400, "TAG_INVALID");
  });

  it("GET with a tag starting with '.' names no manifest: 404 MANIFEST_UNKNOWN, as distribution answers", async () => {
    await expectError(await getManifest(name, ".hidden"), 404, "MANIFEST_UNKNOWN");
  });
});

describe("the OCI-Subject header", () => {
  it("a manifest with a subject is answered with OCI-Subject naming the subject's digest", async () => {
    const name = "subject/artifact";
    const image = await pushImage(name, "v1");
    const artifact = {
      ...(await imageManifest(name)),
      artifactType: "application/vnd.example.sbom",
      subject: descriptorOf(image),
    };
    const response = await putManifest(name, "sbom", artifact, MediaTypes.ociManifest);
    expect(response.status).toBe(201);
    expect(response.headers.get("OCI-Subject")).toBe(image.digest);
  });

  it("a manifest whose subject the registry does not hold is still accepted, with OCI-Subject", async () => {
    const name = "subject/dangling";
    const subject = { mediaType: MediaTypes.ociManifest, digest: "sha256:" + "5a".repeat(32), size: 1234 };
    const artifact = { ...(await imageManifest(name)), artifactType: "application/vnd.example.sig", subject };
    const response = await putManifest(name, "sig", artifact, MediaTypes.ociManifest);
    expect(response.status).toBe(201);
    expect(response.headers.get("OCI-Subject")).toBe(subject.digest);
  });

  it("a manifest without a subject has no OCI-Subject header", async () => {
    const name = "subject/none";
    const response = await putManifest(name, "v1", await imageManifest(name), MediaTypes.ociManifest);
    expect(response.status).toBe(201);
    expect(response.headers.get("OCI-Subject")).toBeNull();
  });
});

describe("DELETE /v2/<name>/manifests/<reference>", () => {
  it("by tag removes the tag only: the manifest stays by digest and under its other tags", async () => {
    const name = "delete/tag";
    const pushed = await pushImage(name, "one");
    await pushManifest(name, "two", JSON.parse(new TextDecoder().decode(pushed.bytes)) as object);
    const response = await registry(`/v2/${name}/manifests/one`, { method: "DELETE" });
    expect(response.status).toBe(202);
    await expectError(await getManifest(name, "one"), 404, "MANIFEST_UNKNOWN");
    expect((await getManifest(name, "two")).status).toBe(200);
    expect(new Uint8Array(await (await getManifest(name, pushed.digest)).arrayBuffer())).toEqual(pushed.bytes);
    expect(await (await registry(`/v2/${name}/tags/list`)).json()).toEqual({ name, tags: ["two"] });
  });

  it("by digest removes the manifest and every tag pointing at it, and leaves other tags", async () => {
    const name = "delete/digest";
    const doomed = await pushImage(name, "a", "doomed");
    await pushManifest(name, "b", JSON.parse(new TextDecoder().decode(doomed.bytes)) as object);
    const survivor = await pushImage(name, "c", "survivor");

    const response = await registry(`/v2/${name}/manifests/${doomed.digest}`, { method: "DELETE" });
    expect(response.status).toBe(202);
    await expectError(await getManifest(name, doomed.digest), 404, "MANIFEST_UNKNOWN");
    await expectError(await getManifest(name, "a"), 404, "MANIFEST_UNKNOWN");
    await expectError(await getManifest(name, "b"), 404, "MANIFEST_UNKNOWN");
    expect((await getManifest(name, "c")).headers.get("Docker-Content-Digest")).toBe(survivor.digest);
    expect(await (await registry(`/v2/${name}/tags/list`)).json()).toEqual({ name, tags: ["c"] });
  });

  it("by digest in one repository leaves another repository's copy of the same manifest", async () => {
    const manifest = await imageManifest("delete/left", { seed: "shared" });
    await imageManifest("delete/right", { seed: "shared" });
    const left = await pushManifest("delete/left", "v1", manifest);
    const right = await pushManifest("delete/right", "v1", manifest);
    expect(right.digest).toBe(left.digest);
    expect((await registry(`/v2/delete/left/manifests/${left.digest}`, { method: "DELETE" })).status).toBe(202);
    const pulled = await getManifest("delete/right", "v1");
    expect(pulled.status).toBe(200);
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(right.bytes);
  });

  it("returns 404 MANIFEST_UNKNOWN for an unknown tag or digest", async () => {
    const name = "delete/unknown";
    await pushImage(name, "v1");
    await expectError(await registry(`/v2/${name}/manifests/nope`, { method: "DELETE" }), 404, "MANIFEST_UNKNOWN");
    await expectError(
      await registry(`/v2/${name}/manifests/sha256:${"12".repeat(32)}`, { method: "DELETE" }),
      404,
      "MANIFEST_UNKNOWN",
    );
  });
});
