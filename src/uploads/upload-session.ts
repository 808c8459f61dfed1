import { DurableObject } from "cloudflare:workers";
import { parseDigest, toHex, webCryptoName, type Digest } from "../oci/digest";
import { RegistryError, toErrorRecord, type ErrorRecord } from "../oci/errors";
import { BlobStore, type BlobDescriptor } from "../registry/blob-store";
import { LinkedBlobStore } from "../registry/linked-blob-store";
import { Paths } from "../registry/paths";
import { MAX_PARTS, readConfig } from "../config";
import { ResumableHash } from "./resumable-hash";

/** Largest body R2 accepts in one put(); bigger monolithic uploads go through parts. */
const MAX_SINGLE_PUT_BYTES = 4_995 * 1024 * 1024;

/** The durable record of one upload, persisted after every part and every request. */
interface SessionState {
  uploadId: string;
  name: string;
  startedAt: number;
  updatedAt: number;
  partSize: number;
  /** Bytes received durably: whole parts plus the staged tail. */
  offset: number;
  /** R2 multipart upload writing Paths.uploadData(uploadId); created with the first whole part. */
  multipartUploadId?: string;
  parts: R2UploadedPart[];
  /** Bytes past the last whole part, staged at Paths.uploadTail(uploadId, parts × partSize). */
  tailSize: number;
  /** SHA-256 state after exactly `offset` bytes. */
  hashState: Uint8Array;
}

export interface SessionStatus {
  uploadId: string;
  name: string;
  offset: number;
  startedAt: number;
}

/** How a request's body claims to fit the upload (from Content-Range / Content-Length). */
export interface ChunkClaim {
  /** Offset the chunk starts at, from Content-Range; must equal the session's offset. */
  start?: number;
  /** Number of bytes the body carries, when the request declares it. */
  length?: number;
}

export type SessionResult<T> = { ok: true; value: T } | { ok: false; error: ErrorRecord };

/**
 * One resumable upload, one Durable Object (named by the upload UUID). It is the
 * upload's lock, its offset, its R2 multipart state and its SHA-256 state, so that
 * chunks of any size, in any number of requests, hash each byte once and land in
 * equal R2 parts with no copy at commit. Bytes stream through this object; memory
 * per request is one part buffer.
 */
export class UploadSession extends DurableObject<Env> {
  /** Set while a request is writing; a second writer is refused. */
  private busy = false;
  /**
   * The part buffer as the last request left it (the staged tail at its start), so a
   * warm object neither reads the tail back from R2 nor allocates a new buffer.
   */
  private partBuffer: { tailKey: string; buffer: Uint8Array } | null = null;

  private get blobs(): BlobStore {
    return new BlobStore(this.env.BLOBS, this.env.META);
  }

  private async load(name: string): Promise<SessionState> {
    const state = await this.ctx.storage.get<SessionState>("session");
    if (!state || state.name !== name) throw new RegistryError("BLOB_UPLOAD_UNKNOWN");
    return state;
  }

  private async save(state: SessionState): Promise<void> {
    state.updatedAt = Date.now();
    await this.ctx.storage.put("session", state);
    await this.ctx.storage.setAlarm(state.updatedAt + readConfig(this.env).uploadTtlSeconds * 1000);
  }

  private async run<T>(work: () => Promise<T>, exclusive = false): Promise<SessionResult<T>> {
    if (exclusive && this.busy) {
      return {
        ok: false,
        error: toErrorRecord(
          new RegistryError("BLOB_UPLOAD_INVALID", "another request is writing to this upload", undefined, {}, 409),
        ),
      };
    }
    if (exclusive) this.busy = true;
    try {
      return { ok: true, value: await work() };
    } catch (error) {
      if (error instanceof RegistryError) return { ok: false, error: toErrorRecord(error) };
      throw error;
    } finally {
      if (exclusive) this.busy = false;
    }
  }

  /** Starts the session (POST /blobs/uploads/). */
  async start(uploadId: string, name: string): Promise<SessionStatus> {
    const config = readConfig(this.env);
    const now = Date.now();
    const state: SessionState = {
      uploadId,
      name,
      startedAt: now,
      updatedAt: now,
      partSize: config.uploadPartSize,
      offset: 0,
      parts: [],
      tailSize: 0,
      hashState: ResumableHash.create("sha256").save(),
    };
    await this.save(state);
    return { uploadId, name, offset: 0, startedAt: now };
  }

  async status(name: string): Promise<SessionResult<SessionStatus>> {
    return this.run(async () => {
      const state = await this.load(name);
      return { uploadId: state.uploadId, name, offset: state.offset, startedAt: state.startedAt };
    });
  }

