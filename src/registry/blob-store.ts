import { parseDigest, type Digest } from "../oci/digest";
import { RegistryError, unavailable } from "../oci/errors";
import { currentMeter, type Meter } from "./meter";
import { Paths } from "./paths";
import type { Storage } from "./storage";
import { emptyChunks, hashOfStream, pump, READ_CHUNK_BYTES, type ChunkSource } from "./streams";

/** What the registry knows of a stored blob. */
export interface BlobDescriptor {
  digest: string;
  size: number;
  /** The R2 object holding the bytes (written by one upload; see Paths.uploadData). */
  key: string;
}

/** A byte range, inclusive of both ends, as HTTP Range counts. */
export interface ByteRange {
  start: number;
  end: number;
}

/**
 * Size of each ranged R2 read when streaming a blob out. Reading a large multipart
 * object in one get() made local workerd hold the whole object in memory; bounded
 * ranged reads keep every request's memory flat, and cost one extra subrequest per
 * 16 MiB in production.
 */
const READ_SLICE_BYTES = 16 * 1024 * 1024;

/**
 * What a descriptor record carries in R2 custom metadata: the object it names (so the
 * garbage collector learns it from a listing, without reading every record), and the
 * collector's mark (docs/architecture.md, "Garbage collection"): `condemned` (no link
 * was found; any writer that links the blob revives it) or `tombstone` (being deleted:
 * absent to everyone; a publish replaces it).
 */
export interface DescriptorMetadata {
  key?: string;
  size?: string;
  gc?: "condemned" | "tombstone";
  /** When it was condemned (ms since the epoch). */
  since?: string;
}

export function descriptorMetadata(descriptor: BlobDescriptor): Record<string, string> {
  return { key: descriptor.key, size: String(descriptor.size) };
}

export function isBlobDescriptor(value: unknown): value is BlobDescriptor {
  if (typeof value !== "object" || value === null) return false;
  const record = value as Record<string, unknown>;
  return typeof record.digest === "string" && typeof record.size === "number" && typeof record.key === "string";
}

/** A range of a blob on its way out of R2 (BlobStore.slices). */
interface Slices extends ChunkSource {
  length: number;
  /** The whole range in one R2 body (or nothing at all): passed on as it is. */
  only?: ReadableStream<Uint8Array>;
  /** Otherwise the bytes, in chunks of at least READ_CHUNK_BYTES. */
  chunks(): AsyncGenerator<Uint8Array<ArrayBuffer>>;
}

/**
 * The global content store: every blob stored once, addressed by digest. The R2
 * descriptor record is the truth; KV holds a copy for fast reads at the edge, and is
 * only ever a cache: a KV miss (never written, not yet propagated, or cached as
 * missing), a KV failure, or a KV value whose object is gone all fall back to R2 (and
 * repair KV, best effort), so a stale or failing KV costs time, never correctness.
 * Descriptors are immutable while they exist; the one way a cached one can be wrong is
 * a blob removed and pushed again (its object key changes), which `open` and
 * `readBytes` detect by the object being missing.
 */
export class BlobStore {
  private readonly bucket: R2Bucket;
  private readonly kv: KVNamespace;
  /** The meter of the request the reads are for (its slices are counted when a body is set up). */
  private readonly meter: Meter | undefined;

  constructor(storage: Storage) {
    this.bucket = storage.bucket;
    this.kv = storage.kv;
    this.meter = storage.meter;
  }

  /**
   * The descriptor of a stored blob, or null. `strong` (write paths) reads R2 only and
   * leaves KV alone: a manifest push checks every layer it lists, and a KV write per
   * layer would cost more than the copy is worth (a pull's KV miss writes it).
   */
  async stat(digest: Digest, options: { strong?: boolean } = {}): Promise<BlobDescriptor | null> {
    if (!options.strong) {
      const cached: unknown = await this.kv.get(Paths.kvBlob(digest), "json").catch(() => null);
      if (isBlobDescriptor(cached) && cached.digest === digest.value) return cached;
    }
    const record = await this.bucket.get(Paths.blobDescriptor(digest));
    if (!record) return null;
    const parsed: unknown = await record.json();
    if (!isBlobDescriptor(parsed)) return null;
    // Only the fields: a record the collector condemned carries its mark in the body too.
    const descriptor: BlobDescriptor = { digest: parsed.digest, size: parsed.size, key: parsed.key };
    if (!options.strong) await this.cache(digest, descriptor);
    return descriptor;
  }

