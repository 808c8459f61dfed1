import type { Digest } from "../oci/digest";
import { RegistryError } from "../oci/errors";
import type { BlobDescriptor, BlobStore } from "./blob-store";
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
 * Links live in R2 (the truth) and in KV (the edge index). Which one is read depends on
 * who asks:
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

  /** The link as a pull sees it: the KV copy, else R2 (see the class comment). */
  async readLinkAtEdge(digest: Digest): Promise<LinkRecord | null> {
    if (this.edgeTtlSeconds === 0) return this.readLink(digest);
    const cacheTtl = Math.max(KV_MIN_CACHE_TTL_SECONDS, this.edgeTtlSeconds);
    const cached: unknown = await this.kv.get(this.kvKey(digest), { type: "json", cacheTtl }).catch(() => null);
    if (typeof cached === "object" && cached !== null) return cached as LinkRecord;
    const link = await this.readLink(digest);
    if (link) await this.repairCopy(digest, link);
    return link;
  }

  /** Writes the KV copy a pull missed, then makes sure the link did not go meanwhile. */
  private async repairCopy(digest: Digest, link: LinkRecord): Promise<void> {
    const written = await this.writeCopy(digest, link);
    if (!written) return;
    const still = await this.bucket.head(this.key(digest)).catch(() => undefined);
    if (still === null) await this.kv.delete(this.kvKey(digest)).catch(() => undefined);
  }

  private async writeCopy(digest: Digest, link: LinkRecord): Promise<boolean> {
    return this.kv.put(this.kvKey(digest), JSON.stringify(link), { expirationTtl: KV_LINK_EXPIRATION_SECONDS }).then(
      () => true,
      () => false,
    );
  }

  /** The descriptor of a blob this repository links, for a pull; throws `unknownCode` otherwise. */
  async stat(
    digest: Digest,
    options: { unknownCode?: "BLOB_UNKNOWN" | "MANIFEST_UNKNOWN" } = {},
  ): Promise<{ descriptor: BlobDescriptor; link: LinkRecord }> {
    const unknownCode = options.unknownCode ?? "BLOB_UNKNOWN";
    const [link, descriptor] = await Promise.all([this.readLinkAtEdge(digest), this.blobs.stat(digest)]);
    if (!link || !descriptor) throw new RegistryError(unknownCode, undefined, { digest: digest.value });
    return { descriptor, link };
  }

  /**
   * Links a stored blob into this repository. The catalog entry first, so a linked
   * repository is always listed (a listed one with nothing linked is harmless, and is
   * what `npm run verify` reports and repairs); the KV copy last.
   */
  async link(digest: Digest, record: LinkRecord = {}): Promise<void> {
    await new Catalog(this.bucket).add(this.name);
    await this.bucket.put(this.key(digest), JSON.stringify(record));
    await this.writeCopy(digest, record);
  }

  /** Removes this repository's link; the blob and other repositories' links stay. */
  async unlink(digest: Digest): Promise<boolean> {
    const exists = await this.bucket.head(this.key(digest));
    if (!exists) return false;
    await this.kv.delete(this.kvKey(digest));
    await this.bucket.delete(this.key(digest));
    await this.kv.delete(this.kvKey(digest)).catch(() => undefined);
    return true;
  }
}