  /** Appends one chunk (PATCH). */
  async append(
    name: string,
    body: ReadableStream<Uint8Array> | null,
    claim: ChunkClaim,
  ): Promise<SessionResult<SessionStatus>> {
    return this.run(async () => {
      const state = await this.load(name);
      await this.ingest(state, body, claim);
      return { uploadId: state.uploadId, name, offset: state.offset, startedAt: state.startedAt };
    }, true);
  }

  /** Appends an optional last chunk, verifies the digest and publishes the blob (PUT ?digest=). */
  async commit(
    name: string,
    digestText: string,
    body: ReadableStream<Uint8Array> | null,
    claim: ChunkClaim,
  ): Promise<SessionResult<BlobDescriptor>> {
    return this.run(async () => {
      const digest = parseDigest(digestText);
      const state = await this.load(name);
      const wholeBodyFitsOnePut =
        body !== null && state.offset === 0 && claim.length !== undefined && claim.length <= MAX_SINGLE_PUT_BYTES;
      const descriptor = wholeBodyFitsOnePut
        ? await this.commitMonolithic(state, digest, body, claim)
        : await this.commitChunked(state, digest, body, claim);
      const linked = new LinkedBlobStore(this.env.BLOBS, this.env.META, this.blobs, name, "layer");
      await linked.link(digest);
      this.partBuffer = null;
      await this.ctx.storage.deleteAll();
      await this.ctx.storage.deleteAlarm();
      return descriptor;
    }, true);
  }

  /** Cancels the upload (DELETE): everything it wrote is removed now. */
  async cancel(name: string): Promise<SessionResult<null>> {
    return this.run(async () => {
      const state = await this.load(name);
      await this.purge(state);
      return null;
    }, true);
  }

  /** Expiry: a session unused for its TTL is purged. */
  override async alarm(): Promise<void> {
    const state = await this.ctx.storage.get<SessionState>("session");
    if (!state) return;
    const ttl = readConfig(this.env).uploadTtlSeconds * 1000;
    if (this.busy || state.updatedAt + ttl > Date.now()) {
      await this.ctx.storage.setAlarm(Math.max(Date.now() + 1000, state.updatedAt + ttl));
      return;
    }
    await this.purge(state);
  }

  private async purge(state: SessionState): Promise<void> {
    if (state.multipartUploadId) {
      await this.env.BLOBS.resumeMultipartUpload(Paths.uploadData(state.uploadId), state.multipartUploadId).abort();
    }
    if (state.tailSize > 0) await this.env.BLOBS.delete(this.tailKey(state));
    this.partBuffer = null;
    await this.ctx.storage.deleteAll();
    await this.ctx.storage.deleteAlarm();
  }

  private tailKey(state: SessionState): string {
    return Paths.uploadTail(state.uploadId, state.parts.length * state.partSize);
  }

  // ---- the byte path ----

