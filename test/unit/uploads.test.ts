import { env, runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import {
  BASE,
  concat,
  digestStream,
  expectError,
  header,
  randomBytes,
  registry,
  sha256,
  sha512,
  startUpload,
  streamOf,
  utf8,
  withDigest,
  MiB,
  PART_SIZE,
} from "./helpers";

/** PATCHes one chunk with Content-Range (and the Content-Length fetch derives from the body). */
function patchChunk(location: string, bytes: Uint8Array<ArrayBuffer>, start: number): Promise<Response> {
  return registry(location, {
    method: "PATCH",
    headers: {
      "Content-Range": `${start}-${start + bytes.byteLength - 1}`,
      "Content-Type": "application/octet-stream",
    },
    body: bytes,
  });
}

/** The Range an upload session reports (GET on the upload URL). */
async function uploadRange(location: string): Promise<string> {
  const response = await registry(location);
  expect(response.status).toBe(204);
  return header(response, "Range");
}

async function readBlob(name: string, digest: string): Promise<Uint8Array> {
  const response = await registry(`/v2/${name}/blobs/${digest}`);
  expect(response.status).toBe(200);
  return new Uint8Array(await response.arrayBuffer());
}

describe("POST /v2/<name>/blobs/uploads/ (start an upload)", () => {
  it("returns 202 with Location, Range 0-0 and Docker-Upload-UUID", async () => {
    const response = await registry("/v2/start/blobs/uploads/", { method: "POST" });
    expect(response.status).toBe(202);
    expect(response.headers.get("Range")).toBe("0-0");
    const uuid = header(response, "Docker-Upload-UUID");
    const location = new URL(header(response, "Location"), BASE);
    expect(location.pathname).toBe(`/v2/start/blobs/uploads/${uuid}`);
  });

  it("gives every session its own UUID", async () => {
    const first = await startUpload("start/many");
    const second = await startUpload("start/many");
    expect(first.uuid).not.toBe(second.uuid);
  });
});

describe("GET /v2/<name>/blobs/uploads/<uuid> (upload status)", () => {
  it("returns 204 with Location, Docker-Upload-UUID and the Range received so far", async () => {
    const { location, uuid } = await startUpload("status/progress");
    const empty = await registry(location);
    expect(empty.status).toBe(204);
    expect(empty.headers.get("Range")).toBe("0-0");
    expect(empty.headers.get("Docker-Upload-UUID")).toBe(uuid);
    header(empty, "Location");

    expect((await patchChunk(location, randomBytes(10), 0)).status).toBe(202);
    expect(await uploadRange(location)).toBe("0-9");
  });

  it("returns 404 BLOB_UPLOAD_UNKNOWN for a well-formed UUID that was never started", async () => {
    const response = await registry(`/v2/status/unknown/blobs/uploads/${crypto.randomUUID()}`);
    await expectError(response, 404, "BLOB_UPLOAD_UNKNOWN");
  });

  it("returns 404 BLOB_UPLOAD_UNKNOWN for a malformed UUID", async () => {
    for (const uuid of ["not-a-uuid", "12345", "ZZZZZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZZZZZZZZZ"]) {
      await expectError(await registry(`/v2/status/malformed/blobs/uploads/${uuid}`), 404, "BLOB_UPLOAD_UNKNOWN");
    }
  });

  it("returns 404 BLOB_UPLOAD_UNKNOWN once the upload was committed", async () => {
    const bytes = utf8("committed");
    const { location } = await startUpload("status/committed");
    expect((await registry(withDigest(location, await sha256(bytes)), { method: "PUT", body: bytes })).status).toBe(
      201,
    );
    await expectError(await registry(location), 404, "BLOB_UPLOAD_UNKNOWN");
  });
});

describe("PATCH /v2/<name>/blobs/uploads/<uuid> (streamed, no Content-Range)", () => {
  it("appends a body of unknown length; PUT ?digest= with no body then commits it", async () => {
    const name = "patch/streamed";
    const chunks = [randomBytes(5000), randomBytes(70_000), randomBytes(3)];
    const bytes = concat(...chunks);
    const digest = await sha256(bytes);
    const { location } = await startUpload(name);

    const patched = await registry(location, { method: "PATCH", body: streamOf(...chunks) });
    expect(patched.status).toBe(202);
    expect(patched.headers.get("Range")).toBe(`0-${bytes.byteLength - 1}`);
    header(patched, "Location");
    header(patched, "Docker-Upload-UUID");

    const committed = await registry(withDigest(header(patched, "Location"), digest), { method: "PUT" });
    expect(committed.status).toBe(201);
    expect(committed.headers.get("Docker-Content-Digest")).toBe(digest);
    expect(new URL(header(committed, "Location"), BASE).pathname).toBe(`/v2/${name}/blobs/${digest}`);
    expect(await readBlob(name, digest)).toEqual(bytes);
  });

  it("appends several streamed PATCHes one after the other", async () => {
    const name = "patch/streamed-many";
    const first = randomBytes(1234);
    const second = randomBytes(4321);
    const { location } = await startUpload(name);
    expect((await registry(location, { method: "PATCH", body: streamOf(first) })).status).toBe(202);
    const response = await registry(location, { method: "PATCH", body: streamOf(second) });
    expect(response.headers.get("Range")).toBe(`0-${first.byteLength + second.byteLength - 1}`);
    const bytes = concat(first, second);
    const digest = await sha256(bytes);
    expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);
    expect(await readBlob(name, digest)).toEqual(bytes);
  });
});