  /**
   * Writes the KV copy. Best effort: KV takes about one write per second per key, and
   * a cache that could not be written only costs the next reader an R2 read.
   */
  private async cache(digest: Digest, descriptor: BlobDescriptor): Promise<void> {
    await this.kv.put(Paths.kvBlob(digest), JSON.stringify(descriptor)).catch(() => undefined);
  }

  /** Whether a descriptor's object is there, of its size. */
  async hasBytes(descriptor: BlobDescriptor): Promise<boolean> {
    return (await this.bucket.head(descriptor.key))?.size === descriptor.size;
  }

  /**
   * Publishes a blob whose bytes are in `key` and whose digest was verified while
   * they streamed in. If the digest is already stored, the existing descriptor wins
   * and the caller's object is deleted: one object per digest. An existing descriptor
   * whose object is gone (or of another size) is replaced, conditionally on being the
   * record just read, so a race between two repairs cannot lose either.
   */
  async publish(digest: Digest, size: number, key: string): Promise<BlobDescriptor> {
    const descriptor: BlobDescriptor = { digest: digest.value, size, key };
    const body = JSON.stringify(descriptor);
    const options = {
      httpMetadata: { contentType: "application/json" },
      customMetadata: descriptorMetadata(descriptor),
    };
    const recordKey = Paths.blobDescriptor(digest);
    for (let attempt = 0; attempt < 3; attempt++) {
      const created = await this.bucket.put(recordKey, body, {
        ...options,
        onlyIf: new Headers({ "If-None-Match": "*" }),
      });
      if (created !== null) {
        await this.cache(digest, descriptor);
        return descriptor;
      }
      const record = await this.bucket.get(recordKey);
      if (!record) continue; // deleted meanwhile: try creating again
      if (record.customMetadata?.gc === "tombstone" && record.customMetadata.key === key) {
        // The collector is deleting (or deleted) these very bytes: they cannot be published.
        throw new RegistryError(
          "BLOB_UPLOAD_INVALID",
          "the stored copy of this blob was garbage-collected; upload again",
          {
            digest: digest.value,
          },
        );
      }
      const parsed: unknown = await record.json();
      const existing = isBlobDescriptor(parsed) ? { digest: parsed.digest, size: parsed.size, key: parsed.key } : null;
      if (existing && existing.key === key) return existing;
      if (existing && (await this.hasBytes(existing))) {
        // Another upload of the same bytes got there first: keep its object, drop ours.
        await this.bucket.delete(key);
        await this.cache(digest, existing);
        return existing;
      }
      // Replacing (a tombstone, or a descriptor naming nothing) only with bytes that are there:
      // a retried commit whose own object was dropped as a duplicate must not publish it.
      if (!(await this.hasBytes(descriptor))) {
        throw new RegistryError("BLOB_UPLOAD_INVALID", "this upload's bytes are gone; upload again", {
          digest: digest.value,
        });
      }
      const replaced = await this.bucket.put(recordKey, body, { ...options, onlyIf: { etagMatches: record.etag } });
      if (replaced !== null) {
        await this.cache(digest, descriptor);
        return descriptor;
      }
    }
    throw unavailable("the blob's descriptor kept changing while publishing; retry");
  }

  /**
   * The check every writer makes after linking a blob (LinkedBlobStore.link), its half
   * of the garbage collector's protocol (docs/architecture.md, "Garbage collection"): a
   * descriptor the collector condemned is revived (rewritten without the mark,
   * conditionally, so exactly one of this and the collector's tombstone wins); one that is
   * gone or tombstoned fails the request with a retryable error, whose retry uploads the
   * blob again. One R2 head, and a get and a put only for a condemned blob.
   */
  async ensureLive(digest: Digest): Promise<void> {
    const recordKey = Paths.blobDescriptor(digest);
    for (let attempt = 0; attempt < 3; attempt++) {
      const head = await this.bucket.head(recordKey);
      const mark = head?.customMetadata?.gc;
      if (head && mark === undefined) return;
      if (!head || mark === "tombstone") break;
      const record = await this.bucket.get(recordKey, { onlyIf: { etagMatches: head.etag } });
      if (!record || !("body" in record)) continue;
      const existing: unknown = await record.json();
      if (!isBlobDescriptor(existing)) break;
      // The plain descriptor, without the mark (whose body differs, so its etag does).
      const plain: BlobDescriptor = { digest: existing.digest, size: existing.size, key: existing.key };
      const revived = await this.bucket.put(recordKey, JSON.stringify(plain), {
        httpMetadata: { contentType: "application/json" },
        customMetadata: descriptorMetadata(plain),
        onlyIf: { etagMatches: head.etag },
      });
      if (revived !== null) return;
    }
    throw unavailable("the blob was being garbage-collected; upload it again", { digest: digest.value });
  }

