import { Hono } from "hono";
import { FRONT_SECRET_HEADER } from "../auth/client-address";
import { settingsOf } from "../settings/settings";
import { parseDigest } from "../oci/digest";
import { fromErrorRecord, RegistryError, unavailable } from "../oci/errors";
import { validateName } from "../oci/names";
import type { BlobDescriptor } from "../registry/registry";
import { metered, meterOnEnv } from "../registry/meter";
import { plainContext } from "../registry/changes";
import {
  BYTE_REQUEST_ARGS,
  type ByteRequestArgs,
  type SessionResult,
  type UploadSession,
} from "../uploads/upload-session";
import type { ChunkDeclaration, SessionStatus } from "../uploads/upload-state";
import {
  contentLength,
  changeContextOf,
  contentRange,
  repositoryName,
  repositoryOf,
  requestedRepository,
  requestBody,
  type AppContext,
  type AppEnv,
} from "./http";

export const uploadRoutes = new Hono<AppEnv>();

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function session(c: AppContext, uploadId: string): DurableObjectStub<UploadSession> {
  return c.env.UPLOADS.get(c.env.UPLOADS.idFromName(uploadId));
}

/**
 * A call to an upload's object that fails as a call (the object was reset, is
 * overloaded, or could not be reached) is retryable: the session keeps its last
 * durable point, and the client's retry finds it.
 */
async function reach<T>(c: AppContext, call: Promise<T>, { count = true }: { count?: boolean } = {}): Promise<T> {
  try {
    return await (count ? metered("do", "call", () => call, meterOnEnv(c.env)) : call);
  } catch (error) {
    if (error instanceof RegistryError) throw error;
    throw unavailable("the upload session could not be reached; retry", { cause: String(error) });
  }
}

function uploadId(c: AppContext): string {
  const id = c.req.param("uuid") ?? "";
  if (!UUID.test(id)) throw new RegistryError("BLOB_UPLOAD_UNKNOWN", undefined, { uuid: id });
  return id;
}

/** Forwards the request's body to the upload's object (see UploadSession.fetch). */
async function forwardBytes<T>(c: AppContext, id: string, args: Omit<ByteRequestArgs, "hasBody">): Promise<T> {
  // A commit is a change: who made it goes with it (the session tells the change seam).
  if (args.operation === "commit") args = { ...args, context: plainContext(changeContextOf(c)) };
  const body = requestBody(c);
  const forwarded = new Request("https://upload-session/", c.req.raw);
  forwarded.headers.delete(FRONT_SECRET_HEADER);
  forwarded.headers.set(BYTE_REQUEST_ARGS, JSON.stringify({ ...args, hasBody: body !== null }));
  const response = await reach(c, session(c, id).fetch(forwarded));
  // Reading the object's answer is part of the same call.
  return unwrap((await reach(c, response.json(), { count: false })) as SessionResult<T>);
}

function unwrap<T>(result: SessionResult<T>): T {
  if (!result.ok) throw answerOf(fromErrorRecord(result.error));
  return result.value;
}

/**
 * The session speaks in numbers; its client reads headers and advice. A chunk that does
 * not start at the offset is answered with the offset as `Range`; a body over the chunk
 * limit with the same 413 as a declared one.
 */
function answerOf(error: RegistryError): RegistryError {
  const detail = (error.detail ?? {}) as { offset?: unknown; limit?: unknown };
  if (error.code === "RANGE_INVALID" && typeof detail.offset === "number") {
    const headers = { ...error.headers, Range: rangeHeader(detail.offset) };
    return new RegistryError(error.code, error.message, error.detail, headers, error.status);
  }
  if (error.status === 413 && typeof detail.limit === "number") return chunkTooLarge(detail.limit);
  return error;
}

/** The Range header value for an upload holding `offset` bytes (`0-0` when empty, as distribution does). */
function rangeHeader(offset: number): string {
  return `0-${Math.max(0, offset - 1)}`;
}

/**
 * A request body over MAX_CHUNK_LENGTH: 413 with what to do about it (the same answer
 * whether the Worker saw the declared length or the session counted the bytes).
 */
function chunkTooLarge(limit: number): RegistryError {
  return new RegistryError(
    "SIZE_INVALID",
    `request bodies over ${limit} bytes are refused (MAX_CHUNK_LENGTH, the plan's limit): upload in chunks ` +
      `of at most that (OCI-Chunk-Max-Length), for example through the relay (npm run relay)`,
    { limit },
    {},
    413,
  );
}

/** How the request's body declares it fits the upload, from Content-Range and Content-Length. */
function chunkDeclaration(c: AppContext): ChunkDeclaration {
  const range = contentRange(c);
  const length = contentLength(c);
  const { maxChunkLength } = settingsOf(c.env);
  // Refused before anything is read when the declared length says so; a body of unknown
  // length is counted by the session as it arrives.
  if (maxChunkLength !== undefined && length !== undefined && length > maxChunkLength) {
    throw chunkTooLarge(maxChunkLength);
  }
  if (range && length !== undefined && length !== range.end - range.start + 1) {
    throw new RegistryError("RANGE_INVALID", "Content-Range and Content-Length disagree", { range, length });
  }
  const declared: ChunkDeclaration = {};
  if (range) {
    declared.start = range.start;
    declared.length = range.end - range.start + 1;
  }
  if (length !== undefined) declared.length = length;
  if (maxChunkLength !== undefined) declared.limit = maxChunkLength;
  return declared;
}