describe("PATCH with Content-Range (chunked upload)", () => {
  it("accepts chunks in order, reports the Range after each, and commits them byte for byte", async () => {
    const name = "chunked/in-order";
    const chunks = [randomBytes(1), randomBytes(999), randomBytes(65_536), randomBytes(17)];
    const { location } = await startUpload(name);
    let offset = 0;
    for (const chunk of chunks) {
      const response = await patchChunk(location, chunk, offset);
      expect(response.status).toBe(202);
      offset += chunk.byteLength;
      expect(response.headers.get("Range")).toBe(`0-${offset - 1}`);
      expect(await uploadRange(location)).toBe(`0-${offset - 1}`);
    }
    const bytes = concat(...chunks);
    const digest = await sha256(bytes);
    expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);
    expect(await readBlob(name, digest)).toEqual(bytes);
  });

  it("PATCH out of order returns 416 RANGE_INVALID and keeps the offset", async () => {
    const name = "chunked/out-of-order";
    const first = randomBytes(10);
    const second = randomBytes(10);
    const { location } = await startUpload(name);
    expect((await patchChunk(location, first, 0)).status).toBe(202);

    await expectError(await patchChunk(location, second, 20), 416, "RANGE_INVALID");
    expect(await uploadRange(location)).toBe("0-9");
    await expectError(await patchChunk(location, second, 5), 416, "RANGE_INVALID");
    expect(await uploadRange(location)).toBe("0-9");

    // The upload resumes from the offset it kept.
    expect((await patchChunk(location, second, 10)).status).toBe(202);
    const bytes = concat(first, second);
    const digest = await sha256(bytes);
    expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);
    expect(await readBlob(name, digest)).toEqual(bytes);
  });

  it("a first chunk that does not start at 0 returns 416 RANGE_INVALID", async () => {
    const { location } = await startUpload("chunked/not-at-zero");
    await expectError(await patchChunk(location, randomBytes(10), 1), 416, "RANGE_INVALID");
    expect(await uploadRange(location)).toBe("0-0");
  });

  it("a Content-Length that disagrees with Content-Range is refused and keeps the offset", async () => {
    const { location } = await startUpload("chunked/length-mismatch");
    expect((await patchChunk(location, randomBytes(10), 0)).status).toBe(202);
    const response = await registry(location, {
      method: "PATCH",
      headers: { "Content-Range": "10-29", "Content-Length": "10" },
      body: randomBytes(10),
    });
    expect([400, 416]).toContain(response.status);
    await expectError(response, response.status);
    expect(await uploadRange(location)).toBe("0-9");
  });

  it("a malformed Content-Range is refused and keeps the offset", async () => {
    const { location } = await startUpload("chunked/bad-range");
    const response = await registry(location, {
      method: "PATCH",
      headers: { "Content-Range": "ten-twenty" },
      body: randomBytes(10),
    });
    expect([400, 416]).toContain(response.status);
    await expectError(response, response.status);
    expect(await uploadRange(location)).toBe("0-0");
  });
});