  /**
   * The garbage collector's run marker (Paths.gcActive): whether a run may be removing
   * links, and the marker's etag (it changes with every run's start and end). One R2 head.
   */
  async collectorMarker(): Promise<{ active: boolean; etag: string | null }> {
    const head = await this.bucket.head(Paths.gcActive);
    // Anything but an explicit idle counts as active (a marker written without a state, by
    // an earlier version, meant a run in progress).
    return { active: head !== null && head.customMetadata?.state !== "idle", etag: head?.etag ?? null };
  }

  /** Stores small bytes already in memory (manifests) as a blob. */
  async putBytes(digest: Digest, bytes: Uint8Array, key: string): Promise<BlobDescriptor> {
    const existing = await this.stat(digest, { strong: true });
    if (existing && (await this.hasBytes(existing))) return existing;
    await this.bucket.put(key, bytes);
    return this.publish(digest, bytes.byteLength, key);
  }

  /** Reads a whole blob that is known to be small (manifests), or null if its object is gone. */
  async readBytes(descriptor: BlobDescriptor): Promise<Uint8Array<ArrayBuffer> | null> {
    const object = await this.bucket.get(descriptor.key);
    if (object) return new Uint8Array(await object.arrayBuffer());
    const current = await this.current(descriptor);
    return current ? this.readBytes(current) : null;
  }

  /**
   * The R2 descriptor when a descriptor's object is missing and R2 names another one
   * (the cached descriptor was stale), else null.
   */
  private async current(descriptor: BlobDescriptor): Promise<BlobDescriptor | null> {
    const digest = parseDigest(descriptor.digest);
    const fresh = await this.stat(digest, { strong: true });
    if (!fresh || fresh.key === descriptor.key) return null;
    // The KV copy named an object that is gone: correct it while here.
    await this.cache(digest, fresh);
    return fresh;
  }

  /**
   * The descriptor whose object is there now, for a caller that hands the object's key
   * out (a presigned redirect): `descriptor` when its object exists, the current one from
   * R2 when a stale copy named a gone object, else BLOB_UNKNOWN. One R2 head.
   */
  async withObject(descriptor: BlobDescriptor): Promise<BlobDescriptor> {
    if (await this.hasBytes(descriptor)) return descriptor;
    const current = await this.current(descriptor);
    if (current && (await this.hasBytes(current))) return current;
    throw new RegistryError("BLOB_UNKNOWN", "blob content missing from storage", { digest: descriptor.digest });
  }

  /**
   * A blob's bytes (or one range of them), read from R2 in bounded slices, as a stream
   * of known length (so the answer carries Content-Length). The first slice is fetched
   * before returning, so a missing object is reported as BLOB_UNKNOWN instead of failing
   * the response half-way.
   *
   * A range within one slice is R2's own body, passed on natively. Longer ones are read
   * slice by slice with a BYOB reader in chunks of at least 256 KiB and written into a
   * FixedLengthStream: R2 bodies arrive in 4 KiB chunks locally, and moving them one by
   * one through JavaScript cost more than the reads (a 1 GiB pull took 31.7 s). Piping
   * the slices natively into the FixedLengthStream was as fast, but under load 1 in ~20
   * pulls of 1 GiB stalled with workerd spinning in the internal pipe, or ended a few KiB
   * short; chunks written by JavaScript have not (bench/pull-stress.mjs).
   */
  async open(descriptor: BlobDescriptor, range?: ByteRange): Promise<ReadableStream<Uint8Array>> {
    const slices = await this.slices(descriptor, range);
    if (slices.only) return slices.only;
    const { readable, writable } = new FixedLengthStream(slices.length);
    void pump(slices, [writable.getWriter()]);
    return readable;
  }

