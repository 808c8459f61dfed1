import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import {
  expectBlobReads,
  expectError,
  imageManifest,
  MediaTypes,
  MiB,
  PART_SIZE,
  pushBlob,
  putManifest,
  randomBytes,
  registry,
  sha256,
  sha512,
  startUpload,
  utf8,
  withDigest,
} from "./helpers";
import { expectConsistent, faultWhere, installStorage, restoreStorage } from "./storage-faults";

/**
 * Invariant 1 (no blob readable under a digest its bytes do not match) at the edges a
 * review found: a finished multipart upload, a completion whose answer was lost, a
 * descriptor left naming nothing, a stored copy withdrawn while a commit was retried.
 */
function descriptorKey(digest: string): string {
  return `blobs/${digest.replace(":", "/")}`;
}

describe("a chunked multipart upload committed under a wrong sha512 digest", () => {
  it(
    "is refused with DIGEST_INVALID, ends the session, and never aborts the upload it finished",
    { timeout: 60_000 },
    async () => {
      const name = "integrity/sha512-wrong";
      const bytes = randomBytes(PART_SIZE + MiB);
      const { location } = await startUpload(name);
      expect((await registry(location, { method: "PATCH", body: bytes })).status).toBe(202);
      const faulty = installStorage();
      const wrong = await sha512(utf8("other bytes"));
      await expectError(await registry(withDigest(location, wrong), { method: "PUT" }), 400, "DIGEST_INVALID");
      restoreStorage();
      const methods = faulty.log.map((call) => call.method);
      const completed = methods.indexOf("multipart.complete");
      expect(completed).toBeGreaterThanOrEqual(0);
      // R2 answers an abort of a completed upload with an error: one must not be sent.
      expect(methods.slice(completed)).not.toContain("multipart.abort");
      await expectError(await registry(location), 404, "BLOB_UPLOAD_UNKNOWN");
      await expectError(await registry(`/v2/${name}/blobs/${wrong}`), 404, "BLOB_UNKNOWN");
      await expectError(await registry(`/v2/${name}/blobs/${await sha512(bytes)}`), 404, "BLOB_UNKNOWN");
    },
  );
});

describe("a multipart completion whose answer was lost", () => {
  it(
    "a retry with other bytes of the same length never publishes the first bytes under its digest",
    { timeout: 60_000 },
    async () => {
      const name = "integrity/lost-complete";
      const head = randomBytes(PART_SIZE);
      const first = randomBytes(MiB);
      const second = randomBytes(MiB);
      const { location } = await startUpload(name);
      expect((await registry(location, { method: "PATCH", body: head })).status).toBe(202);
      const firstDigest = await sha256(new Uint8Array([...head, ...first]));
      installStorage(faultWhere((call) => call.method === "multipart.complete", "throw-after"));
      const lost = await registry(withDigest(location, firstDigest), { method: "PUT", body: first });
      expect(lost.status).toBe(503);
      restoreStorage();
      // Now a different last chunk (a confused or hostile client) under its own digest.
      const secondDigest = await sha256(new Uint8Array([...head, ...second]));
      const retry = await registry(withDigest(location, secondDigest), { method: "PUT", body: second });
      if (retry.status === 201) await expectBlobReads(name, secondDigest, PART_SIZE + MiB);
      else expect(retry.status).toBeGreaterThanOrEqual(400);
      // Whatever happened, nothing is readable under a digest its bytes do not match.
      await expectConsistent({ rehash: true });
      const again = await registry(`/v2/${name}/blobs/${secondDigest}`);
      if (again.status === 200) await expectBlobReads(name, secondDigest, PART_SIZE + MiB);
      else await again.body?.cancel();
    },
  );
});

describe("a descriptor left naming an object that is gone", () => {
  it("is replaced by the next upload of those bytes, monolithic or chunked", async () => {
    for (const [index, chunked] of [false, true].entries()) {
      const name = `integrity/dangling-${index}`;
      const bytes = randomBytes(40_000);
      const digest = await sha256(bytes);
      await env.BLOBS.put(
        descriptorKey(digest),
        JSON.stringify({ digest, size: bytes.byteLength, key: "data/00000000-0000-4000-8000-00000000dead" }),
      );
      if (chunked) {
        const { location } = await startUpload(name);
        expect((await registry(location, { method: "PATCH", body: bytes })).status).toBe(202);
        expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);
      } else {
        expect(await pushBlob(name, bytes)).toBe(digest);
      }
      await expectBlobReads(name, digest, bytes.byteLength);
    }
  });

  it("a manifest whose stored copy is gone is stored again by its next push", async () => {
    const name = "integrity/dangling-manifest";
    const manifest = await imageManifest(name);
    const bytes = utf8(JSON.stringify(manifest));
    const digest = await sha256(bytes);
    await env.BLOBS.put(descriptorKey(digest), JSON.stringify({ digest, size: bytes.byteLength, key: "data/gone" }));
    expect((await putManifest(name, "v1", bytes, MediaTypes.ociManifest)).status).toBe(201);
    const pulled = await registry(`/v2/${name}/manifests/v1`, { headers: { Accept: MediaTypes.ociManifest } });
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(bytes);
    await expectConsistent();
  });
});

describe("a commit retried after the stored copy it deduplicated onto was withdrawn", () => {
  it("is refused (upload again) instead of publishing the withdrawn object once more", async () => {
    const name = "integrity/withdrawn-retry";
    const bytes = randomBytes(20_000);
    const digest = await pushBlob("integrity/withdrawn-source", bytes);
    const { location } = await startUpload(name);
    expect((await registry(location, { method: "PATCH", body: bytes })).status).toBe(202);
    // The commit deduplicates onto the stored object, then fails linking.
    installStorage(faultWhere((call) => call.method === "put" && call.key.includes("/_layers/")));
    expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(503);
    restoreStorage();
    // Meanwhile the integrity check withdraws the stored copy (its bytes went bad).
    await env.BLOBS.delete(descriptorKey(digest));
    await expectError(await registry(withDigest(location, digest), { method: "PUT" }), 400, "BLOB_UPLOAD_INVALID");
    await expectError(await registry(`/v2/${name}/blobs/${digest}`), 404, "BLOB_UNKNOWN");
    // Uploading again stores the bytes for real.
    expect(await pushBlob(name, bytes)).toBe(digest);
    await expectBlobReads(name, digest, bytes.byteLength);
  });
});
