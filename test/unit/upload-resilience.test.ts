import { abortAllDurableObjects, env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import {
  concat,
  digestStream,
  expectError,
  header,
  randomBytes,
  registry,
  sha256,
  startUpload,
  withDigest,
  MiB,
  PART_SIZE,
} from "./helpers";

/** A body that delivers `bytes` in 1 MiB pieces and then fails, like a dropped connection. */
function breakingBody(bytes: Uint8Array): ReadableStream<Uint8Array> {
  let offset = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (offset >= bytes.byteLength) {
        controller.error(new Error("connection reset by peer"));
        return;
      }
      const piece = bytes.slice(offset, offset + MiB);
      offset += piece.byteLength;
      controller.enqueue(piece);
    },
  });
}

function streamed(bytes: Uint8Array): ReadableStream<Uint8Array> {
  let offset = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (offset >= bytes.byteLength) return controller.close();
      const piece = bytes.slice(offset, offset + MiB);
      offset += piece.byteLength;
      controller.enqueue(piece);
    },
  });
}

async function offsetOf(location: string): Promise<number> {
  const response = await registry(location);
  expect(response.status).toBe(204);
  return Number(header(response, "Range").split("-")[1]) + 1;
}

/** Every object holding blob bytes (`data/…`), with sizes. */
async function dataObjects(): Promise<{ key: string; size: number }[]> {
  const listing = await env.BLOBS.list({ prefix: "data/" });
  return listing.objects.map((object) => ({ key: object.key, size: object.size }));
}

async function blobDescriptor(digest: string): Promise<{ key: string; size: number }> {
  const [algorithm, hex] = digest.split(":");
  const record = await env.BLOBS.get(`blobs/${algorithm}/${hex}`);
  expect(record).not.toBeNull();
  return (await record?.json()) as { key: string; size: number };
}

/**
 * A dropped connection reaches the Worker either as a body that errors or as one that
 * simply ends early (how workerd surfaces it depends on where the drop happens). Either
 * way the session must report, through GET, an offset it holds durably and exactly:
 * at least every whole part that completed, at most what was sent. Resuming from that
 * offset must produce the exact blob.
 */
describe("a PATCH whose connection drops mid-stream", () => {
  it("keeps at least every whole part; the client resumes from the Range and the blob is exact", async () => {
    const name = "resilience/dropped";
    const whole = randomBytes(PART_SIZE + 9 * MiB);
    const sent = PART_SIZE + 8 * MiB;
    const { location } = await startUpload(name);

    await registry(location, {
      method: "PATCH",
      body: breakingBody(whole.subarray(0, sent)),
      duplex: "half",
    } as RequestInit);
    const offset = await offsetOf(location);
    expect(offset).toBeGreaterThanOrEqual(PART_SIZE);
    expect(offset).toBeLessThanOrEqual(sent);

    // Resume exactly where the session says.
    const resumed = await registry(location, {
      method: "PATCH",
      headers: { "Content-Range": `${offset}-${whole.byteLength - 1}` },
      body: whole.slice(offset),
    });
    expect(resumed.status).toBe(202);
    const digest = await sha256(whole);
    const committed = await registry(withDigest(location, digest), { method: "PUT" });
    expect(committed.status).toBe(201);

    const pulled = await registry(`/v2/${name}/blobs/${digest}`);
    expect(await digestStream(pulled.body as ReadableStream<Uint8Array>)).toEqual({ digest, size: whole.byteLength });
  });

  it("a drop before the first whole part keeps a prefix of what was sent, and resuming gives the exact blob", async () => {
    const name = "resilience/dropped-early";
    const whole = randomBytes(9 * MiB);
    const first = whole.slice(0, 3 * MiB);
    const { location } = await startUpload(name);
    expect((await registry(location, { method: "PATCH", body: first })).status).toBe(202);

    const sent = 8 * MiB;
    await registry(location, {
      method: "PATCH",
      body: breakingBody(whole.subarray(first.byteLength, sent)),
      duplex: "half",
    } as RequestInit);
    const offset = await offsetOf(location);
    expect(offset).toBeGreaterThanOrEqual(first.byteLength);
    expect(offset).toBeLessThanOrEqual(sent);

    const resumed = await registry(location, {
      method: "PATCH",
      headers: { "Content-Range": `${offset}-${whole.byteLength - 1}` },
      body: whole.slice(offset),
    });
    expect(resumed.status).toBe(202);
    const digest = await sha256(whole);
    expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);
    // Compare digests: toEqual on multi-MiB arrays exhausts the test worker's heap.
    const pulled = await registry(`/v2/${name}/blobs/${digest}`);
    expect(await digestStream(pulled.body as ReadableStream<Uint8Array>)).toEqual({ digest, size: whole.byteLength });
  });

  it("a chunk with a declared length whose body stops early is refused whole and keeps the offset", async () => {
    const name = "resilience/short-chunk";
    const first = randomBytes(MiB);
    const { location } = await startUpload(name);
    expect((await registry(location, { method: "PATCH", body: first })).status).toBe(202);
    const declared = 4 * MiB;
    const response = await registry(location, {
      method: "PATCH",
      headers: { "Content-Range": `${MiB}-${MiB + declared - 1}`, "Content-Length": String(declared) },
      body: breakingBody(randomBytes(2 * MiB)),
      duplex: "half",
    } as RequestInit);
    expect(response.status).toBeGreaterThanOrEqual(400);
    expect(response.status).toBeLessThan(500);
    expect(await offsetOf(location)).toBe(MiB);
  });
});