describe("PUT /v2/<name>/blobs/uploads/<uuid>?digest= (commit)", () => {
  it("accepts a final chunk in the PUT body", async () => {
    const name = "commit/final-chunk";
    const first = randomBytes(2000);
    const last = randomBytes(777);
    const { location } = await startUpload(name);
    expect((await patchChunk(location, first, 0)).status).toBe(202);
    const bytes = concat(first, last);
    const digest = await sha256(bytes);
    const response = await registry(withDigest(location, digest), {
      method: "PUT",
      headers: { "Content-Range": `${first.byteLength}-${bytes.byteLength - 1}` },
      body: last,
    });
    expect(response.status).toBe(201);
    expect(response.headers.get("Docker-Content-Digest")).toBe(digest);
    expect(await readBlob(name, digest)).toEqual(bytes);
  });

  it("accepts the whole blob in the PUT body of a fresh session", async () => {
    const name = "commit/whole-body";
    const bytes = randomBytes(123_456);
    const digest = await sha256(bytes);
    const { location } = await startUpload(name);
    const response = await registry(withDigest(location, digest), { method: "PUT", body: bytes });
    expect(response.status).toBe(201);
    expect(response.headers.get("Docker-Content-Digest")).toBe(digest);
    expect(new URL(header(response, "Location"), BASE).pathname).toBe(`/v2/${name}/blobs/${digest}`);
    expect(await readBlob(name, digest)).toEqual(bytes);
  });

  it("commits an empty blob with PUT and no body on a fresh session", async () => {
    const name = "commit/empty";
    const digest = await sha256(new Uint8Array(0));
    const { location } = await startUpload(name);
    expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);
    expect((await readBlob(name, digest)).byteLength).toBe(0);
  });

  it("a wrong digest after PATCHes gives 400 DIGEST_INVALID and the blob is readable under neither digest", async () => {
    const name = "commit/wrong-digest-chunked";
    const bytes = randomBytes(5000);
    const wrong = await sha256(utf8("something else"));
    const { location } = await startUpload(name);
    expect((await patchChunk(location, bytes, 0)).status).toBe(202);
    await expectError(await registry(withDigest(location, wrong), { method: "PUT" }), 400, "DIGEST_INVALID");
    await expectError(await registry(`/v2/${name}/blobs/${wrong}`), 404, "BLOB_UNKNOWN");
    await expectError(await registry(`/v2/${name}/blobs/${await sha256(bytes)}`), 404, "BLOB_UNKNOWN");
  });

  it("a wrong digest with the whole body gives 400 DIGEST_INVALID and the blob is readable under neither digest", async () => {
    const name = "commit/wrong-digest-whole";
    const bytes = randomBytes(5000);
    const wrong = await sha256(utf8("something else entirely"));
    const { location } = await startUpload(name);
    await expectError(
      await registry(withDigest(location, wrong), { method: "PUT", body: bytes }),
      400,
      "DIGEST_INVALID",
    );
    await expectError(await registry(`/v2/${name}/blobs/${wrong}`), 404, "BLOB_UNKNOWN");
    await expectError(await registry(`/v2/${name}/blobs/${await sha256(bytes)}`), 404, "BLOB_UNKNOWN");
  });

  it("a final chunk whose Content-Range does not start at the offset gives 416 and keeps the session", async () => {
    const name = "commit/final-out-of-order";
    const first = randomBytes(100);
    const last = randomBytes(50);
    const { location } = await startUpload(name);
    expect((await patchChunk(location, first, 0)).status).toBe(202);
    const bytes = concat(first, last);
    const digest = await sha256(bytes);
    const response = await registry(withDigest(location, digest), {
      method: "PUT",
      headers: { "Content-Range": "120-169" },
      body: last,
    });
    await expectError(response, 416, "RANGE_INVALID");
    expect(await uploadRange(location)).toBe("0-99");
    await expectError(await registry(`/v2/${name}/blobs/${digest}`), 404, "BLOB_UNKNOWN");
  });

  it("a chunked upload of bytes already stored links them and leaves no staged data behind", async () => {
    const bytes = randomBytes(20_000);
    const digest = await sha256(bytes);
    const first = await registry(`/v2/commit/dedupe-first/blobs/uploads/?digest=${digest}`, {
      method: "POST",
      body: bytes,
    });
    expect(first.status).toBe(201);

    const name = "commit/dedupe-second";
    const { location, uuid } = await startUpload(name);
    expect((await patchChunk(location, bytes.slice(0, 5000), 0)).status).toBe(202);
    expect((await patchChunk(location, bytes.slice(5000), 5000)).status).toBe(202);
    const response = await registry(withDigest(location, digest), { method: "PUT" });
    expect(response.status).toBe(201);
    expect(response.headers.get("Docker-Content-Digest")).toBe(digest);
    expect(await readBlob(name, digest)).toEqual(bytes);
    expect((await env.BLOBS.list({ prefix: `data/${uuid}` })).objects).toEqual([]);
  });

  it("a PUT without ?digest= is refused with 400 DIGEST_INVALID", async () => {
    const { location } = await startUpload("commit/no-digest");
    await expectError(await registry(location, { method: "PUT", body: utf8("bytes") }), 400, "DIGEST_INVALID");
  });

  it("commits a chunked upload under a sha512 digest", async () => {
    const name = "commit/sha512";
    const first = randomBytes(3000);
    const second = randomBytes(3000);
    const bytes = concat(first, second);
    const digest = await sha512(bytes);
    const { location } = await startUpload(name);
    expect((await patchChunk(location, first, 0)).status).toBe(202);
    expect((await patchChunk(location, second, first.byteLength)).status).toBe(202);
    const response = await registry(withDigest(location, digest), { method: "PUT" });
    expect(response.status).toBe(201);
    expect(response.headers.get("Docker-Content-Digest")).toBe(digest);
    expect(await readBlob(name, digest)).toEqual(bytes);
  });

  it("a wrong sha512 digest on a chunked upload gives 400 DIGEST_INVALID and stores nothing", async () => {
    const name = "commit/sha512-wrong";
    const bytes = randomBytes(3000);
    const wrong = await sha512(utf8("not these bytes"));
    const { location } = await startUpload(name);
    expect((await patchChunk(location, bytes, 0)).status).toBe(202);
    await expectError(await registry(withDigest(location, wrong), { method: "PUT" }), 400, "DIGEST_INVALID");
    await expectError(await registry(`/v2/${name}/blobs/${wrong}`), 404, "BLOB_UNKNOWN");
    await expectError(await registry(`/v2/${name}/blobs/${await sha512(bytes)}`), 404, "BLOB_UNKNOWN");
  });
});

