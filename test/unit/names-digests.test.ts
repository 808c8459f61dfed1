import { describe, expect, it } from "vitest";
import { expectError, MediaTypes, pushBlob, pushImage, registry, sha256, sha512, utf8 } from "./helpers";

const SOME_DIGEST = "sha256:" + "0".repeat(64);

/** One request per endpoint that takes a repository name. */
const endpoints: [string, (name: string) => Promise<Response>][] = [
  ["GET tags/list", (name) => registry(`/v2/${name}/tags/list`)],
  ["GET blobs/<digest>", (name) => registry(`/v2/${name}/blobs/${SOME_DIGEST}`)],
  ["GET manifests/<tag>", (name) => registry(`/v2/${name}/manifests/latest`)],
  ["POST blobs/uploads/", (name) => registry(`/v2/${name}/blobs/uploads/`, { method: "POST" })],
  [
    "PUT manifests/<tag>",
    (name) =>
      registry(`/v2/${name}/manifests/latest`, {
        method: "PUT",
        headers: { "Content-Type": MediaTypes.ociManifest },
        body: "{}",
      }),
  ],
];

describe("repository names", () => {
  it("a nested name (team/app/api) works for blobs, manifests and tags", async () => {
    const name = "team/app/api";
    const bytes = utf8("nested layer");
    const digest = await pushBlob(name, bytes);
    const pulled = await registry(`/v2/${name}/blobs/${digest}`);
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(bytes);
    const image = await pushImage(name, "v1");
    const manifest = await registry(`/v2/${name}/manifests/v1`);
    expect(new Uint8Array(await manifest.arrayBuffer())).toEqual(image.bytes);
    expect(await (await registry(`/v2/${name}/tags/list`)).json()).toEqual({ name, tags: ["v1"] });
  });

  it("a nested name is distinct from its parent", async () => {
    const digest = await pushBlob("parent/child", utf8("child only"));
    await expectError(await registry(`/v2/parent/blobs/${digest}`), 404, "BLOB_UNKNOWN");
  });

  it("separators '.', '_', '__' and '-' inside a component are accepted", async () => {
    const name = "my.org/my_app__x/api-v--2";
    const digest = await pushBlob(name, utf8("separators"));
    expect((await registry(`/v2/${name}/blobs/${digest}`)).status).toBe(200);
  });

  it("names whose components are the API's path words (blobs, uploads, manifests, tags) work", async () => {
    for (const name of ["words/blobs", "words/blobs/uploads", "words/manifests", "words/tags", "words/tags/list"]) {
      const bytes = utf8(`a blob in ${name}`);
      const digest = await pushBlob(name, bytes);
      const pulled = await registry(`/v2/${name}/blobs/${digest}`);
      expect(pulled.status).toBe(200);
      expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(bytes);
      const image = await pushImage(name, "v1");
      const manifest = await registry(`/v2/${name}/manifests/v1`);
      expect(manifest.headers.get("Docker-Content-Digest")).toBe(image.digest);
      expect(await (await registry(`/v2/${name}/tags/list`)).json()).toEqual({ name, tags: ["v1"] });
    }
    await expectError(await registry(`/v2/words/blobs/${SOME_DIGEST}`), 404, "BLOB_UNKNOWN");
  });

  it("a name of exactly 255 characters is accepted", async () => {
    const name = `${"a".repeat(127)}/${"b".repeat(127)}`;
    expect(name.length).toBe(255);
    await expectError(await registry(`/v2/${name}/tags/list`), 404, "NAME_UNKNOWN");
  });

  const invalidNames: [string, string][] = [
    ["uppercase", "Team/app"],
    ["'..' inside a component", "a..b/app"],
    ["a percent-encoded slash", "team%2Fapp"],
    ["an empty segment", "team//app"],
    ["a trailing slash", "team/app/"],
    ["a leading separator", "-team/app"],
    ["a trailing separator", "team/app_"],
    ["a component starting with '_'", "team/_layers"],
    ["more than 255 characters", `${"a".repeat(128)}/${"b".repeat(127)}`],
  ];

  for (const [label, endpoint] of endpoints) {
    describe(label, () => {
      it.each(invalidNames)("a name with %s gives 400 NAME_INVALID", async (_why, name) => {
        await expectError(await endpoint(name), 400, "NAME_INVALID");
      });
    });
  }

  it("a mount from an invalid repository name gives 400 NAME_INVALID", async () => {
    const digest = await pushBlob("mount/valid", utf8("mountable"));
    const response = await registry(`/v2/mount/target/blobs/uploads/?mount=${digest}&from=Not/Valid`, {
      method: "POST",
    });
    await expectError(response, 400, "NAME_INVALID");
  });
});

