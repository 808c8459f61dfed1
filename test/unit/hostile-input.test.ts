import { env } from "cloudflare:test";
import { beforeAll, describe, expect, it } from "vitest";
import { expectError, imageManifest, MediaTypes, MiB, pushManifest, registry, startUpload, utf8 } from "./helpers";

/**
 * Malformed and hostile input, one row per case: the request, the status and the OCI
 * error code the spec asks for. Every row must also leave storage exactly as it was
 * (nothing stored, nothing half-written), and no row may get a 5xx.
 *
 * To add a case, add a row.
 */
interface Case {
  method?: string;
  /** The path, or a function making the state the request needs (an upload session) and returning it. */
  path: string | (() => Promise<string>);
  headers?: Record<string, string>;
  body?: () => BodyInit;
}
type Row = [label: string, request: Case, status: number, code?: string];

const REPO = "hostile/base";
const SHA = `sha256:${"a".repeat(64)}`;
const validManifest: Record<string, unknown> = {};
let validBytes: Uint8Array<ArrayBuffer> = new Uint8Array(0);

beforeAll(async () => {
  Object.assign(validManifest, await imageManifest(REPO));
  validBytes = (await pushManifest(REPO, "latest", validManifest)).bytes;
});

const json = (value: unknown) => () => JSON.stringify(value);
const manifestWith = (changes: Record<string, unknown>) => () => JSON.stringify({ ...validManifest, ...changes });
const ociManifest = { "Content-Type": MediaTypes.ociManifest };
const newUpload =
  (name = "hostile/up") =>
  async () =>
    (await startUpload(name)).location;
/** A body that sends `sent` bytes and then ends (the connection closed early). */
const shortBody = (sent: number) => () =>
  new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(new Uint8Array(sent));
      controller.close();
    },
  });
/** A body that sends `sent` bytes and then fails (the connection reset). */
const brokenBody = (sent: number) => () =>
  new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(new Uint8Array(sent));
      controller.error(new Error("connection reset"));
    },
  });
/**
 * A chunked body that would go on for ever (`chunk` bytes at a time, up to 1 GiB): the
 * registry must answer once it has read past its cap, without reading the rest.
 */
const endless = (chunk: number) => () => {
  let sent = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent >= 1024 * MiB) return controller.close();
      sent += chunk;
      controller.enqueue(new Uint8Array(chunk).fill(0x61));
    },
  });
};
const form = { "Content-Type": "application/x-www-form-urlencoded" };
/** `depth` nested arrays: a parser that recurses per level runs out of stack long before. */
const nested = (depth: number) => `${"[".repeat(depth)}${"]".repeat(depth)}`;