describe("DELETE /v2/<name>/blobs/uploads/<uuid> (cancel)", () => {
  it("returns 204, then the session is 404 BLOB_UPLOAD_UNKNOWN", async () => {
    const { location } = await startUpload("cancel/session");
    expect((await patchChunk(location, randomBytes(100), 0)).status).toBe(202);
    const response = await registry(location, { method: "DELETE" });
    expect(response.status).toBe(204);
    await expectError(await registry(location), 404, "BLOB_UPLOAD_UNKNOWN");
    await expectError(await patchChunk(location, randomBytes(10), 100), 404, "BLOB_UPLOAD_UNKNOWN");
  });

  it("returns 404 BLOB_UPLOAD_UNKNOWN for an upload that does not exist", async () => {
    const response = await registry(`/v2/cancel/unknown/blobs/uploads/${crypto.randomUUID()}`, { method: "DELETE" });
    await expectError(response, 404, "BLOB_UPLOAD_UNKNOWN");
  });
});

describe("an upload session is a lock", () => {
  it("a second PATCH while one is streaming is refused with 409 BLOB_UPLOAD_INVALID, and the first completes", async () => {
    const name = "lock/concurrent";
    const head = randomBytes(1000);
    const tail = randomBytes(1000);
    const { location } = await startUpload(name);

    // A body that sends its first bytes, then waits until the test lets it finish.
    let release = () => {};
    const released = new Promise<void>((resolve) => (release = resolve));
    let reading = () => {};
    const startedReading = new Promise<void>((resolve) => (reading = resolve));
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (sent === 0) {
          sent += 1;
          controller.enqueue(head.slice());
          reading();
          return;
        }
        await released;
        controller.enqueue(tail.slice());
        controller.close();
      },
    });
    const first = registry(location, { method: "PATCH", body });
    await startedReading;
    // Let the first chunk reach the session before the second request arrives.
    await new Promise((resolve) => setTimeout(resolve, 100));

    const second = await patchChunk(location, randomBytes(10), 0);
    await expectError(second, 409, "BLOB_UPLOAD_INVALID");

    release();
    const firstResponse = await first;
    expect(firstResponse.status).toBe(202);
    expect(firstResponse.headers.get("Range")).toBe("0-1999");
    const bytes = concat(head, tail);
    const digest = await sha256(bytes);
    expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);
    expect(await readBlob(name, digest)).toEqual(bytes);
  });
});