describe("digests", () => {
  const hex = "a".repeat(64);
  const invalidDigests: [string, string][] = [
    ["an unknown algorithm", `md5:${"a".repeat(32)}`],
    ["an unknown algorithm with a sha256-length hex", `sha257:${hex}`],
    ["a hex too short", `sha256:${"a".repeat(63)}`],
    ["a hex too long", `sha256:${"a".repeat(65)}`],
    ["a sha512 of sha256 length", `sha512:${hex}`],
    ["uppercase hex", `sha256:${"A".repeat(64)}`],
    ["non-hex characters", `sha256:${"g".repeat(64)}`],
    ["no algorithm", hex],
    ["an empty encoded part", "sha256:"],
  ];

  it.each(invalidDigests)("GET blobs/<digest> with %s gives 400 DIGEST_INVALID", async (_why, digest) => {
    await expectError(await registry(`/v2/digests/repo/blobs/${digest}`), 400, "DIGEST_INVALID");
  });

  it.each(invalidDigests)("DELETE blobs/<digest> with %s gives 400 DIGEST_INVALID", async (_why, digest) => {
    await expectError(await registry(`/v2/digests/repo/blobs/${digest}`, { method: "DELETE" }), 400, "DIGEST_INVALID");
  });

  it.each(invalidDigests)("POST blobs/uploads/?digest= with %s gives 400 DIGEST_INVALID", async (_why, digest) => {
    const response = await registry(`/v2/digests/repo/blobs/uploads/?digest=${digest}`, {
      method: "POST",
      body: utf8("bytes"),
    });
    await expectError(response, 400, "DIGEST_INVALID");
  });

  it.each(invalidDigests.filter(([, digest]) => digest.includes(":")))(
    "GET manifests/<digest> with %s gives 400 DIGEST_INVALID",
    async (_why, digest) => {
      await expectError(await registry(`/v2/digests/repo/manifests/${digest}`), 400, "DIGEST_INVALID");
    },
  );

  it("PUT on an upload with an invalid digest gives 400 DIGEST_INVALID and keeps the session", async () => {
    const start = await registry("/v2/digests/upload/blobs/uploads/", { method: "POST" });
    const location = start.headers.get("Location") ?? "";
    const response = await registry(`${location}?digest=sha256:${"A".repeat(64)}`, {
      method: "PUT",
      body: utf8("bytes"),
    });
    await expectError(response, 400, "DIGEST_INVALID");
    expect((await registry(location)).status).toBe(204);
  });

  it("a mount of an invalid digest gives 400 DIGEST_INVALID", async () => {
    const response = await registry(`/v2/digests/target/blobs/uploads/?mount=md5:abc&from=digests/repo`, {
      method: "POST",
    });
    await expectError(response, 400, "DIGEST_INVALID");
  });

  it("a valid sha512 digest is accepted for a monolithic upload", async () => {
    const bytes = utf8("hashed with sha512");
    const digest = await sha512(bytes);
    const response = await registry(`/v2/digests/sha512/blobs/uploads/?digest=${digest}`, {
      method: "POST",
      body: bytes,
    });
    expect(response.status).toBe(201);
    expect(response.headers.get("Docker-Content-Digest")).toBe(digest);
    const pulled = await registry(`/v2/digests/sha512/blobs/${digest}`);
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(bytes);
    // The same bytes under their sha256 are a different, unknown blob.
    await expectError(await registry(`/v2/digests/sha512/blobs/${await sha256(bytes)}`), 404, "BLOB_UNKNOWN");
  });
});
