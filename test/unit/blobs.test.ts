import { beforeAll, describe, expect, it } from "vitest";
import { expectError, header, pushBlob, randomBytes, registry, sha256, utf8 } from "./helpers";

const UNKNOWN_DIGEST = "sha256:" + "ab".repeat(32);

describe("POST /v2/<name>/blobs/uploads/?digest= (monolithic upload)", () => {
  it("returns 201 with Location and Docker-Content-Digest, and the Location serves the bytes", async () => {
    const bytes = randomBytes(1000);
    const digest = await sha256(bytes);
    const response = await registry(`/v2/mono/ok/blobs/uploads/?digest=${digest}`, { method: "POST", body: bytes });
    expect(response.status).toBe(201);
    expect(response.headers.get("Docker-Content-Digest")).toBe(digest);
    const location = header(response, "Location");
    expect(new URL(location, "http://registry.test").pathname).toBe(`/v2/mono/ok/blobs/${digest}`);

    const pulled = await registry(location);
    expect(pulled.status).toBe(200);
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(bytes);
  });

  it("refuses bytes that do not match the digest with 400 DIGEST_INVALID and stores nothing", async () => {
    const bytes = utf8("the real bytes");
    const claimed = await sha256(utf8("other bytes"));
    const response = await registry(`/v2/mono/mismatch/blobs/uploads/?digest=${claimed}`, {
      method: "POST",
      body: bytes,
    });
    await expectError(response, 400, "DIGEST_INVALID");
    await expectError(await registry(`/v2/mono/mismatch/blobs/${claimed}`), 404, "BLOB_UNKNOWN");
    await expectError(await registry(`/v2/mono/mismatch/blobs/${await sha256(bytes)}`), 404, "BLOB_UNKNOWN");
  });

  it("accepts a body of unknown length (no Content-Length)", async () => {
    const bytes = randomBytes(100_000);
    const digest = await sha256(bytes);
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(bytes.slice(0, 40_000));
        controller.enqueue(bytes.slice(40_000));
        controller.close();
      },
    });
    const response = await registry(`/v2/mono/streamed/blobs/uploads/?digest=${digest}`, { method: "POST", body });
    expect(response.status).toBe(201);
    const pulled = await registry(`/v2/mono/streamed/blobs/${digest}`);
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(bytes);
  });

  it("refuses other bytes claiming the digest of a blob stored elsewhere, and links nothing", async () => {
    const genuine = utf8("the genuine blob");
    const digest = await pushBlob("mono/genuine", genuine);
    const response = await registry(`/v2/mono/forger/blobs/uploads/?digest=${digest}`, {
      method: "POST",
      body: utf8("forged bytes"),
    });
    await expectError(response, 400, "DIGEST_INVALID");
    await expectError(await registry(`/v2/mono/forger/blobs/${digest}`), 404, "BLOB_UNKNOWN");
    const pulled = await registry(`/v2/mono/genuine/blobs/${digest}`);
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(genuine);
  });

  it("stores an empty blob", async () => {
    const empty = new Uint8Array(0);
    const digest = await pushBlob("mono/empty", empty);
    const response = await registry(`/v2/mono/empty/blobs/${digest}`);
    expect(response.status).toBe(200);
    expect(response.headers.get("Content-Length")).toBe("0");
    expect((await response.arrayBuffer()).byteLength).toBe(0);
  });

  it("accepts the same bytes pushed twice and serves them once", async () => {
    const bytes = utf8("pushed twice");
    const first = await pushBlob("mono/twice", bytes);
    const second = await pushBlob("mono/twice", bytes);
    expect(second).toBe(first);
    const response = await registry(`/v2/mono/twice/blobs/${first}`);
    expect(new Uint8Array(await response.arrayBuffer())).toEqual(bytes);
  });
});

describe("GET /v2/<name>/blobs/<digest>", () => {
  it("returns the bytes byte for byte with Content-Length, Docker-Content-Digest and ETag", async () => {
    const bytes = randomBytes(300_000);
    const digest = await pushBlob("get/bytes", bytes);
    const response = await registry(`/v2/get/bytes/blobs/${digest}`);
    expect(response.status).toBe(200);
    expect(response.headers.get("Content-Length")).toBe(String(bytes.byteLength));
    expect(response.headers.get("Docker-Content-Digest")).toBe(digest);
    expect(header(response, "ETag")).toContain(digest);
    const pulled = new Uint8Array(await response.arrayBuffer());
    expect(pulled).toEqual(bytes);
    expect(await sha256(pulled)).toBe(digest);
  });

  it("returns 404 BLOB_UNKNOWN for a digest never pushed", async () => {
    await expectError(await registry(`/v2/get/unknown/blobs/${UNKNOWN_DIGEST}`), 404, "BLOB_UNKNOWN");
  });
});

