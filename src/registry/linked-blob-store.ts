import type { Digest } from "../oci/digest";
import { RegistryError } from "../oci/errors";
import { isBlobDescriptor, type BlobDescriptor, type BlobStore } from "./blob-store";
import { Catalog } from "./catalog";
import { Paths } from "./paths";
import type { Storage } from "./storage";

/** The two kinds of link a repository holds, as in docker/distribution. */
export type LinkKind = "layer" | "revision";

/** What a link records. Revisions carry the media type the manifest was pushed with. */
export interface LinkRecord {
  mediaType?: string;
}

/**
 * A link's KV copy: the link record and the blob's descriptor (immutable while the blob
 * exists, and its object is checked when read: BlobStore), so a pull needs one KV read.
 */
export interface LinkCopy {
  link: LinkRecord;
  descriptor: BlobDescriptor;
  /** The blob's bytes (base64), for small ones whose bytes were at hand when linked (manifests). */
  content?: string;
}

/** Largest blob whose bytes ride along in its link's KV copy (and in a tag record). */
export const EMBEDDED_CONTENT_MAX_BYTES = 64 * 1024;

export function encodeContent(bytes: Uint8Array): string {
  let binary = "";
  for (let index = 0; index < bytes.byteLength; index += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(index, index + 0x8000));
  }
  return btoa(binary);
}

export function decodeContent(text: string): Uint8Array<ArrayBuffer> | null {
  let binary: string;
  try {
    binary = atob(text);
  } catch {
    return null;
  }
  // A plain loop: `Uint8Array.from(binary, mapper)` iterates the string and calls the
  // mapper per byte, which made this the costliest step of a manifest GET.
  const bytes = new Uint8Array(binary.length);
  for (let index = 0; index < binary.length; index++) bytes[index] = binary.charCodeAt(index);
  return bytes;
}

/** A KV value as a link copy of `digest`, or null when it is not one. */
export function linkCopyOf(value: unknown, digest: Digest): LinkCopy | null {
  if (typeof value !== "object" || value === null) return null;
  const { link, descriptor, content } = value as Partial<LinkCopy>;
  if (typeof link !== "object" || link === null || !isBlobDescriptor(descriptor)) return null;
  if (descriptor.digest !== digest.value) return null;
  return typeof content === "string" ? { link, descriptor, content } : { link, descriptor };
}

/**
 * KV copies of links expire after this long, and the next pull that misses writes them
 * again: a backstop behind the delete order below, so that no KV copy can outlive its
 * link for longer than this whatever happened to a KV call.
 */
const KV_LINK_EXPIRATION_SECONDS = 30 * 24 * 60 * 60;
/** KV's smallest `cacheTtl`. */
const KV_MIN_CACHE_TTL_SECONDS = 60;

/**
 * A repository's view of the global BlobStore: a repository sees a blob only
 * through its own link. Linking never copies bytes, and unlinking never touches
 * the blob or another repository's link to it.
 *
 * Links live in R2 (the truth) and in KV (the edge index; each copy also carries the
 * blob's descriptor). Which one is read depends on who asks:
 * - **pull paths** (`stat`: GET/HEAD of a blob, of a manifest by digest) read KV first,
 *   with `cacheTtl` = the edge link TTL, and fall back to R2 on a miss, so a link pushed
 *   at another location a moment ago is never a false 404 (a KV miss may be cached, or
 *   not yet propagated). A link deleted elsewhere may stay visible here for the TTL.
 *   With an edge TTL of 0 they read R2, as write paths do.
 * - **write paths** (`readLink`: mount checks, manifest validation, deletes) read R2.
 *
 * Write order, so that no KV copy outlives its link: linking writes R2, then KV (best
 * effort: a missing copy only costs a pull an R2 read); unlinking deletes the KV copy
 * first (a failure fails the request, with the link still in place), then R2, then the
 * KV copy once more; a pull that misses KV and finds the link in R2 writes the copy and
 * then reads R2 again, deleting the copy if the link went meanwhile. Whichever of a
 * concurrent pull and delete writes KV last, the copy does not survive. The copies also
 * expire (KV_LINK_EXPIRATION_SECONDS).
 */
export class LinkedBlobStore {
  private readonly bucket: R2Bucket;
  private readonly kv: KVNamespace;

  constructor(
    storage: Storage,
    private readonly blobs: BlobStore,
    readonly name: string,
    private readonly kind: LinkKind,
    /** The edge link TTL (RegistryConfig.edgeLinkTtlSeconds); 0: pull paths read R2. */
    private readonly edgeTtlSeconds = 0,
  ) {
    this.bucket = storage.bucket;
    this.kv = storage.kv;
  }

  private key(digest: Digest): string {
    return this.kind === "layer" ? Paths.layerLink(this.name, digest) : Paths.manifestRevision(this.name, digest);
  }

  private kvKey(digest: Digest): string {
    return this.kind === "layer" ? Paths.kvLayerLink(this.name, digest) : Paths.kvManifestRevision(this.name, digest);
  }

  /** The link record in R2 (the truth), or null if this repository does not link the digest. */
  async readLink(digest: Digest): Promise<LinkRecord | null> {
    const object = await this.bucket.get(this.key(digest));
    if (!object) return null;
    const text = await object.text();
    return text ? (JSON.parse(text) as LinkRecord) : {};
  }