  /**
   * Streams a body into the upload: refills the part buffer from the staged tail,
   * hashes each byte once as it arrives, uploads every full buffer as the next R2
   * part, and stages what is left as the new tail. Progress is durable at part
   * boundaries; if the body breaks, the session keeps its last durable point and
   * the client resumes from the Range a GET reports. If the body turns out not to
   * match its declared length, the whole chunk is refused and nothing changes.
   */
  private async ingest(state: SessionState, body: ReadableStream<Uint8Array> | null, claim: ChunkClaim): Promise<void> {
    if (claim.start !== undefined && claim.start !== state.offset) {
      throw new RegistryError(
        "RANGE_INVALID",
        "chunk does not start at the upload's offset",
        { offset: state.offset, start: claim.start },
        {
          Range: rangeHeader(state.offset),
        },
      );
    }
    if (body === null) {
      if (claim.length) throw new RegistryError("SIZE_INVALID", "declared length but no body");
      return;
    }
    const before = structuredClone(state);
    const partSize = state.partSize;
    let buffer = await this.takePartBuffer(state);
    let filled = state.tailSize;
    const previousTailKey = state.tailSize > 0 ? this.tailKey(state) : null;
    const hash = ResumableHash.restore("sha256", state.hashState);
    let received = 0;

    // One part uploads while the next one fills: two part buffers at most.
    let inFlight: Promise<void> | null = null;
    const flush = async (part: Uint8Array, hashAtBoundary: Uint8Array): Promise<void> => {
      try {
        await this.uploadPart(state, part);
      } catch (error) {
        if (error instanceof RegistryError) throw error;
        throw new RegistryError(
          "UNAVAILABLE",
          "storage failed while writing the upload; retry from the upload's offset",
          {
            cause: String(error),
          },
          { "Retry-After": "1" },
        );
      }
      state.tailSize = 0;
      state.offset = state.parts.length * partSize;
      state.hashState = hashAtBoundary;
      await this.save(state);
    };

    const reader = body.getReader({ mode: "byob" });
    try {
      for (;;) {
        // A BYOB read transfers the buffer it fills (even the final, empty read).
        const { done, value } = await reader.read(new Uint8Array(buffer.buffer, filled, partSize - filled));
        if (value) buffer = new Uint8Array(value.buffer);
        if (done) break;
        hash.update(value);
        filled += value.byteLength;
        received += value.byteLength;
        if (claim.length !== undefined && received > claim.length) break;
        if (filled === partSize) {
          if (inFlight) await inFlight;
          // R2 takes ownership of (detaches) the buffer it uploads: fill a new one.
          inFlight = flush(buffer, hash.save());
          buffer = new Uint8Array(partSize);
          filled = 0;
        }
      }
      if (inFlight) await inFlight;
    } catch (error) {
      // Keep the last durable point: parts that completed stay, the rest is discarded.
      if (inFlight) await inFlight.catch(() => undefined);
      await this.save(state);
      if (previousTailKey && state.parts.length > before.parts.length) await this.env.BLOBS.delete(previousTailKey);
      if (error instanceof RegistryError) throw error;
      throw new RegistryError(
        "BLOB_UPLOAD_INVALID",
        "the request body ended early; GET the upload for its offset and resume",
        { offset: state.offset, cause: String(error) },
      );
    }
    if (claim.length !== undefined && received !== claim.length) {
      // A body that disagrees with its declared length is refused whole. Parts it
      // wrote are overwritten by the next ones (same part numbers); the multipart
      // upload itself is kept so it can still be aborted.
      const multipartUploadId = state.multipartUploadId;
      Object.assign(state, before);
      if (multipartUploadId) state.multipartUploadId = multipartUploadId;
      await this.save(state);
      throw new RegistryError("SIZE_INVALID", "the body's length does not match Content-Length / Content-Range", {
        declared: claim.length,
        received,
      });
    }
    state.tailSize = filled;
    state.offset = state.parts.length * partSize + filled;
    state.hashState = hash.save();
    const tailKey = this.tailKey(state);
    if (filled > 0) await this.env.BLOBS.put(tailKey, buffer.subarray(0, filled));
    // Keep the buffer for the next request unless R2 took ownership of it.
    this.partBuffer = buffer.byteLength === partSize ? { tailKey, buffer } : null;
    await this.save(state);
    if (previousTailKey && (previousTailKey !== tailKey || filled === 0)) await this.env.BLOBS.delete(previousTailKey);
  }

  /** A part-sized buffer holding the staged tail at its start. */
  private async takePartBuffer(state: SessionState): Promise<Uint8Array> {
    const cached = this.partBuffer;
    this.partBuffer = null;
    if (
      cached &&
      cached.buffer.byteLength === state.partSize &&
      (state.tailSize === 0 || cached.tailKey === this.tailKey(state))
    ) {
      return cached.buffer;
    }
    const buffer = new Uint8Array(state.partSize);
    if (state.tailSize === 0) return buffer;
    const object = await this.env.BLOBS.get(this.tailKey(state));
    if (!object || object.size !== state.tailSize) {
      throw new RegistryError("BLOB_UPLOAD_UNKNOWN", "the upload's staged data is missing; restart the upload");
    }
    buffer.set(new Uint8Array(await object.arrayBuffer()));
    return buffer;
  }

  private async multipart(state: SessionState): Promise<R2MultipartUpload> {
    const key = Paths.uploadData(state.uploadId);
    if (state.multipartUploadId) return this.env.BLOBS.resumeMultipartUpload(key, state.multipartUploadId);
    const upload = await this.env.BLOBS.createMultipartUpload(key);
    state.multipartUploadId = upload.uploadId;
    return upload;
  }

  private async uploadPart(state: SessionState, bytes: Uint8Array | ReadableStream): Promise<void> {
    if (state.parts.length >= MAX_PARTS) {
      throw new RegistryError(
        "SIZE_INVALID",
        `blob exceeds the largest upload (${MAX_PARTS} parts of ${state.partSize} bytes)`,
      );
    }
    const upload = await this.multipart(state);
    state.parts.push(await upload.uploadPart(state.parts.length + 1, bytes));
  }