describe("HEAD /v2/<name>/blobs/<digest>", () => {
  it("returns 200 with Content-Length, Docker-Content-Digest and ETag, and no body", async () => {
    const bytes = randomBytes(4321);
    const digest = await pushBlob("head/bytes", bytes);
    const response = await registry(`/v2/head/bytes/blobs/${digest}`, { method: "HEAD" });
    expect(response.status).toBe(200);
    expect(response.headers.get("Content-Length")).toBe("4321");
    expect(response.headers.get("Docker-Content-Digest")).toBe(digest);
    expect(header(response, "ETag")).toContain(digest);
    expect((await response.arrayBuffer()).byteLength).toBe(0);
  });

  it("returns 404 with no body for a digest never pushed", async () => {
    const response = await registry(`/v2/head/unknown/blobs/${UNKNOWN_DIGEST}`, { method: "HEAD" });
    expect(response.status).toBe(404);
    expect((await response.arrayBuffer()).byteLength).toBe(0);
  });
});

describe("Range requests on blobs", () => {
  const size = 100;
  const bytes = randomBytes(size);
  const name = "range/blob";
  let digest = "";
  beforeAll(async () => {
    digest = await pushBlob(name, bytes);
  });
  const get = (range: string, method = "GET") =>
    registry(`/v2/${name}/blobs/${digest}`, { method, headers: { Range: range } });

  it("bytes=10-19 returns 206 with Content-Range and exactly those bytes", async () => {
    const response = await get("bytes=10-19");
    expect(response.status).toBe(206);
    expect(response.headers.get("Content-Range")).toBe(`bytes 10-19/${size}`);
    expect(response.headers.get("Content-Length")).toBe("10");
    expect(new Uint8Array(await response.arrayBuffer())).toEqual(bytes.slice(10, 20));
  });

  it("an open-ended range bytes=90- returns the rest of the blob", async () => {
    const response = await get("bytes=90-");
    expect(response.status).toBe(206);
    expect(response.headers.get("Content-Range")).toBe(`bytes 90-99/${size}`);
    expect(new Uint8Array(await response.arrayBuffer())).toEqual(bytes.slice(90));
  });

  it("a suffix range bytes=-10 returns the last 10 bytes", async () => {
    const response = await get("bytes=-10");
    expect(response.status).toBe(206);
    expect(response.headers.get("Content-Range")).toBe(`bytes 90-99/${size}`);
    expect(response.headers.get("Content-Length")).toBe("10");
    expect(new Uint8Array(await response.arrayBuffer())).toEqual(bytes.slice(90));
  });

  it("a suffix longer than the blob returns the whole blob", async () => {
    const response = await get("bytes=-500");
    expect(response.status).toBe(206);
    expect(response.headers.get("Content-Range")).toBe(`bytes 0-99/${size}`);
    expect(new Uint8Array(await response.arrayBuffer())).toEqual(bytes);
  });

  it("an end past the blob is clamped to its last byte", async () => {
    const response = await get("bytes=95-1000");
    expect(response.status).toBe(206);
    expect(response.headers.get("Content-Range")).toBe(`bytes 95-99/${size}`);
    expect(new Uint8Array(await response.arrayBuffer())).toEqual(bytes.slice(95));
  });

  it("a start at or past the end returns 416 with Content-Range: bytes */size", async () => {
    const response = await get(`bytes=${size}-`);
    expect(response.status).toBe(416);
    expect(response.headers.get("Content-Range")).toBe(`bytes */${size}`);
  });

  it("a zero-length suffix bytes=-0 is unsatisfiable (416)", async () => {
    const response = await get("bytes=-0");
    expect(response.status).toBe(416);
    expect(response.headers.get("Content-Range")).toBe(`bytes */${size}`);
  });

  it("HEAD with a Range returns 206 headers and no body", async () => {
    const response = await get("bytes=0-9", "HEAD");
    expect(response.status).toBe(206);
    expect(response.headers.get("Content-Range")).toBe(`bytes 0-9/${size}`);
    expect(response.headers.get("Content-Length")).toBe("10");
    expect((await response.arrayBuffer()).byteLength).toBe(0);
  });

  // RFC 9110 §14.2: "An origin server MUST ignore a Range header field that contains a
  // range unit it does not understand."
  it("a Range in a unit other than bytes is ignored: 200 with the whole blob", async () => {
    const response = await get("items=0-9");
    expect(response.status).toBe(200);
    expect(new Uint8Array(await response.arrayBuffer())).toEqual(bytes);
  });
});

