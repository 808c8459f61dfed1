import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { app } from "../../src/app";
import { BASE, expectError, randomBytes, sha256, streamOf } from "./helpers";

/**
 * MAX_CHUNK_LENGTH: the largest request body an upload may carry (the plan's limit when
 * deployed). POST answers advertise it; a larger body is refused with 413 and a message
 * saying what to do, before it is read when its length is declared, and as it crosses
 * the limit when it is not; the upload keeps its offset either way.
 */
const LIMIT = 256 * 1024;
const limited = { ...env, MAX_CHUNK_LENGTH: String(LIMIT) } as Env;

function call(path: string, init: RequestInit & { duplex?: string } = {}): Promise<Response> {
  return Promise.resolve(app.request(new URL(path, BASE).toString(), init, limited));
}

async function start(name: string): Promise<string> {
  const started = await call(`/v2/${name}/blobs/uploads/`, { method: "POST" });
  expect(started.status).toBe(202);
  expect(started.headers.get("OCI-Chunk-Max-Length")).toBe(String(LIMIT));
  return started.headers.get("Location") ?? "";
}

async function offsetOf(location: string): Promise<string | null> {
  return (await call(location)).headers.get("Range");
}

describe("MAX_CHUNK_LENGTH", () => {
  it("POST answers carry OCI-Chunk-Max-Length; without the setting they do not", async () => {
    await start("limit/advertised");
    const open = await app.request(`${BASE}/v2/limit/advertised/blobs/uploads/`, { method: "POST" }, env);
    expect(open.headers.get("OCI-Chunk-Max-Length")).toBeNull();
  });

  it("a PATCH declaring more is 413 SIZE_INVALID, saying to send smaller chunks; the offset stays", async () => {
    const location = await start("limit/declared");
    const first = randomBytes(LIMIT);
    expect((await call(location, { method: "PATCH", body: first })).status).toBe(202);
    const refused = await call(location, {
      method: "PATCH",
      body: randomBytes(LIMIT + 1),
      headers: { "Content-Range": `${LIMIT}-${2 * LIMIT}` },
    });
    expect(refused.status).toBe(413);
    const body = (await refused.json()) as { errors: { code: string; message: string }[] };
    expect(body.errors[0]?.code).toBe("SIZE_INVALID");
    expect(body.errors[0]?.message).toMatch(/MAX_CHUNK_LENGTH.*OCI-Chunk-Max-Length/);
    expect(await offsetOf(location)).toBe(`0-${LIMIT - 1}`);
  });

  it("a body of unknown length is refused as it crosses the limit, and the upload goes on from where it was", async () => {
    const location = await start("limit/streamed");
    const chunk = randomBytes(LIMIT);
    expect((await call(location, { method: "PATCH", body: chunk })).status).toBe(202);
    const tooLong = await call(location, {
      method: "PATCH",
      body: streamOf(randomBytes(LIMIT / 2), randomBytes(LIMIT / 2), randomBytes(10)),
      duplex: "half",
    });
    await expectError(tooLong, 413, "SIZE_INVALID");
    expect(await offsetOf(location)).toBe(`0-${LIMIT - 1}`);
    const rest = randomBytes(1000);
    const all = new Uint8Array(LIMIT + rest.byteLength);
    all.set(chunk);
    all.set(rest, LIMIT);
    expect((await call(location, { method: "PATCH", body: rest })).status).toBe(202);
    const committed = await call(`${location}?digest=${await sha256(all)}`, { method: "PUT" });
    expect(committed.status).toBe(201);
  });

  it("a monolithic POST ?digest= over the limit is 413, and stores nothing", async () => {
    const bytes = randomBytes(LIMIT + 1);
    const digest = await sha256(bytes);
    await expectError(
      await call(`/v2/limit/monolithic/blobs/uploads/?digest=${digest}`, { method: "POST", body: bytes }),
      413,
      "SIZE_INVALID",
    );
    expect((await call(`/v2/limit/monolithic/blobs/${digest}`, { method: "HEAD" })).status).toBe(404);
  });
});
