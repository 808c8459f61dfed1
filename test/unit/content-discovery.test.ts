import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { app } from "../../src/app";
import {
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

const ARTIFACT_SIGNATURE = "application/vnd.example.signature.v1";
const ARTIFACT_SBOM = "application/vnd.example.sbom.v1";

/** An OCI 1.1 artifact manifest (empty config) that refers to `subject`. */
async function pushArtifact(
  name: string,
  subject: { mediaType: string; digest: string; size: number },
  artifactType: string,
  annotations?: Record<string, string>,
): Promise<{ digest: string; size: number }> {
  const empty = utf8("{}");
  const emptyDigest = await pushBlob(name, empty);
  const payload = utf8(`payload ${crypto.randomUUID()}`);
  const payloadDigest = await pushBlob(name, payload);
  const manifest = {
    schemaVersion: 2,
    mediaType: MediaTypes.ociManifest,
    artifactType,
    config: { mediaType: "application/vnd.oci.empty.v1+json", digest: emptyDigest, size: empty.byteLength },
    layers: [{ mediaType: "application/octet-stream", digest: payloadDigest, size: payload.byteLength }],
    subject,
    ...(annotations ? { annotations } : {}),
  };
  const bytes = utf8(JSON.stringify(manifest));
  const digest = await sha256(bytes);
  const response = await putManifest(name, digest, bytes, MediaTypes.ociManifest);
  expect(response.status).toBe(201);
  expect(header(response, "OCI-Subject")).toBe(subject.digest);
  return { digest, size: bytes.byteLength };
}

interface ReferrersIndex {
  schemaVersion: number;
  mediaType: string;
  manifests: {
    mediaType: string;
    digest: string;
    size: number;
    artifactType?: string;
    annotations?: Record<string, string>;
  }[];
}

async function referrers(
  name: string,
  digest: string,
  query = "",
): Promise<{ response: Response; index: ReferrersIndex }> {
  const response = await registry(`/v2/${name}/referrers/${digest}${query}`);
  expect(response.status).toBe(200);
  expect(response.headers.get("Content-Type")).toBe(MediaTypes.ociIndex);
  return { response, index: (await response.json()) as ReferrersIndex };
}

describe("GET /v2/<name>/referrers/<digest>", () => {
  it("lists the manifests whose subject is the digest, as an image index with their artifactType and annotations", async () => {
    const name = "discovery/referrers";
    const image = await pushImage(name, "v1");
    const signature = await pushArtifact(name, descriptorOf(image), ARTIFACT_SIGNATURE, { "org.example.signer": "ci" });
    const sbom = await pushArtifact(name, descriptorOf(image), ARTIFACT_SBOM);

    const { index } = await referrers(name, image.digest);
    expect(index.schemaVersion).toBe(2);
    expect(index.mediaType).toBe(MediaTypes.ociIndex);
    const byDigest = Object.fromEntries(index.manifests.map((entry) => [entry.digest, entry]));
    expect(Object.keys(byDigest).sort()).toEqual([signature.digest, sbom.digest].sort());
    expect(byDigest[signature.digest]).toEqual({
      mediaType: MediaTypes.ociManifest,
      digest: signature.digest,
      size: signature.size,
      artifactType: ARTIFACT_SIGNATURE,
      annotations: { "org.example.signer": "ci" },
    });
    expect(byDigest[sbom.digest]?.artifactType).toBe(ARTIFACT_SBOM);
  });

  it("filters by artifactType and says so in OCI-Filters-Applied", async () => {
    const name = "discovery/filter";
    const image = await pushImage(name, "v1");
    const signature = await pushArtifact(name, descriptorOf(image), ARTIFACT_SIGNATURE);
    await pushArtifact(name, descriptorOf(image), ARTIFACT_SBOM);
    const { response, index } = await referrers(
      name,
      image.digest,
      `?artifactType=${encodeURIComponent(ARTIFACT_SIGNATURE)}`,
    );
    expect(header(response, "OCI-Filters-Applied")).toBe("artifactType");
    expect(index.manifests.map((entry) => entry.digest)).toEqual([signature.digest]);
  });

  it("an image manifest without artifactType is listed with its config media type", async () => {
    const name = "discovery/config-type";
    const image = await pushImage(name, "v1");
    const manifest = { ...(await imageManifest(name)), subject: descriptorOf(image) };
    const pushed = await pushManifest(name, "sig", manifest);
    const { index } = await referrers(name, image.digest);
    expect(index.manifests).toEqual([
      {
        mediaType: MediaTypes.ociManifest,
        digest: pushed.digest,
        size: pushed.size,
        artifactType: MediaTypes.ociConfig,
      },
    ]);
  });

  it("accepts a referrer whose subject does not exist yet, and lists it once the subject is pushed", async () => {
    const name = "discovery/early";
    const missingSubject = {
      mediaType: MediaTypes.ociManifest,
      digest: await sha256(utf8("not pushed yet")),
      size: 14,
    };
    const artifact = await pushArtifact(name, missingSubject, ARTIFACT_SIGNATURE);
    const { index } = await referrers(name, missingSubject.digest);
    expect(index.manifests.map((entry) => entry.digest)).toEqual([artifact.digest]);
  });

  it("an unknown subject has an empty list, not a 404", async () => {
    const { index } = await referrers("discovery/none", await sha256(utf8("nothing refers to me")));
    expect(index.manifests).toEqual([]);
  });

  it("deleting a referrer removes it from the list", async () => {
    const name = "discovery/delete";
    const image = await pushImage(name, "v1");
    const signature = await pushArtifact(name, descriptorOf(image), ARTIFACT_SIGNATURE);
    const sbom = await pushArtifact(name, descriptorOf(image), ARTIFACT_SBOM);
    expect((await registry(`/v2/${name}/manifests/${signature.digest}`, { method: "DELETE" })).status).toBe(202);
    const { index } = await referrers(name, image.digest);
    expect(index.manifests.map((entry) => entry.digest)).toEqual([sbom.digest]);
  });

  it("paginates a long list with a Link header", async () => {
    const name = "discovery/paged";
    const image = await pushImage(name, "v1");
    const pushed: string[] = [];
    for (let index = 0; index < 5; index++)
      pushed.push((await pushArtifact(name, descriptorOf(image), ARTIFACT_SBOM)).digest);
    const seen: string[] = [];
    let path: string | null = `/v2/${name}/referrers/${image.digest}?n=2`;
    for (let page = 0; path !== null && page < 10; page++) {
      const response = await registry(path);
      expect(response.status).toBe(200);
      const index = (await response.json()) as ReferrersIndex;
      expect(index.manifests.length).toBeLessThanOrEqual(2);
      seen.push(...index.manifests.map((entry) => entry.digest));
      const link = response.headers.get("Link");
      path = link ? (/^<([^>]+)>; rel="next"$/.exec(link)?.[1] ?? null) : null;
    }
    expect(seen.sort()).toEqual(pushed.sort());
  });

  it("an invalid digest is 400 DIGEST_INVALID", async () => {
    await expectError(await registry("/v2/discovery/bad/referrers/sha256:abc"), 400, "DIGEST_INVALID");
  });
});

describe("PUT /v2/<name>/manifests/<digest>?tag=… (several tags in one push)", () => {
  it("sets every tag and lists them in OCI-Tag", async () => {
    const name = "discovery/multitag";
    const manifest = await imageManifest(name);
    const bytes = utf8(JSON.stringify(manifest));
    const digest = await sha256(bytes);
    const response = await registry(`/v2/${name}/manifests/${digest}?tag=v1&tag=latest&tag=stable`, {
      method: "PUT",
      headers: { "Content-Type": MediaTypes.ociManifest },
      body: bytes,
    });
    expect(response.status).toBe(201);
    expect(header(response, "OCI-Tag").split(/,\s*/).sort()).toEqual(["latest", "stable", "v1"]);
    for (const tag of ["v1", "latest", "stable"]) {
      const pulled = await registry(`/v2/${name}/manifests/${tag}`);
      expect(header(pulled, "Docker-Content-Digest")).toBe(digest);
    }
  });

  it("an invalid tag in ?tag= is 400 TAG_INVALID and stores nothing", async () => {
    const name = "discovery/multitag-bad";
    const manifest = await imageManifest(name);
    const bytes = utf8(JSON.stringify(manifest));
    const digest = await sha256(bytes);
    const response = await registry(`/v2/${name}/manifests/${digest}?tag=ok&tag=.bad`, {
      method: "PUT",
      headers: { "Content-Type": MediaTypes.ociManifest },
      body: bytes,
    });
    await expectError(response, 400, "TAG_INVALID");
    await expectError(await registry(`/v2/${name}/manifests/${digest}`), 404, "MANIFEST_UNKNOWN");
    await expectError(await registry(`/v2/${name}/manifests/ok`), 404, "MANIFEST_UNKNOWN");
  });
});

describe("If-None-Match (conditional reads)", () => {
  it("a blob whose ETag the client holds is 304 with no body", async () => {
    const name = "discovery/conditional-blob";
    const digest = await pushBlob(name, utf8("cached bytes"));
    const response = await registry(`/v2/${name}/blobs/${digest}`, { headers: { "If-None-Match": `"${digest}"` } });
    expect(response.status).toBe(304);
    expect(header(response, "ETag")).toBe(`"${digest}"`);
    expect(await response.text()).toBe("");
    const other = await registry(`/v2/${name}/blobs/${digest}`, {
      headers: { "If-None-Match": `"sha256:${"0".repeat(64)}"` },
    });
    expect(other.status).toBe(200);
    expect(await other.text()).toBe("cached bytes");
  });

  it("a manifest (by tag or digest) whose ETag the client holds is 304", async () => {
    const name = "discovery/conditional-manifest";
    const image = await pushImage(name, "v1");
    for (const reference of ["v1", image.digest]) {
      const response = await registry(`/v2/${name}/manifests/${reference}`, {
        headers: { "If-None-Match": `"${image.digest}"` },
      });
      expect(response.status).toBe(304);
      expect(header(response, "Docker-Content-Digest")).toBe(image.digest);
      expect(await response.text()).toBe("");
    }
    const changed = await registry(`/v2/${name}/manifests/v1`, {
      headers: { "If-None-Match": `"sha256:${"1".repeat(64)}"` },
    });
    expect(changed.status).toBe(200);
    expect(new Uint8Array(await changed.arrayBuffer())).toEqual(image.bytes);
  });
});

describe("POST ?mount=<digest> without from (automatic content discovery)", () => {
  it("is off by default: a normal upload session (202) is started", async () => {
    const digest = await pushBlob("discovery/mount-source", utf8("mount me"));
    const response = await registry(`/v2/discovery/mount-target/blobs/uploads/?mount=${digest}`, { method: "POST" });
    expect(response.status).toBe(202);
    await expectError(await registry(`/v2/discovery/mount-target/blobs/${digest}`), 404, "BLOB_UNKNOWN");
  });

  it("when MOUNT_WITHOUT_FROM is on, links any stored blob of that digest (201)", async () => {
    const digest = await pushBlob("discovery/auto-source", utf8("discover me"));
    const enabled = { ...env, MOUNT_WITHOUT_FROM: "true" };
    const response = await app.request(
      `/v2/discovery/auto-target/blobs/uploads/?mount=${digest}`,
      { method: "POST" },
      enabled,
    );
    expect(response.status).toBe(201);
    expect(header(response, "Docker-Content-Digest")).toBe(digest);
    const pulled = await registry(`/v2/discovery/auto-target/blobs/${digest}`);
    expect(await pulled.text()).toBe("discover me");
  });
});

describe("DELETE_ENABLED=false", () => {
  it("refuses manifest, tag and blob deletion with 405 UNSUPPORTED and deletes nothing", async () => {
    const name = "discovery/no-delete";
    const image = await pushImage(name, "v1");
    const disabled = { ...env, DELETE_ENABLED: "false" };
    for (const path of [`/v2/${name}/manifests/${image.digest}`, `/v2/${name}/manifests/v1`]) {
      await expectError(await app.request(path, { method: "DELETE" }, disabled), 405, "UNSUPPORTED");
    }
    const layerDigest = (
      (await (await registry(`/v2/${name}/manifests/v1`)).json()) as { layers: { digest: string }[] }
    ).layers[0]?.digest;
    await expectError(
      await app.request(`/v2/${name}/blobs/${layerDigest}`, { method: "DELETE" }, disabled),
      405,
      "UNSUPPORTED",
    );
    expect((await registry(`/v2/${name}/manifests/v1`)).status).toBe(200);
    expect((await registry(`/v2/${name}/blobs/${layerDigest}`)).status).toBe(200);
  });
});