describe("a whole-blob PUT of the wrong digest after a refused chunk", () => {
  it("leaves the upload usable: the multipart upload the chunk kept was aborted, and the next PATCH starts another", async () => {
    const name = "resilience/rollback";
    const { location } = await startUpload(name);
    const bytes = randomBytes(PART_SIZE + MiB);
    // One byte short of its Content-Range, refused after its first part went up: the upload
    // stays at 0 and keeps that multipart upload (its parts get overwritten).
    const refused = await registry(location, {
      method: "PATCH",
      headers: { "Content-Range": `0-${bytes.byteLength}` },
      body: streamed(bytes),
      duplex: "half",
    } as RequestInit);
    await expectError(refused, 400, "SIZE_INVALID");
    // The whole blob under a wrong digest: refused, and its multipart upload aborted.
    const wrong = await registry(withDigest(location, await sha256(randomBytes(10))), { method: "PUT", body: bytes });
    await expectError(wrong, 400, "DIGEST_INVALID");
    // Nothing kept (an empty upload's Range is 0-0, as distribution answers).
    expect(header(await registry(location), "Range")).toBe("0-0");
    expect((await registry(location, { method: "PATCH", body: bytes })).status).toBe(202);
    const digest = await sha256(bytes);
    expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);
    const pulled = await registry(`/v2/${name}/blobs/${digest}`);
    expect(await digestStream(pulled.body as ReadableStream<Uint8Array>)).toEqual({ digest, size: bytes.byteLength });
  });
});

describe("an upload survives its Durable Object restarting between chunks", () => {
  it("continues the hash and the parts from storage after every object is reset", async () => {
    const name = "resilience/restart";
    const chunks = [randomBytes(7 * MiB), randomBytes(30 * MiB), randomBytes(3)];
    const whole = concat(...chunks);
    const { location } = await startUpload(name);
    let offset = 0;
    for (const chunk of chunks) {
      const response = await registry(location, {
        method: "PATCH",
        headers: { "Content-Range": `${offset}-${offset + chunk.byteLength - 1}` },
        body: chunk,
      });
      expect(response.status).toBe(202);
      offset += chunk.byteLength;
      // Drop every Durable Object's memory (the in-memory part buffer and hash go).
      await abortAllDurableObjects();
    }
    const digest = await sha256(whole);
    expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);
    const pulled = await registry(`/v2/${name}/blobs/${digest}`);
    expect(await digestStream(pulled.body as ReadableStream<Uint8Array>)).toEqual({ digest, size: whole.byteLength });
  });
});