  /**
   * The descriptor of a blob this repository links, as a pull sees it: from the link's KV
   * copy, which carries the blob's descriptor (one KV read), else from R2 (the link) and
   * the descriptor store, after which the copy is written again (see the class comment).
   * Throws `unknownCode` when the repository does not link the blob.
   */
  async stat(digest: Digest, options: { unknownCode?: "BLOB_UNKNOWN" | "MANIFEST_UNKNOWN" } = {}): Promise<LinkCopy> {
    const unknown = () => new RegistryError(options.unknownCode ?? "BLOB_UNKNOWN", undefined, { digest: digest.value });
    if (this.edgeTtlSeconds > 0) {
      const cacheTtl = Math.max(KV_MIN_CACHE_TTL_SECONDS, this.edgeTtlSeconds);
      const cached: unknown = await this.kv.get(this.kvKey(digest), { type: "json", cacheTtl }).catch(() => null);
      const copy = linkCopyOf(cached, digest);
      if (copy) return copy;
    }
    const [link, descriptor] = await Promise.all([this.readLink(digest), this.blobs.stat(digest)]);
    if (!link || !descriptor) throw unknown();
    if (this.edgeTtlSeconds > 0) await this.repairCopy(digest, { link, descriptor });
    return { descriptor, link };
  }

  /**
   * Writes the KV copy a pull missed, then makes sure the link did not go meanwhile
   * (checkCopy). KV caches a miss at a location for `cacheTtl`, so without care every
   * pull there in that window would write the copy again: a key is repaired at most once
   * per isolate per TTL.
   */
  private async repairCopy(digest: Digest, copy: LinkCopy): Promise<void> {
    const key = this.kvKey(digest);
    const now = Date.now();
    if ((recentRepairs.get(key) ?? 0) > now) return;
    if (recentRepairs.size >= RECENT_REPAIRS_MAX) recentRepairs.clear();
    recentRepairs.set(key, now + Math.max(KV_MIN_CACHE_TTL_SECONDS, this.edgeTtlSeconds) * 1000);
    if (await this.writeCopy(digest, copy)) await this.checkCopy(digest);
  }

  /**
   * After writing a KV copy: if the link is gone from R2 (a delete ran meanwhile), or
   * whether it is cannot be told, the copy goes too. Whichever of the two writes KV last,
   * no copy outlives its link.
   */
  private async checkCopy(digest: Digest): Promise<void> {
    const still = await this.bucket.head(this.key(digest)).catch(() => "unknown" as const);
    if (still === null || still === "unknown") await this.kv.delete(this.kvKey(digest)).catch(() => undefined);
  }

  private async writeCopy(digest: Digest, copy: LinkCopy): Promise<boolean> {
    return this.kv.put(this.kvKey(digest), JSON.stringify(copy), { expirationTtl: KV_LINK_EXPIRATION_SECONDS }).then(
      () => true,
      () => false,
    );
  }

  /**
   * Links a stored blob (its `descriptor`) into this repository. The catalog entry
   * first, so a linked repository is always listed (a listed one with nothing linked is
   * harmless, and is what `npm run verify` reports and repairs); then the blob is checked
   * live (BlobStore.ensureLive: revived if the collector condemned it); the KV copy last,
   * checked against a delete that may have run meanwhile.
   */
  async link(digest: Digest, descriptor: BlobDescriptor, record: LinkRecord = {}, content?: Uint8Array): Promise<void> {
    await new Catalog(this.bucket).add(this.name);
    await this.bucket.put(this.key(digest), JSON.stringify(record));
    // After the link is written: a collector that condemned the blob before it could see
    // the link must not delete it (docs/architecture.md, "Garbage collection").
    await this.blobs.ensureLive(digest);
    const copy: LinkCopy = { link: record, descriptor };
    if (content && content.byteLength <= EMBEDDED_CONTENT_MAX_BYTES) copy.content = encodeContent(content);
    if (await this.writeCopy(digest, copy)) await this.checkCopy(digest);
  }

  /**
   * Removes this repository's link; the blob and other repositories' links stay. True when
   * there was one to remove, in R2 or (left behind by a race or a failure) only at the
   * edge: a KV copy alone is still a link as pulls see it, and deleting it is what the
   * client asked for.
   */
  async unlink(digest: Digest): Promise<boolean> {
    const exists = await this.bucket.head(this.key(digest));
    const copy = exists ? null : await this.kv.get(this.kvKey(digest));
    if (!exists && copy === null) return false;
    await this.kv.delete(this.kvKey(digest));
    if (exists) await this.bucket.delete(this.key(digest));
    await this.kv.delete(this.kvKey(digest));
    return true;
  }

  /** When the link was last written (R2 `uploaded`, ms), or null when there is none. One head. */
  async writtenAt(digest: Digest): Promise<number | null> {
    return (await this.bucket.head(this.key(digest)))?.uploaded.getTime() ?? null;
  }

  /**
   * The garbage collector's removal of a link no kept manifest uses, once it has found it
   * unchanged (CollectorStore); `present`: the link is still in R2 (a retried removal may
   * find it gone). R2 first, then the KV copy: one KV write, not unlink's two (KV writes
   * are the scarce quota: 1 000 a day on Free). A pull that writes the copy again after
   * this finds the link gone and deletes it (checkCopy); a step failing in between is
   * retried and deletes the copy then (the link counts as removed).
   */
  async removeUnused(digest: Digest, present: boolean): Promise<void> {
    if (present) await this.bucket.delete(this.key(digest));
    await this.kv.delete(this.kvKey(digest));
  }
}

/** KV keys of link copies this isolate repaired lately, until when (see repairCopy). */
const recentRepairs = new Map<string, number>();
const RECENT_REPAIRS_MAX = 10_000;