describe("repository isolation: a repository reads only the blobs it links", () => {
  it("a blob pushed to repository A is 404 BLOB_UNKNOWN from repository B", async () => {
    const digest = await pushBlob("isolation/a", utf8("only in A"));
    expect((await registry(`/v2/isolation/a/blobs/${digest}`)).status).toBe(200);
    await expectError(await registry(`/v2/isolation/b/blobs/${digest}`), 404, "BLOB_UNKNOWN");
    const head = await registry(`/v2/isolation/b/blobs/${digest}`, { method: "HEAD" });
    expect(head.status).toBe(404);
  });
});

describe("POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<other> (cross-repository mount)", () => {
  it("returns 201 with Location and Docker-Content-Digest, and the blob becomes readable in the target", async () => {
    const bytes = randomBytes(2048);
    const digest = await pushBlob("mount/source", bytes);
    await expectError(await registry(`/v2/mount/target/blobs/${digest}`), 404, "BLOB_UNKNOWN");

    const response = await registry(`/v2/mount/target/blobs/uploads/?mount=${digest}&from=mount/source`, {
      method: "POST",
    });
    expect(response.status).toBe(201);
    expect(response.headers.get("Docker-Content-Digest")).toBe(digest);
    expect(new URL(header(response, "Location"), "http://registry.test").pathname).toBe(
      `/v2/mount/target/blobs/${digest}`,
    );

    const pulled = await registry(`/v2/mount/target/blobs/${digest}`);
    expect(pulled.status).toBe(200);
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(bytes);
  });

  it("from a repository that does not link the blob, returns 202 and starts an upload session instead", async () => {
    const digest = await pushBlob("mount/holder", utf8("held elsewhere"));
    const response = await registry(`/v2/mount/target2/blobs/uploads/?mount=${digest}&from=mount/stranger`, {
      method: "POST",
    });
    expect(response.status).toBe(202);
    const location = header(response, "Location");
    header(response, "Docker-Upload-UUID");
    await expectError(await registry(`/v2/mount/target2/blobs/${digest}`), 404, "BLOB_UNKNOWN");
    // The session it started is usable.
    const status = await registry(location);
    expect(status.status).toBe(204);
  });

  it("cannot mount from a repository whose link was deleted", async () => {
    const digest = await pushBlob("mount/deleted-source", utf8("link deleted"));
    expect((await registry(`/v2/mount/deleted-source/blobs/${digest}`, { method: "DELETE" })).status).toBe(202);
    const response = await registry(`/v2/mount/target3/blobs/uploads/?mount=${digest}&from=mount/deleted-source`, {
      method: "POST",
    });
    expect(response.status).toBe(202);
    await expectError(await registry(`/v2/mount/target3/blobs/${digest}`), 404, "BLOB_UNKNOWN");
  });
});

describe("DELETE /v2/<name>/blobs/<digest>", () => {
  it("returns 202, then the blob is 404 in that repository but still readable in another that links it", async () => {
    const bytes = utf8("shared between two repositories");
    const digest = await pushBlob("delete/one", bytes);
    await pushBlob("delete/two", bytes);

    const response = await registry(`/v2/delete/one/blobs/${digest}`, { method: "DELETE" });
    expect(response.status).toBe(202);
    await expectError(await registry(`/v2/delete/one/blobs/${digest}`), 404, "BLOB_UNKNOWN");

    const other = await registry(`/v2/delete/two/blobs/${digest}`);
    expect(other.status).toBe(200);
    expect(new Uint8Array(await other.arrayBuffer())).toEqual(bytes);
  });

  it("keeps a mounted blob readable in the target after the source deletes its link", async () => {
    const bytes = utf8("mounted then deleted at source");
    const digest = await pushBlob("delete/source", bytes);
    const mount = await registry(`/v2/delete/mounted/blobs/uploads/?mount=${digest}&from=delete/source`, {
      method: "POST",
    });
    expect(mount.status).toBe(201);
    expect((await registry(`/v2/delete/source/blobs/${digest}`, { method: "DELETE" })).status).toBe(202);
    const pulled = await registry(`/v2/delete/mounted/blobs/${digest}`);
    expect(pulled.status).toBe(200);
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(bytes);
  });

  it("returns 404 BLOB_UNKNOWN for a blob the repository does not link", async () => {
    const digest = await pushBlob("delete/elsewhere", utf8("not in delete/none"));
    await expectError(await registry(`/v2/delete/none/blobs/${digest}`, { method: "DELETE" }), 404, "BLOB_UNKNOWN");
    expect((await registry(`/v2/delete/elsewhere/blobs/${digest}`)).status).toBe(200);
  });

  it("a blob can be pushed again after its link was deleted", async () => {
    const bytes = utf8("deleted then pushed again");
    const digest = await pushBlob("delete/again", bytes);
    expect((await registry(`/v2/delete/again/blobs/${digest}`, { method: "DELETE" })).status).toBe(202);
    await pushBlob("delete/again", bytes);
    const pulled = await registry(`/v2/delete/again/blobs/${digest}`);
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(bytes);
  });
});