// One line per case, so the table reads as a table.
// prettier-ignore
const rows: Row[] = [
  // ---- repository names ----
  ["name with uppercase", { path: "/v2/Hostile/App/tags/list" }, 400, "NAME_INVALID"],
  ["name with an encoded '/' (%2F)", { path: "/v2/hostile%2Fapp/tags/list" }, 400, "NAME_INVALID"],
  ["name with encoded dots (%2E%2E) in a component", { path: "/v2/hostile/%2E%2Ehidden/tags/list" }, 400, "NAME_INVALID"],
  ["name component starting with '.'", { path: "/v2/hostile/..x/tags/list" }, 400, "NAME_INVALID"],
  ["name with an empty component", { path: "/v2/hostile//app/tags/list" }, 400, "NAME_INVALID"],
  ["name ending in '/'", { path: "/v2/hostile/app//manifests/latest" }, 400, "NAME_INVALID"],
  ["name component starting with '_'", { path: "/v2/hostile/_layers/tags/list" }, 400, "NAME_INVALID"],
  ["name of 256 characters", { path: `/v2/${"a".repeat(256)}/tags/list` }, 400, "NAME_INVALID"],
  ["name with a trailing separator", { path: "/v2/hostile-/tags/list" }, 400, "NAME_INVALID"],
  ["name with unicode", { path: `/v2/${encodeURIComponent("hôstile")}/tags/list` }, 400, "NAME_INVALID"],
  ["upload POST to an invalid name", { method: "POST", path: "/v2/UP/blobs/uploads/" }, 400, "NAME_INVALID"],

  // ---- tags ----
  ["tag of 129 characters (PUT)", { method: "PUT", path: `/v2/${REPO}/manifests/${"t".repeat(129)}`, headers: ociManifest, body: () => validBytes }, 400, "TAG_INVALID"],
  ["tag starting with '.' (PUT)", { method: "PUT", path: `/v2/${REPO}/manifests/.hidden`, headers: ociManifest, body: () => validBytes }, 400, "TAG_INVALID"],
  ["tag starting with '-' (PUT)", { method: "PUT", path: `/v2/${REPO}/manifests/-flag`, headers: ociManifest, body: () => validBytes }, 400, "TAG_INVALID"],
  ["tag starting with '-' (GET) names no manifest", { path: `/v2/${REPO}/manifests/-flag` }, 404, "MANIFEST_UNKNOWN"],
  [".INVALID_MANIFEST_NAME (GET), as the conformance suite asks", { path: `/v2/${REPO}/manifests/.INVALID_MANIFEST_NAME` }, 404, "MANIFEST_UNKNOWN"],
  [".INVALID_MANIFEST_NAME (HEAD)", { method: "HEAD", path: `/v2/${REPO}/manifests/.INVALID_MANIFEST_NAME` }, 404],
  ["?tag= with an invalid tag", { method: "PUT", path: `/v2/${REPO}/manifests/ok?tag=.bad`, headers: ociManifest, body: () => validBytes }, 400, "TAG_INVALID"],

  // ---- digests ----
  ["digest with an unknown algorithm", { path: `/v2/${REPO}/blobs/sha999:${"a".repeat(64)}` }, 400, "DIGEST_INVALID"],
  ["digest one character short", { path: `/v2/${REPO}/blobs/sha256:${"a".repeat(63)}` }, 400, "DIGEST_INVALID"],
  ["digest one character long", { path: `/v2/${REPO}/blobs/sha256:${"a".repeat(65)}` }, 400, "DIGEST_INVALID"],
  ["digest in uppercase hex", { path: `/v2/${REPO}/blobs/sha256:${"A".repeat(64)}` }, 400, "DIGEST_INVALID"],
  ["digest with non-hex characters", { path: `/v2/${REPO}/blobs/sha256:${"g".repeat(64)}` }, 400, "DIGEST_INVALID"],
  ["digest without an algorithm", { path: `/v2/${REPO}/blobs/:${"a".repeat(64)}` }, 400, "DIGEST_INVALID"],
  ["POST ?digest= malformed", { method: "POST", path: `/v2/${REPO}/blobs/uploads/?digest=sha256:xyz`, body: () => utf8("x") }, 400, "DIGEST_INVALID"],
  ["PUT ?digest= with an unknown algorithm", { method: "PUT", path: async () => `${await newUpload()()}?digest=md5:${"a".repeat(32)}` }, 400, "DIGEST_INVALID"],
  ["mount of a malformed digest", { method: "POST", path: `/v2/${REPO}/blobs/uploads/?mount=sha256:1&from=${REPO}` }, 400, "DIGEST_INVALID"],
  ["referrers of a malformed digest", { path: `/v2/${REPO}/referrers/sha256:zz` }, 400, "DIGEST_INVALID"],

  // ---- manifests ----
  ["manifest that is not JSON", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: () => "{not json" }, 400, "MANIFEST_INVALID"],
  ["manifest that is not UTF-8", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: () => new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]) }, 400, "MANIFEST_INVALID"],
  ["manifest that is a JSON array", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: json([1, 2]) }, 400, "MANIFEST_INVALID"],
  ["manifest with schemaVersion 1", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: manifestWith({ schemaVersion: 1 }) }, 400, "MANIFEST_INVALID"],
  ["manifest with schemaVersion 3", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: manifestWith({ schemaVersion: 3 }) }, 400, "MANIFEST_INVALID"],
  ["manifest with schemaVersion \"2\"", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: manifestWith({ schemaVersion: "2" }) }, 400, "MANIFEST_INVALID"],
  ["mediaType disagreeing with Content-Type", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: { "Content-Type": MediaTypes.dockerManifest }, body: () => validBytes }, 400, "MANIFEST_INVALID"],
  ["unknown manifest media type", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: { "Content-Type": "application/x-evil" }, body: manifestWith({ mediaType: "application/x-evil" }) }, 400, "MANIFEST_INVALID"],
  ["layers that is not an array", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: manifestWith({ layers: {} }) }, 400, "MANIFEST_INVALID"],
  ["descriptor with a negative size", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: manifestWith({ layers: [{ mediaType: MediaTypes.ociLayer, digest: SHA, size: -1 }] }) }, 400, "MANIFEST_INVALID"],
  ["descriptor with a malformed digest", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: manifestWith({ layers: [{ mediaType: MediaTypes.ociLayer, digest: "sha256:1", size: 1 }] }) }, 400, "MANIFEST_INVALID"],
  ["descriptor with the wrong size of a stored blob", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: () => JSON.stringify({ ...validManifest, config: { ...(validManifest.config as object), size: 1 } }) }, 400, "MANIFEST_INVALID"],
  ["annotations nested 100 000 deep", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: () => JSON.stringify({ ...validManifest }).replace(/}$/, `,"annotations":${nested(100_000)}}`) }, 400, "MANIFEST_INVALID"],
  ["manifest nested 100 000 deep", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: () => nested(100_000) }, 400, "MANIFEST_INVALID"],
  ["manifest over 4 MiB", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: () => new Uint8Array(4 * MiB + 1) }, 413, "SIZE_INVALID"],
  ["manifest over 4 MiB, chunked (no Content-Length)", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: endless(MiB) }, 413, "SIZE_INVALID"],
  ["?tag= naming more tags than MANIFEST_MAX_TAGS", { method: "PUT", path: `/v2/${REPO}/manifests/ok?${Array.from({ length: 100 }, (_, index) => `tag=t${index}`).join("&")}`, headers: ociManifest, body: () => validBytes }, 400, "TAG_INVALID"],
  ["manifest referencing a blob never pushed", { method: "PUT", path: `/v2/${REPO}/manifests/bad`, headers: ociManifest, body: manifestWith({ layers: [{ mediaType: MediaTypes.ociLayer, digest: SHA, size: 1 }] }) }, 400, "MANIFEST_BLOB_UNKNOWN"],
  ["index naming the digest it is pushed under as its own child", { method: "PUT", path: `/v2/${REPO}/manifests/${SHA}`, headers: { "Content-Type": MediaTypes.ociIndex }, body: json({ schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [{ mediaType: MediaTypes.ociIndex, digest: SHA, size: 100 }] }) }, 400, "DIGEST_INVALID"],
  ["index naming a child this repository lacks", { method: "PUT", path: `/v2/${REPO}/manifests/index`, headers: { "Content-Type": MediaTypes.ociIndex }, body: json({ schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [{ mediaType: MediaTypes.ociManifest, digest: SHA, size: 100 }] }) }, 400, "MANIFEST_BLOB_UNKNOWN"],
  ["manifest PUT by a digest its bytes do not have", { method: "PUT", path: `/v2/${REPO}/manifests/${SHA}`, headers: ociManifest, body: () => validBytes }, 400, "DIGEST_INVALID"],

  // ---- Content-Range and Content-Length that lie ----
  ["Content-Range with a negative start", { method: "PATCH", path: newUpload(), headers: { "Content-Range": "-5-10" }, body: () => new Uint8Array(16) }, 416, "RANGE_INVALID"],
  ["Content-Range ending before it starts", { method: "PATCH", path: newUpload(), headers: { "Content-Range": "10-5" }, body: () => new Uint8Array(16) }, 416, "RANGE_INVALID"],
  ["Content-Range beyond any integer", { method: "PATCH", path: newUpload(), headers: { "Content-Range": "0-99999999999999999999" }, body: () => new Uint8Array(16) }, 416, "RANGE_INVALID"],
  ["Content-Range not starting at the offset", { method: "PATCH", path: newUpload(), headers: { "Content-Range": "100-115" }, body: () => new Uint8Array(16) }, 416, "RANGE_INVALID"],
  ["Content-Range disagreeing with the body's length", { method: "PATCH", path: newUpload(), headers: { "Content-Range": "0-99" }, body: () => new Uint8Array(16) }, 416, "RANGE_INVALID"],
  ["Content-Range of garbage", { method: "PATCH", path: newUpload(), headers: { "Content-Range": "bytes=all" }, body: () => new Uint8Array(16) }, 416, "RANGE_INVALID"],
  ["PATCH body shorter than its Content-Range", { method: "PATCH", path: newUpload(), headers: { "Content-Range": "0-999" }, body: shortBody(500) }, 400, "SIZE_INVALID"],
  ["POST ?digest= body that stops early", { method: "POST", path: `/v2/${REPO}/blobs/uploads/?digest=${SHA}`, headers: { "Content-Length": "2000" }, body: shortBody(1000) }, 400, "SIZE_INVALID"],
  // Through the test pool a reset reaches the Worker as a body that ends early: what
  // arrived does not hash to the digest. (Over real HTTP the read fails: BLOB_UPLOAD_INVALID.)
  ["POST ?digest= body of unknown length that breaks off", { method: "POST", path: `/v2/${REPO}/blobs/uploads/?digest=${SHA}`, body: brokenBody(1000) }, 400, "DIGEST_INVALID"],
  ["PUT ?digest= with a body shorter than declared", { method: "PUT", path: async () => `${await newUpload()()}?digest=${SHA}`, headers: { "Content-Length": "64" }, body: shortBody(10) }, 400, "SIZE_INVALID"],
  ["PATCH to an upload that does not exist", { method: "PATCH", path: `/v2/${REPO}/blobs/uploads/00000000-0000-4000-8000-000000000000`, body: () => new Uint8Array(1) }, 404, "BLOB_UPLOAD_UNKNOWN"],
  ["PATCH to an upload id that is not a UUID", { method: "PATCH", path: `/v2/${REPO}/blobs/uploads/not-a-uuid`, body: () => new Uint8Array(1) }, 404, "BLOB_UPLOAD_UNKNOWN"],

  // ---- the token endpoint ----
  ["token form over 8 KiB", { method: "POST", path: "/token", headers: form, body: () => `grant_type=password&username=alice&password=${"a".repeat(9000)}` }, 413, "SIZE_INVALID"],
  ["token form that never ends, chunked", { method: "POST", path: "/token", headers: form, body: endless(64 * 1024) }, 413, "SIZE_INVALID"],
  ["token form declaring 200 MiB", { method: "POST", path: "/token", headers: { ...form, "Content-Length": String(200 * MiB) }, body: shortBody(16) }, 413, "SIZE_INVALID"],

  // ---- pagination ----
  ["n=-1", { path: `/v2/${REPO}/tags/list?n=-1` }, 400, "PAGINATION_NUMBER_INVALID"],
  ["n=abc", { path: `/v2/${REPO}/tags/list?n=abc` }, 400, "PAGINATION_NUMBER_INVALID"],
  ["n=1.5", { path: "/v2/_catalog?n=1.5" }, 400, "PAGINATION_NUMBER_INVALID"],
  ["n=10^12 is served, capped", { path: `/v2/${REPO}/tags/list?n=1000000000000` }, 200],
  ["n beyond any integer is served, capped", { path: "/v2/_catalog?n=99999999999999999999999" }, 200],
];

