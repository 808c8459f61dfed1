import type { Digest } from "../oci/digest";
import { RegistryError } from "../oci/errors";
import { Paths } from "./paths";

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

function isBlobDescriptor(value: unknown): value is BlobDescriptor {
  if (typeof value !== "object" || value === null) return false;
  const record = value as Record<string, unknown>;
  return typeof record.digest === "string" && typeof record.size === "number" && typeof record.key === "string";
}

/**
 * The global content store: every blob stored once, addressed by digest. The R2
 * descriptor record is the truth; KV holds a copy for fast reads at the edge. A KV
 * miss (never written, not yet propagated, or cached as missing) falls back to R2
 * and repairs KV, so a stale KV only costs time, never correctness. Descriptors are
 * immutable while they exist, so a stale KV hit is still a right answer.
 */
export class BlobStore {
  constructor(
    private readonly bucket: R2Bucket,
    private readonly kv: KVNamespace,
  ) {}

  /** The descriptor of a stored blob, or null. */
  async stat(digest: Digest): Promise<BlobDescriptor | null> {
    const cached = await this.kv.get(Paths.kvBlob(digest), "json");
    if (isBlobDescriptor(cached)) return cached;
    const record = await this.bucket.get(Paths.blobDescriptor(digest));
    if (!record) return null;
    const descriptor: unknown = await record.json();
    if (!isBlobDescriptor(descriptor)) return null;
    await this.kv.put(Paths.kvBlob(digest), JSON.stringify(descriptor));
    return descriptor;
  }

  /**
   * Publishes a blob whose bytes are in `key` and whose digest was verified while
   * they streamed in. If the digest is already stored, the existing descriptor wins
   * and the caller's object is deleted: one object per digest.
   */
  async publish(digest: Digest, size: number, key: string): Promise<BlobDescriptor> {
    const descriptor: BlobDescriptor = { digest: digest.value, size, key };
    const written = await this.bucket.put(Paths.blobDescriptor(digest), JSON.stringify(descriptor), {
      onlyIf: new Headers({ "If-None-Match": "*" }),
      httpMetadata: { contentType: "application/json" },
    });
    if (written === null) {
      // Another upload of the same bytes got there first: keep its object, drop ours.
      const existing = await this.stat(digest);
      if (existing && existing.key !== key) await this.bucket.delete(key);
      if (existing) return existing;
      throw new RegistryError("UNAVAILABLE", "blob descriptor vanished while publishing; retry", undefined, {
        "Retry-After": "1",
      });
    }
    await this.kv.put(Paths.kvBlob(digest), JSON.stringify(descriptor));
    return descriptor;
  }

  /** Stores small bytes already in memory (manifests) as a blob. */
  async putBytes(digest: Digest, bytes: Uint8Array, key: string): Promise<BlobDescriptor> {
    const existing = await this.stat(digest);
    if (existing) return existing;
    await this.bucket.put(key, bytes);
    return this.publish(digest, bytes.byteLength, key);
  }

  /** Reads a whole blob that is known to be small (manifests), or null if its object is gone. */
  async readBytes(descriptor: BlobDescriptor): Promise<Uint8Array<ArrayBuffer> | null> {
    const object = await this.bucket.get(descriptor.key);
    if (!object) return null;
    return new Uint8Array(await object.arrayBuffer());
  }

  /**
   * Streams a blob's bytes (or one range of them) from R2 in bounded slices.
   * The first slice is fetched before returning, so a missing object is reported
   * as BLOB_UNKNOWN instead of failing the response half-way.
   */
  async open(descriptor: BlobDescriptor, range?: ByteRange): Promise<ReadableStream<Uint8Array>> {
    const start = range?.start ?? 0;
    const end = range?.end ?? descriptor.size - 1;
    if (end < start) return new ReadableStream({ start: (controller) => controller.close() });
    const bucket = this.bucket;
    const readSlice = async (from: number): Promise<ReadableStream<Uint8Array>> => {
      const length = Math.min(READ_SLICE_BYTES, end - from + 1);
      const object = await bucket.get(descriptor.key, { range: { offset: from, length } });
      if (!object)
        throw new RegistryError("BLOB_UNKNOWN", "blob content missing from storage", { digest: descriptor.digest });
      return object.body;
    };
    let next = start;
    let current: ReadableStreamDefaultReader<Uint8Array> | null = (await readSlice(next)).getReader();
    next = Math.min(end + 1, next + READ_SLICE_BYTES);
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        while (current) {
          const { done, value } = await current.read();
          if (!done) {
            controller.enqueue(value);
            return;
          }
          current = next <= end ? (await readSlice(next)).getReader() : null;
          next = Math.min(end + 1, next + READ_SLICE_BYTES);
        }
        controller.close();
      },
      async cancel(reason) {
        await current?.cancel(reason);
      },
    });
  }
}