describe("an upload session belongs to its repository", () => {
  it("its UUID under another repository name is 404 BLOB_UPLOAD_UNKNOWN for GET, PATCH, PUT and DELETE", async () => {
    const bytes = utf8("owned by session/owner");
    const digest = await sha256(bytes);
    const { location, uuid } = await startUpload("session/owner");
    const foreign = `/v2/session/intruder/blobs/uploads/${uuid}`;

    await expectError(await registry(foreign), 404, "BLOB_UPLOAD_UNKNOWN");
    await expectError(await patchChunk(foreign, bytes, 0), 404, "BLOB_UPLOAD_UNKNOWN");
    await expectError(
      await registry(withDigest(foreign, digest), { method: "PUT", body: bytes }),
      404,
      "BLOB_UPLOAD_UNKNOWN",
    );
    await expectError(await registry(foreign, { method: "DELETE" }), 404, "BLOB_UPLOAD_UNKNOWN");
    await expectError(await registry(`/v2/session/intruder/blobs/${digest}`), 404, "BLOB_UNKNOWN");

    // The owner's session is untouched.
    expect(await uploadRange(location)).toBe("0-0");
    expect((await registry(withDigest(location, digest), { method: "PUT", body: bytes })).status).toBe(201);
    expect(await readBlob("session/owner", digest)).toEqual(bytes);
  });
});