/** Every key in R2 with its etag: what "storage unchanged" compares. */
async function snapshot(): Promise<Map<string, string>> {
  const keys = new Map<string, string>();
  let cursor: string | undefined;
  for (let page = 0; page < 100; page++) {
    const listing = await env.BLOBS.list({ ...(cursor ? { cursor } : {}) });
    for (const object of listing.objects) keys.set(object.key, object.etag);
    if (!listing.truncated) break;
    cursor = listing.cursor;
  }
  return keys;
}

describe("malformed and hostile input", () => {
  it.each(rows)("%s", async (_label, request, status, code) => {
    const path = typeof request.path === "string" ? request.path : await request.path();
    const before = await snapshot();
    const body = request.body?.();
    const init: RequestInit & { duplex?: string } = { method: request.method ?? "GET", headers: request.headers ?? {} };
    if (body !== undefined) init.body = body;
    if (body instanceof ReadableStream) init.duplex = "half";
    const response = await registry(path, init);
    if (code === undefined) {
      expect(response.status).toBe(status);
      await response.body?.cancel();
    } else {
      await expectError(response, status, code);
    }
    expect(await snapshot()).toEqual(before);
  });

  it("a manifest PUT that was refused left no tag behind", async () => {
    const tags = (await (await registry(`/v2/${REPO}/tags/list`)).json()) as { tags: string[] };
    expect(tags.tags).toEqual(["latest"]);
  });
});
