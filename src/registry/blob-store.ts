import { parseDigest, type Digest } from "../oci/digest";
import { RegistryError, unavailable } from "../oci/errors";
import { Paths } from "./paths";
import type { Storage } from "./storage";

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
/** Smallest chunk a blob read passes on (see BlobStore.open). */
const READ_CHUNK_BYTES = 256 * 1024;

function isBlobDescriptor(value: unknown): value is BlobDescriptor {
  if (typeof value !== "object" || value === null) return false;
  const record = value as Record<string, unknown>;
  return typeof record.digest === "string" && typeof record.size === "number" && typeof record.key === "string";
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

  constructor(storage: Storage) {
    this.bucket = storage.bucket;
    this.kv = storage.kv;
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
    const descriptor: unknown = await record.json();
    if (!isBlobDescriptor(descriptor)) return null;
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
    const options = { httpMetadata: { contentType: "application/json" } };
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
      const existing: unknown = await record.json();
      if (isBlobDescriptor(existing) && existing.key === key) return existing;
      if (isBlobDescriptor(existing) && (await this.hasBytes(existing))) {
        // Another upload of the same bytes got there first: keep its object, drop ours.
        await this.bucket.delete(key);
        await this.cache(digest, existing);
        return existing;
      }
      const replaced = await this.bucket.put(recordKey, body, { ...options, onlyIf: { etagMatches: record.etag } });
      if (replaced !== null) {
        await this.cache(digest, descriptor);
        return descriptor;
      }
    }
    throw unavailable("the blob's descriptor kept changing while publishing; retry");
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
    const fresh = await this.stat(parseDigest(descriptor.digest), { strong: true });
    return fresh && fresh.key !== descriptor.key ? fresh : null;
  }

  /**
   * Streams a blob's bytes (or one range of them) from R2 in bounded slices.
   * The first slice is fetched before returning, so a missing object is reported
   * as BLOB_UNKNOWN instead of failing the response half-way.
   *
   * Each slice is read with a BYOB reader in chunks of at least 256 KiB and passed on
   * by a JavaScript stream: R2 bodies arrive in 4 KiB chunks locally, and moving them one
   * by one through JavaScript cost more than the reads (a 1 GiB pull took 31.7 s; 256 KiB
   * chunks make the JavaScript per chunk negligible). Piping the slices natively into a
   * FixedLengthStream was as fast, but under load 1 in ~20 pulls of 1 GiB stalled with
   * workerd spinning in the internal pipe, or ended a few KiB short; this form has not.
   */
  async open(descriptor: BlobDescriptor, range?: ByteRange): Promise<ReadableStream<Uint8Array>> {
    const start = range?.start ?? 0;
    const end = range?.end ?? descriptor.size - 1;
    if (end < start) return new ReadableStream({ start: (controller) => controller.close() });
    const readSlice = async (from: number): Promise<ReadableStream<Uint8Array>> => {
      const object = await this.bucket.get(descriptor.key, {
        range: { offset: from, length: Math.min(READ_SLICE_BYTES, end - from + 1) },
      });
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
      return this.open(current, range);
    }
    if (end - start + 1 <= READ_SLICE_BYTES) return first;
    let reader = first.getReader({ mode: "byob" });
    let sliceStart = start;
    let received = 0;
    const sliceLength = (from: number) => Math.min(READ_SLICE_BYTES, end - from + 1);
    return new ReadableStream<Uint8Array>(
      {
        async pull(controller) {
          for (;;) {
            const { done, value } = await reader.readAtLeast(READ_CHUNK_BYTES, new Uint8Array(READ_CHUNK_BYTES));
            // The last read of a slice may bring its final bytes and the end together.
            const passed = value !== undefined && value.byteLength > 0;
            if (passed) {
              received += value.byteLength;
              controller.enqueue(value);
            }
            if (!done) return;
            // A slice that ends early must not pass for the whole blob.
            if (received !== sliceLength(sliceStart)) {
              controller.error(
                new Error(`blob ${descriptor.digest}: a slice ended ${sliceLength(sliceStart) - received} bytes short`),
              );
              return;
            }
            sliceStart += READ_SLICE_BYTES;
            received = 0;
            if (sliceStart > end) {
              controller.close();
              return;
            }
            reader = (await readSlice(sliceStart)).getReader({ mode: "byob" });
            if (passed) return;
          }
        },
        async cancel(reason) {
          await reader.cancel(reason);
        },
      },
      { highWaterMark: 0 },
    );
  }
}