describe("committing writes no copy of the blob", () => {
  it("a multipart upload is published where its parts were written, leaving exactly one data object", async () => {
    const name = "resilience/no-copy";
    const whole = randomBytes(PART_SIZE + 3 * MiB);
    const before = new Set((await dataObjects()).map((object) => object.key));
    const { location, uuid } = await startUpload(name);
    expect(
      (await registry(location, { method: "PATCH", body: streamed(whole), duplex: "half" } as RequestInit)).status,
    ).toBe(202);
    const digest = await sha256(whole);
    expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);

    const created = (await dataObjects()).filter((object) => !before.has(object.key));
    expect(created).toEqual([{ key: `data/${uuid}`, size: whole.byteLength }]);
    expect(await blobDescriptor(digest)).toMatchObject({ key: `data/${uuid}`, size: whole.byteLength });
  });

  it("a small chunked upload is written to R2 once, as one object, at commit", async () => {
    const name = "resilience/small";
    const whole = randomBytes(2 * MiB + 17);
    const before = new Set((await dataObjects()).map((object) => object.key));
    const { location, uuid } = await startUpload(name);
    expect((await registry(location, { method: "PATCH", body: whole.slice(0, MiB) })).status).toBe(202);
    expect((await registry(location, { method: "PATCH", body: whole.slice(MiB) })).status).toBe(202);
    const digest = await sha256(whole);
    expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);
    const created = (await dataObjects()).filter((object) => !before.has(object.key));
    expect(created).toEqual([{ key: `data/${uuid}`, size: whole.byteLength }]);
  });

  it("two uploads of the same bytes leave one stored object", async () => {
    const whole = randomBytes(PART_SIZE + MiB);
    const digest = await sha256(whole);
    const before = new Set((await dataObjects()).map((object) => object.key));
    for (const name of ["resilience/twice-a", "resilience/twice-b"]) {
      const { location } = await startUpload(name);
      expect(
        (await registry(location, { method: "PATCH", body: streamed(whole), duplex: "half" } as RequestInit)).status,
      ).toBe(202);
      expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);
      expect((await registry(`/v2/${name}/blobs/${digest}`, { method: "HEAD" })).status).toBe(200);
    }
    const created = (await dataObjects()).filter((object) => !before.has(object.key));
    expect(created).toHaveLength(1);
    expect(created[0]?.size).toBe(whole.byteLength);
  });
});

describe("POST /v2/<name>/blobs/uploads/ chunk hints", () => {
  it("advertises OCI-Chunk-Min-Length as the part size", async () => {
    const response = await registry("/v2/resilience/hints/blobs/uploads/", { method: "POST" });
    expect(response.status).toBe(202);
    expect(header(response, "OCI-Chunk-Min-Length")).toBe(String(PART_SIZE));
  });
});

describe("a monolithic upload whose body stops early", () => {
  it("is refused with 400 SIZE_INVALID and stores nothing", async () => {
    const name = "resilience/short-monolithic";
    const bytes = randomBytes(3 * MiB);
    const digest = await sha256(bytes);
    const before = new Set((await dataObjects()).map((object) => object.key));
    const response = await registry(`/v2/${name}/blobs/uploads/?digest=${digest}`, {
      method: "POST",
      headers: { "Content-Length": String(bytes.byteLength) },
      body: breakingBody(bytes.subarray(0, 2 * MiB)),
      duplex: "half",
    } as RequestInit);
    expect(response.status).toBeGreaterThanOrEqual(400);
    expect(response.status).toBeLessThan(500);
    await expectError(await registry(`/v2/${name}/blobs/${digest}`), 404, "BLOB_UNKNOWN");
    const created = (await dataObjects()).filter((object) => !before.has(object.key));
    expect(created).toEqual([]);
  });
});