describe("uploads larger than one multipart part", () => {
  it(
    "~40 MiB in uneven chunks (1 B, 7 MiB, 13 MiB, a streamed rest, a 3 B final PUT) round-trips byte for byte",
    { timeout: 120_000 },
    async () => {
      const name = "multipart/uneven";
      const total = 40 * MiB;
      const sizes = [1, 7 * MiB, 13 * MiB];
      const restSize = total - 3 - sizes.reduce((sum, size) => sum + size, 0);
      const chunks = sizes.map((size) => randomBytes(size));
      const rest = randomBytes(restSize);
      const final = randomBytes(3);

      const digester = new crypto.DigestStream("SHA-256");
      const writer = digester.getWriter();
      for (const chunk of [...chunks, rest, final]) await writer.write(chunk);
      await writer.close();
      const digest = `sha256:${[...new Uint8Array(await digester.digest)].map((b) => b.toString(16).padStart(2, "0")).join("")}`;

      const { location } = await startUpload(name);
      let offset = 0;
      for (const chunk of chunks) {
        const response = await patchChunk(location, chunk, offset);
        expect(response.status).toBe(202);
        offset += chunk.byteLength;
        expect(response.headers.get("Range")).toBe(`0-${offset - 1}`);
      }
      // The rest crosses a part boundary as a body of unknown length, in 64 KiB pieces.
      const pieces: Uint8Array[] = [];
      for (let start = 0; start < rest.byteLength; start += 64 * 1024)
        pieces.push(rest.subarray(start, start + 64 * 1024));
      const streamed = await registry(location, { method: "PATCH", body: streamOf(...pieces) });
      expect(streamed.status).toBe(202);
      offset += rest.byteLength;
      expect(offset).toBeGreaterThan(PART_SIZE);
      expect(await uploadRange(location)).toBe(`0-${offset - 1}`);

      const committed = await registry(withDigest(location, digest), {
        method: "PUT",
        headers: { "Content-Range": `${offset}-${offset + 2}` },
        body: final,
      });
      expect(committed.status).toBe(201);
      expect(committed.headers.get("Docker-Content-Digest")).toBe(digest);

      const head = await registry(`/v2/${name}/blobs/${digest}`, { method: "HEAD" });
      expect(head.headers.get("Content-Length")).toBe(String(total));

      const pulled = await registry(`/v2/${name}/blobs/${digest}`);
      expect(pulled.status).toBe(200);
      const body = pulled.body;
      if (!body) throw new Error("blob response has no body");
      expect(await digestStream(body)).toEqual({ digest, size: total });

      // A range straddling the first part boundary comes back exact.
      const whole = concat(...chunks, rest, final);
      const ranged = await registry(`/v2/${name}/blobs/${digest}`, {
        headers: { Range: `bytes=${PART_SIZE - 5}-${PART_SIZE + 4}` },
      });
      expect(ranged.status).toBe(206);
      expect(new Uint8Array(await ranged.arrayBuffer())).toEqual(whole.slice(PART_SIZE - 5, PART_SIZE + 5));
    },
  );

  it("exactly one part then PUT with no body commits the blob", { timeout: 120_000 }, async () => {
    const name = "multipart/exact-part";
    const bytes = randomBytes(PART_SIZE);
    const digest = await sha256(bytes);
    const { location } = await startUpload(name);
    const patched = await registry(location, { method: "PATCH", body: streamOf(bytes) });
    expect(patched.status).toBe(202);
    expect(patched.headers.get("Range")).toBe(`0-${PART_SIZE - 1}`);
    expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);
    const pulled = await registry(`/v2/${name}/blobs/${digest}`);
    const body = pulled.body;
    if (!body) throw new Error("blob response has no body");
    expect(await digestStream(body)).toEqual({ digest, size: PART_SIZE });
  });
});

describe("the whole blob in one request (POST ?digest=, or PUT with the body on a fresh session)", () => {
  it(
    "a body of two and a half parts is cut into parts and served back byte for byte",
    { timeout: 120_000 },
    async () => {
      const name = "whole/parts";
      const bytes = randomBytes(2 * PART_SIZE + PART_SIZE / 2);
      const digest = await sha256(bytes);
      const response = await registry(`/v2/${name}/blobs/uploads/?digest=${digest}`, { method: "POST", body: bytes });
      expect(response.status).toBe(201);
      const [algorithm, hex] = digest.split(":");
      const record = (await (await env.BLOBS.get(`blobs/${algorithm}/${hex}`))?.json()) as {
        key: string;
        size: number;
      };
      expect(record.size).toBe(bytes.byteLength);
      const stored = await env.BLOBS.head(record.key);
      expect(stored?.size).toBe(bytes.byteLength);
      const pulled = await registry(`/v2/${name}/blobs/${digest}`);
      const body = pulled.body;
      if (!body) throw new Error("blob response has no body");
      expect(await digestStream(body)).toEqual({ digest, size: bytes.byteLength });
    },
  );

  it(
    "a wrong digest on a multi-part PUT body leaves the session at offset 0, where the right digest then commits",
    { timeout: 120_000 },
    async () => {
      const name = "whole/retry";
      const bytes = randomBytes(PART_SIZE + 3 * MiB);
      const digest = await sha256(bytes);
      const wrong = await sha256(utf8("not these bytes"));
      const { location } = await startUpload(name);
      await expectError(
        await registry(withDigest(location, wrong), { method: "PUT", body: bytes }),
        400,
        "DIGEST_INVALID",
      );
      expect(await uploadRange(location)).toBe("0-0");
      await expectError(await registry(`/v2/${name}/blobs/${wrong}`), 404, "BLOB_UNKNOWN");
      const committed = await registry(withDigest(location, digest), { method: "PUT", body: bytes });
      expect(committed.status).toBe(201);
      const pulled = await registry(`/v2/${name}/blobs/${digest}`);
      const body = pulled.body;
      if (!body) throw new Error("blob response has no body");
      expect(await digestStream(body)).toEqual({ digest, size: bytes.byteLength });
    },
  );

  it("a sha512 whole-body upload is verified as it streams", async () => {
    const name = "whole/sha512";
    const bytes = randomBytes(200_000);
    const digest = await sha512(bytes);
    expect(
      (await registry(`/v2/${name}/blobs/uploads/?digest=${digest}`, { method: "POST", body: bytes })).status,
    ).toBe(201);
    expect(await readBlob(name, digest)).toEqual(bytes);
    const wrong = await sha512(utf8("other"));
    await expectError(
      await registry(`/v2/${name}/blobs/uploads/?digest=${wrong}`, { method: "POST", body: bytes }),
      400,
      "DIGEST_INVALID",
    );
  });
});