  /**
   * The whole blob in one request of known length (POST ?digest= or a PUT with the
   * body on a fresh session): stream it straight into one R2 object, hashing with the
   * runtime's native digest (several times faster than the WASM one, and no state to
   * keep because nothing continues after this request).
   */
  private async commitMonolithic(
    state: SessionState,
    digest: Digest,
    body: ReadableStream<Uint8Array>,
    claim: ChunkClaim,
  ): Promise<BlobDescriptor> {
    if (claim.start !== undefined && claim.start !== 0) {
      throw new RegistryError("RANGE_INVALID", "chunk does not start at the upload's offset", undefined, {
        Range: rangeHeader(0),
      });
    }
    const length = claim.length ?? 0;
    const key = Paths.uploadData(state.uploadId);
    const digester = new crypto.DigestStream(webCryptoName(digest.algorithm));
    const digestWriter = digester.getWriter();
    let received = 0;
    const hashing = new TransformStream<Uint8Array, Uint8Array>({
      async transform(chunk, controller) {
        received += chunk.byteLength;
        await digestWriter.write(chunk);
        controller.enqueue(chunk);
      },
    });
    const sized = new FixedLengthStream(length);
    const piping = body.pipeThrough(hashing).pipeTo(sized.writable);
    try {
      await Promise.all([this.env.BLOBS.put(key, sized.readable), piping]);
    } catch (error) {
      await this.env.BLOBS.delete(key);
      throw new RegistryError("SIZE_INVALID", "the body ended before its declared length", {
        declared: length,
        received,
        cause: String(error),
      });
    }
    await digestWriter.close();
    const computed = `${digest.algorithm}:${toHex(await digester.digest)}`;
    if (computed !== digest.value) {
      await this.env.BLOBS.delete(key);
      throw new RegistryError("DIGEST_INVALID", undefined, { digest: digest.value, computed });
    }
    return this.blobs.publish(digest, length, key);
  }

  /**
   * Finishes a chunked upload: last chunk, digest check, then publish in place.
   * SHA-256 is tracked while chunks stream, so it is checked before anything is
   * finalised. Other algorithms (sha512) are rare; tracking them on every upload
   * would halve throughput, so they are verified by reading the finished object once,
   * and a mismatch then ends the upload.
   */
  private async commitChunked(
    state: SessionState,
    digest: Digest,
    body: ReadableStream<Uint8Array> | null,
    claim: ChunkClaim,
  ): Promise<BlobDescriptor> {
    await this.ingest(state, body, claim);
    const tracked = digest.algorithm === "sha256";
    if (tracked) {
      const computed = `sha256:${ResumableHash.restore("sha256", state.hashState).digestHex()}`;
      if (computed !== digest.value)
        throw new RegistryError("DIGEST_INVALID", undefined, { digest: digest.value, computed });
      const existing = await this.blobs.stat(digest);
      if (existing) {
        // Same bytes already stored: keep that object, drop ours.
        await this.purge(state);
        return existing;
      }
    }
    const size = state.offset;
    const key = await this.finishObject(state);
    if (!tracked) {
      const computed = await this.digestOfObject(key, size, digest);
      if (computed !== digest.value) {
        await this.env.BLOBS.delete(key);
        await this.purge(state);
        throw new RegistryError("DIGEST_INVALID", undefined, { digest: digest.value, computed });
      }
    }
    return this.blobs.publish(digest, size, key);
  }

  private async digestOfObject(key: string, size: number, digest: Digest): Promise<string> {
    const digester = new crypto.DigestStream(webCryptoName(digest.algorithm));
    const stream = await this.blobs.open({ digest: digest.value, size, key });
    await stream.pipeTo(digester);
    return `${digest.algorithm}:${toHex(await digester.digest)}`;
  }

  /** Makes the upload's bytes one R2 object and returns its key. No byte is copied but the tail. */
  private async finishObject(state: SessionState): Promise<string> {
    if (state.parts.length === 0) {
      // Never reached a whole part: the staged tail (or an empty object) is the blob.
      if (state.tailSize > 0) return this.tailKey(state);
      const key = Paths.uploadData(state.uploadId);
      await this.env.BLOBS.put(key, new Uint8Array(0));
      return key;
    }
    if (state.tailSize > 0) {
      const tailKey = this.tailKey(state);
      const tail = await this.env.BLOBS.get(tailKey);
      if (!tail)
        throw new RegistryError("BLOB_UPLOAD_UNKNOWN", "the upload's staged data is missing; restart the upload");
      await this.uploadPart(state, tail.body);
      await this.save(state);
      await this.env.BLOBS.delete(tailKey);
      state.tailSize = 0;
    }
    const upload = await this.multipart(state);
    await upload.complete(state.parts);
    delete state.multipartUploadId;
    return Paths.uploadData(state.uploadId);
  }
}

/** The Range header value for an upload holding `offset` bytes (`0-0` when empty, as distribution does). */
export function rangeHeader(offset: number): string {
  return `0-${Math.max(0, offset - 1)}`;
}
