import type { Digest } from "../oci/digest";
import { RegistryError } from "../oci/errors";
import type { BlobDescriptor, BlobStore } from "./blob-store";
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
 * The R2 link marker is the truth; KV caches it for edge reads and falls back to R2
 * on a miss. A deleted link can stay visible in other locations' KV for up to
 * KV's propagation delay (about 60 s); reads on the write path (manifest PUT,
 * mount, delete) therefore ask R2 directly (`strong`).
 */
export class LinkedBlobStore {
  constructor(
    private readonly bucket: R2Bucket,
    private readonly kv: KVNamespace,
    private readonly blobs: BlobStore,
    readonly name: string,
    private readonly kind: LinkKind,
  ) {}

  private r2Key(digest: Digest): string {
    return this.kind === "layer" ? Paths.layerLink(this.name, digest) : Paths.manifestRevision(this.name, digest);
  }

  private kvKey(digest: Digest): string {
    return this.kind === "layer" ? Paths.kvLayerLink(this.name, digest) : Paths.kvRevision(this.name, digest);
  }

  /** The link record, or null if this repository does not link the digest. */
  async readLink(digest: Digest, options: { strong?: boolean } = {}): Promise<LinkRecord | null> {
    if (!options.strong) {
      const cached = await this.kv.get<LinkRecord>(this.kvKey(digest), "json");
      if (cached) return cached;
    }
    const object = await this.bucket.get(this.r2Key(digest));
    if (!object) return null;
    const text = await object.text();
    const record: LinkRecord = text ? (JSON.parse(text) as LinkRecord) : {};
    await this.kv.put(this.kvKey(digest), JSON.stringify(record));
    return record;
  }

  /** The descriptor of a blob this repository links; throws `unknownCode` otherwise. */
  async stat(
    digest: Digest,
    options: { strong?: boolean; unknownCode?: "BLOB_UNKNOWN" | "MANIFEST_UNKNOWN" } = {},
  ): Promise<{ descriptor: BlobDescriptor; link: LinkRecord }> {
    const unknownCode = options.unknownCode ?? "BLOB_UNKNOWN";
    const link = await this.readLink(digest, options);
    if (!link) throw new RegistryError(unknownCode, undefined, { digest: digest.value });
    const descriptor = await this.blobs.stat(digest);
    if (!descriptor) throw new RegistryError(unknownCode, undefined, { digest: digest.value });
    return { descriptor, link };
  }

  /** Links a stored blob into this repository. The R2 record first: it is the truth. */
  async link(digest: Digest, record: LinkRecord = {}): Promise<void> {
    const body = JSON.stringify(record);
    await this.bucket.put(this.r2Key(digest), body);
    await this.bucket.put(Paths.catalogEntry(this.name), "");
    await this.kv.put(this.kvKey(digest), body);
  }

  /** Removes this repository's link; the blob and other repositories' links stay. */
  async unlink(digest: Digest): Promise<boolean> {
    const exists = await this.bucket.head(this.r2Key(digest));
    if (!exists) return false;
    await this.bucket.delete(this.r2Key(digest));
    await this.kv.delete(this.kvKey(digest));
    return true;
  }
}