describe("upload expiry (the session's alarm)", () => {
  type StoredSession = { updatedAt: number; startedAt: number };

  function sessionStub(uuid: string) {
    return env.UPLOADS.get(env.UPLOADS.idFromName(uuid));
  }

  it("the alarm purges a session unused past its TTL: GET is 404 and its staged bytes are gone", async () => {
    const { location, uuid } = await startUpload("expiry/expired");
    expect((await patchChunk(location, randomBytes(1000), 0)).status).toBe(202);

    const stub = sessionStub(uuid);
    const stagedRows = (state: DurableObjectState): number =>
      state.storage.sql.exec<{ rows: number }>("SELECT COUNT(*) AS rows FROM tail").one().rows;
    await runInDurableObject(stub, (_instance, state) => {
      expect(stagedRows(state)).toBeGreaterThan(0);
      const session = state.storage.kv.get<StoredSession>("session");
      if (!session) throw new Error("no stored session");
      session.updatedAt = 0;
      session.startedAt = 0;
      state.storage.kv.put("session", session);
    });
    expect(await runDurableObjectAlarm(stub)).toBe(true);

    await expectError(await registry(location), 404, "BLOB_UPLOAD_UNKNOWN");
    await runInDurableObject(stub, (_instance, state) => {
      expect(state.storage.kv.get("session")).toBeUndefined();
      expect(state.storage.sql.exec("SELECT name FROM sqlite_master WHERE name = 'tail'").toArray()).toEqual([]);
    });
    expect((await env.BLOBS.list({ prefix: `data/${uuid}` })).objects).toEqual([]);
  });

  it("the alarm keeps a session still within its TTL, and it can still be committed", async () => {
    const name = "expiry/fresh";
    const bytes = randomBytes(1000);
    const { location, uuid } = await startUpload(name);
    expect((await patchChunk(location, bytes, 0)).status).toBe(202);
    const ttlMs = Number(env.UPLOAD_TTL_SECONDS) * 1000;
    const alarm = await runInDurableObject(sessionStub(uuid), (_instance, state) => state.storage.getAlarm());
    expect(alarm).toBeGreaterThan(Date.now() + ttlMs - 60_000);
    expect(alarm).toBeLessThanOrEqual(Date.now() + ttlMs);
    expect(await runDurableObjectAlarm(sessionStub(uuid))).toBe(true);
    expect(await uploadRange(location)).toBe("0-999");
    const digest = await sha256(bytes);
    expect((await registry(withDigest(location, digest), { method: "PUT" })).status).toBe(201);
    expect(await readBlob(name, digest)).toEqual(bytes);
  });
});
