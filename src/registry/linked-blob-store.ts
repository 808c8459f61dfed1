import type { Digest } from "../oci/digest";
import { RegistryError } from "../oci/errors";
import type { BlobDescriptor, BlobStore } from "./blob-store";
import { Catalog } from "./catalog";
import { Paths } from "./paths";

/** The two kinds of link a repository holds, as in docker/distribution. */
export type LinkKind = "layer" | "revision";

/** What a link records. Revisions carry the media type the manifest was pushed with. */
export interface LinkRecord {
  mediaType?: string;
}

/**
 * A repository's view of the global BlobStore: a repository sees a blob only
 * through its own link. Linking never copies bytes, and unlinking never touches
 * the blob or another repository's link to it.
 *
 * Links are read from R2 only, never from KV: a link is the one record that a client
 * deletes, and a KV copy would keep a deleted link visible at other locations for
 * KV's propagation delay (about 60 s), so a client that deleted a blob or manifest
 * could still pull it. What KV caches at the edge is the immutable blob descriptor
 * (see BlobStore), and `stat` reads the link and the descriptor in parallel.
 */
export class LinkedBlobStore {
  constructor(
    private readonly bucket: R2Bucket,
    private readonly blobs: BlobStore,
    readonly name: string,
    private readonly kind: LinkKind,
  ) {}

  private key(digest: Digest): string {
    return this.kind === "layer" ? Paths.layerLink(this.name, digest) : Paths.manifestRevision(this.name, digest);
  }

  /** The link record, or null if this repository does not link the digest. */
  async readLink(digest: Digest): Promise<LinkRecord | null> {
    const object = await this.bucket.get(this.key(digest));
    if (!object) return null;
    const text = await object.text();
    return text ? (JSON.parse(text) as LinkRecord) : {};
  }

  /** The descriptor of a blob this repository links; throws `unknownCode` otherwise. */
  async stat(
    digest: Digest,
    options: { unknownCode?: "BLOB_UNKNOWN" | "MANIFEST_UNKNOWN" } = {},
  ): Promise<{ descriptor: BlobDescriptor; link: LinkRecord }> {
    const unknownCode = options.unknownCode ?? "BLOB_UNKNOWN";
    const [link, descriptor] = await Promise.all([this.readLink(digest), this.blobs.stat(digest)]);
    if (!link || !descriptor) throw new RegistryError(unknownCode, undefined, { digest: digest.value });
    return { descriptor, link };
  }

  /**
   * Links a stored blob into this repository. The catalog entry first, so a linked
   * repository is always listed (a listed one with nothing linked is harmless, and is
   * what `npm run verify` reports and repairs).
   */
  async link(digest: Digest, record: LinkRecord = {}): Promise<void> {
    await new Catalog(this.bucket).add(this.name);
    await this.bucket.put(this.key(digest), JSON.stringify(record));
  }

  /** Removes this repository's link; the blob and other repositories' links stay. */
  async unlink(digest: Digest): Promise<boolean> {
    const exists = await this.bucket.head(this.key(digest));
    if (!exists) return false;
    await this.bucket.delete(this.key(digest));
    return true;
  }
}