  /**
   * The whole blob as two streams of known length, for the client and for the edge cache,
   * read from R2 once, and `verified`: whether the cache's copy got every byte and the
   * bytes hash to the blob's digest (the caller drops the cache entry otherwise: a copy
   * cut short by a client that went away, or bytes that do not match, must never be
   * served from the cache under that digest). The two streams advance together (each
   * chunk is written to both before the next is read), so memory stays at a chunk or two
   * however far apart the two readers' speeds are; the client's stream failing fails
   * both, the cache's only itself. A single slice is teed natively (its lag is bounded
   * by the slice) and hashed from a third native branch.
   */
  async openTwice(descriptor: BlobDescriptor): Promise<CachedCopy> {
    const slices = await this.slices(descriptor);
    const digest = parseDigest(descriptor.digest);
    if (slices.only) {
      const [body, rest] = slices.only.tee();
      const [copy, hashed] = rest.tee();
      const verified = hashOfStream(hashed, digest).then((computed) => computed === descriptor.digest);
      return { body, copy, verified };
    }
    const client = new FixedLengthStream(slices.length);
    const copy = new FixedLengthStream(slices.length);
    const verified = pump(slices, [client.writable.getWriter(), copy.writable.getWriter()], digest);
    return { body: client.readable, copy: copy.readable, verified };
  }

  /** Opens the slices of a range, the first one fetched (see open). */
  private async slices(descriptor: BlobDescriptor, range?: ByteRange): Promise<Slices> {
    const start = range?.start ?? 0;
    const end = range?.end ?? descriptor.size - 1;
    const length = Math.max(0, end - start + 1);
    if (length === 0) {
      const { readable, writable } = new FixedLengthStream(0);
      void writable.close();
      return { length, only: readable, chunks: emptyChunks, cancel: async () => undefined };
    }
    const sliceLength = (from: number) => Math.min(READ_SLICE_BYTES, end - from + 1);
    const readSlice = async (from: number): Promise<ReadableStream<Uint8Array>> => {
      const object = await this.bucket.get(descriptor.key, { range: { offset: from, length: sliceLength(from) } });
      if (!object)
        throw new RegistryError("BLOB_UNKNOWN", "blob content missing from storage", { digest: descriptor.digest });
      return object.body;
    };
    let first: ReadableStream<Uint8Array>;
    try {
      first = await readSlice(start);
    } catch (error) {
      const missing = error instanceof RegistryError && error.code === "BLOB_UNKNOWN";
      const current = missing ? await this.current(descriptor) : null;
      if (!current) throw error;
      return this.slices(current, range);
    }
    if (length <= READ_SLICE_BYTES) {
      return { length, only: first, chunks: emptyChunks, cancel: (reason) => first.cancel(reason) };
    }
    // The slices the body will read after the first, counted now: the answer's
    // Server-Timing goes out before them (registry/meter.ts).
    (this.meter ?? currentMeter())?.record("r2", "get", 0, Math.ceil(length / READ_SLICE_BYTES) - 1);
    let reader = first.getReader({ mode: "byob" });
    async function* chunks(): AsyncGenerator<Uint8Array<ArrayBuffer>> {
      for (let sliceStart = start; sliceStart <= end; sliceStart += READ_SLICE_BYTES) {
        if (sliceStart !== start) reader = (await readSlice(sliceStart)).getReader({ mode: "byob" });
        let received = 0;
        for (;;) {
          const { done, value } = await reader.readAtLeast(READ_CHUNK_BYTES, new Uint8Array(READ_CHUNK_BYTES));
          // The last read of a slice may bring its final bytes and the end together.
          if (value !== undefined && value.byteLength > 0) {
            received += value.byteLength;
            yield value;
          }
          if (done) break;
        }
        // A slice that ends early must not pass for the whole blob.
        if (received !== sliceLength(sliceStart)) {
          throw new Error(`blob ${descriptor.digest}: a slice ended ${sliceLength(sliceStart) - received} bytes short`);
        }
      }
    }
    return { length, chunks, cancel: (reason) => reader.cancel(reason) };
  }
}

/** Two streams of one blob for the client and the edge cache (BlobStore.openTwice). */
export interface CachedCopy {
  body: ReadableStream<Uint8Array>;
  copy: ReadableStream<Uint8Array>;
  /** Resolves true once the copy has every byte and they hash to the digest; false otherwise. */
  verified: Promise<boolean>;
}