function uploadLocation(name: string, id: string): string {
  return `/v2/${name}/blobs/uploads/${id}`;
}

function acceptedUpload(c: AppContext, name: string, id: string, offset: number, status: 202 | 204): Response {
  c.header("Location", uploadLocation(name, id));
  c.header("Range", rangeHeader(offset));
  c.header("Docker-Upload-UUID", id);
  c.header("Content-Length", "0");
  return c.body(null, status);
}

function createdBlob(c: AppContext, name: string, digest: string): Response {
  c.header("Location", `/v2/${name}/blobs/${digest}`);
  c.header("Docker-Content-Digest", digest);
  c.header("Content-Length", "0");
  return c.body(null, 201);
}

// Start an upload; with ?digest= it is a monolithic upload; with ?mount= a cross-repository mount.
uploadRoutes.on("POST", ["/:name{.+}/blobs/uploads/", "/:name{.+}/blobs/uploads"], async (c) => {
  // A write: refused at once for a read-only (mirrored) name.
  const target = requestedRepository(c, { edge: false });
  const name = target.name;
  const mount = c.req.query("mount");
  if (mount !== undefined) {
    const digest = parseDigest(mount);
    const from = c.req.query("from");
    // Mounting links a blob that is already stored: never a copy. With `from`, the
    // source repository must link it; without, only if automatic content discovery is
    // enabled. Otherwise fall through to a normal upload session, as the spec says.
    // The client must be allowed to pull from the source, or it could copy any blob
    // of a repository it cannot read into one it can.
    const mayMount =
      from !== undefined
        ? c.var.can({ type: "repository", name: validateName(from) }, "pull")
        : settingsOf(c.env).mountWithoutFrom;
    const source = from !== undefined ? repositoryOf(c, from, { edge: false }) : undefined;
    if (mayMount && (await target.mountBlob(digest, source))) {
      return createdBlob(c, name, digest.value);
    }
  }
  // Refuse a malformed digest, or a body over MAX_CHUNK_LENGTH, before a session exists for it.
  const digestParam = c.req.query("digest");
  const digest = digestParam === undefined ? undefined : parseDigest(digestParam);
  const declared = digest === undefined ? undefined : chunkDeclaration(c);
  const id = crypto.randomUUID();
  const stub = session(c, id);
  await reach(c, stub.start(id, name));
  if (digest !== undefined) {
    await forwardBytes<BlobDescriptor>(c, id, {
      operation: "commit",
      name,
      digest: digest.value,
      declared: declared ?? {},
      once: true,
    });
    return createdBlob(c, name, digest.value);
  }
  // Any chunk size works (the session re-cuts chunks into parts), but chunks of at
  // least one part size never need their tail staged and re-read between requests.
  const config = settingsOf(c.env);
  c.header("OCI-Chunk-Min-Length", String(config.uploadPartSize));
  // The largest request body this deployment takes (the plan's limit), for clients and
  // relays that cut uploads to fit.
  if (config.maxChunkLength !== undefined) c.header("OCI-Chunk-Max-Length", String(config.maxChunkLength));
  return acceptedUpload(c, name, id, 0, 202);
});

uploadRoutes.get("/:name{.+}/blobs/uploads/:uuid", async (c) => {
  const name = repositoryName(c);
  const id = uploadId(c);
  const status = unwrap(await reach(c, session(c, id).status(name)));
  return acceptedUpload(c, name, id, status.offset, 204);
});

uploadRoutes.patch("/:name{.+}/blobs/uploads/:uuid", async (c) => {
  const name = requestedRepository(c, { edge: false }).name;
  const id = uploadId(c);
  const status = await forwardBytes<SessionStatus>(c, id, { operation: "append", name, declared: chunkDeclaration(c) });
  return acceptedUpload(c, name, id, status.offset, 202);
});

uploadRoutes.put("/:name{.+}/blobs/uploads/:uuid", async (c) => {
  const name = requestedRepository(c, { edge: false }).name;
  const id = uploadId(c);
  const digestParam = c.req.query("digest");
  if (digestParam === undefined) throw new RegistryError("DIGEST_INVALID", "the digest query parameter is required");
  const digest = parseDigest(digestParam);
  await forwardBytes<BlobDescriptor>(c, id, {
    operation: "commit",
    name,
    digest: digest.value,
    declared: chunkDeclaration(c),
  });
  return createdBlob(c, name, digest.value);
});

uploadRoutes.delete("/:name{.+}/blobs/uploads/:uuid", async (c) => {
  const name = requestedRepository(c, { edge: false }).name;
  const id = uploadId(c);
  unwrap(await reach(c, session(c, id).cancel(name)));
  return c.body(null, 204);
});
