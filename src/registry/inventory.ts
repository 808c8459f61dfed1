import { digestOf, digestOrNull, type Digest } from "../oci/digest";
import { parseManifest } from "../oci/manifest";
import { BlobStore, isBlobDescriptor, type BlobDescriptor } from "./blob-store";
import { decodeContent, LinkedBlobStore, linkCopyOf } from "./linked-blob-store";
import { descriptorDigestOf, Paths, repositoryEntryOf, type RepositoryEntryKey } from "./paths";
import type { Storage } from "./storage";
import { Tags } from "./tags";

/**
 * What the registry holds, as the garbage collector (src/gc) walks it: listings of the
 * repositories' links and tags, of the blob descriptors and of the upload data, one page
 * at a time, and the reads a run needs besides (a tag's target, a manifest's
 * references). Reads only: the collector's writes are CollectorStore's (collection.ts).
 */

/** What a manifest references, by digest value (manifests are immutable: read once per digest). */
export interface ManifestReferences {
  mediaType: string;
  subject: string | null;
  /** What an index lists. */
  children: string[];
  /** Config and layers, without the foreign ones (those with `urls`). */
  blobs: string[];
}

/** A key of a repository's links or tags, with what its listing says. */
export interface ListedRepositoryEntry extends RepositoryEntryKey {
  uploaded: number;
  etag: string;
  /** A tag's target, when the listing carried it (tags written before it did need a read: tagTarget). */
  target?: string;
}

/** A blob descriptor record as listed. */
export interface ListedDescriptor {
  digest: string;
  /** The record's key, as listed. */
  key: string;
  etag: string;
  uploaded: number;
  /** Its custom metadata: the object it names and the collector's mark (DescriptorMetadata). */
  metadata: Record<string, string>;
}

/** One page of a listing: what it held, how many keys it listed, and where the next begins (null: the end). */
export interface Page<T> {
  items: T[];
  listed: number;
  cursor: string | null;
}

export class Inventory {
  constructor(private readonly storage: Storage) {}

  /**
   * A page of the keys under `repositories/` (or, `under` a name, of that repository and
   * the ones nested in it) that are links or tags (others are skipped but counted);
   * `metadata` lists the tags' targets too.
   */
  async repositoryEntries(options: {
    cursor?: string;
    limit: number;
    metadata: boolean;
    under?: string;
  }): Promise<Page<ListedRepositoryEntry>> {
    const listing = await this.storage.bucket.list({
      prefix: options.under === undefined ? Paths.repositoriesPrefix : Paths.repositoryTree(options.under),
      ...(options.metadata ? { include: ["customMetadata"] as ("customMetadata" | "httpMetadata")[] } : {}),
      limit: options.limit,
      ...(options.cursor ? { cursor: options.cursor } : {}),
    });
    const items: ListedRepositoryEntry[] = [];
    for (const object of listing.objects) {
      const entry = repositoryEntryOf(object.key);
      if (!entry) continue;
      const listed: ListedRepositoryEntry = { ...entry, uploaded: object.uploaded.getTime(), etag: object.etag };
      const target = entry.tag !== undefined ? digestOrNull(object.customMetadata?.digest ?? "") : null;
      if (target) listed.target = target.value;
      items.push(listed);
    }
    return { items, listed: listing.objects.length, cursor: listing.truncated ? listing.cursor : null };
  }

  /** The manifest a tag names, or null when the tag is gone or its record unreadable. One read. */
  async tagTarget(repository: string, tag: string): Promise<Digest | null> {
    return (await new Tags(this.storage.bucket, repository).resolve(tag))?.digest ?? null;
  }

  /**
   * The targets of a repository's tags written at `since` or later, and of its revisions:
   * what writes made during a run need (the check after a prune).
   */
  async *tagTargetsWrittenSince(repository: string, since: number): AsyncGenerator<string> {
    for await (const object of this.listAll(Paths.tagPrefix(repository))) {
      if (object.uploaded.getTime() < since) continue;
      let target = digestOrNull(object.customMetadata?.digest ?? "")?.value;
      if (!target)
        target = (await this.tagTarget(repository, object.key.slice(Paths.tagPrefix(repository).length)))?.value;
      if (target) yield target;
    }
  }

  async *revisionsWrittenSince(repository: string, since: number): AsyncGenerator<string> {
    for await (const object of this.listAll(Paths.revisionPrefix(repository))) {
      if (object.uploaded.getTime() < since) continue;
      const digest = repositoryEntryOf(object.key)?.link?.digest;
      if (digest) yield digest.value;
    }
  }

  /**
   * What a stored manifest references; null when its bytes are gone or unreadable. Reads
   * only (a dry run writes nothing): the link's KV copy when it carries the bytes, else R2.
   */
  async manifestReferences(repository: string, digest: Digest): Promise<ManifestReferences | null> {
    const blobs = new BlobStore(this.storage);
    const revisions = new LinkedBlobStore(this.storage, blobs, repository, "revision");
    const copy = linkCopyOf(
      await this.storage.kv.get(Paths.kvManifestRevision(repository, digest), "json").catch(() => null),
      digest,
    );
    let mediaType = copy?.link.mediaType;
    let bytes: Uint8Array | null = copy?.content ? decodeContent(copy.content) : null;
    if (bytes && (await digestOf(bytes, digest.algorithm)).value !== digest.value) bytes = null;
    if (!bytes) {
      const link = await revisions.readLink(digest);
      const descriptor = link ? await blobs.stat(digest, { strong: true }) : null;
      if (!link || !descriptor) return null;
      mediaType = link.mediaType;
      bytes = await blobs.readBytes(descriptor);
    }
    if (!bytes || (await digestOf(bytes, digest.algorithm)).value !== digest.value) return null;
    try {
      const manifest = parseManifest(bytes, mediaType ?? "");
      return {
        mediaType: manifest.mediaType,
        subject: manifest.subject?.digest.value ?? null,
        children: manifest.manifests.map((child) => child.digest.value),
        blobs: manifest.blobs.filter((blob) => !blob.urls || blob.urls.length === 0).map((blob) => blob.digest.value),
      };
    } catch {
      return null;
    }
  }

  /** A page of blob descriptor records, with their metadata (keys naming no digest are counted, not returned). */
  async descriptors(options: { cursor?: string; limit: number }): Promise<Page<ListedDescriptor>> {
    const listing = await this.storage.bucket.list({
      prefix: Paths.blobDescriptorPrefix,
      include: ["customMetadata"],
      limit: options.limit,
      ...(options.cursor ? { cursor: options.cursor } : {}),
    });
    const items: ListedDescriptor[] = [];
    for (const object of listing.objects) {
      const digest = descriptorDigestOf(object.key);
      if (!digest) continue;
      items.push({
        digest: digest.value,
        key: object.key,
        etag: object.etag,
        uploaded: object.uploaded.getTime(),
        metadata: object.customMetadata ?? {},
      });
    }
    return { items, listed: listing.objects.length, cursor: listing.truncated ? listing.cursor : null };
  }

  /**
   * The descriptor a listed record holds: from its metadata (descriptors carry it since
   * the collector exists), else, unless it is a tombstone, from its body (one read). Null:
   * not a descriptor.
   */
  async descriptorOf(listed: ListedDescriptor): Promise<BlobDescriptor | null> {
    const meta = listed.metadata;
    if (meta.key !== undefined && meta.size !== undefined && Number.isSafeInteger(Number(meta.size))) {
      return { digest: listed.digest, size: Number(meta.size), key: meta.key };
    }
    if (meta.gc === "tombstone") return null;
    const record = await this.storage.bucket.get(listed.key);
    const body: unknown = record ? await record.json().catch(() => null) : null;
    // Just the descriptor's fields (a condemned record's body has its mark too).
    return isBlobDescriptor(body) ? { digest: body.digest, size: body.size, key: body.key } : null;
  }

  /**
   * A stored blob's size, or null when it is not stored (or being collected: a tombstone).
   * One head: descriptors carry their size in metadata (older ones are read).
   */
  async blobSize(digest: Digest): Promise<number | null> {
    const head = await this.storage.bucket.head(Paths.blobDescriptor(digest));
    if (!head || head.customMetadata?.gc === "tombstone") return null;
    const size = Number(head.customMetadata?.size ?? NaN);
    if (Number.isSafeInteger(size)) return size;
    return (await new BlobStore(this.storage).stat(digest, { strong: true }))?.size ?? null;
  }

  /** Whether a repository links a digest (a layer link or a revision), read from R2 now. One head. */
  async links(repository: string, kind: "layer" | "revision", digest: Digest): Promise<boolean> {
    const links = new LinkedBlobStore(this.storage, new BlobStore(this.storage), repository, kind);
    return (await links.writtenAt(digest)) !== null;
  }

  /** A page of the objects under `data/` (blob bytes, published or not). */
  async dataObjects(options: {
    cursor?: string;
    limit: number;
  }): Promise<Page<{ key: string; uploaded: number; size: number }>> {
    const listing = await this.storage.bucket.list({
      prefix: Paths.uploadDataPrefix,
      limit: options.limit,
      ...(options.cursor ? { cursor: options.cursor } : {}),
    });
    const items = listing.objects.map((object) => ({
      key: object.key,
      uploaded: object.uploaded.getTime(),
      size: object.size,
    }));
    return { items, listed: items.length, cursor: listing.truncated ? listing.cursor : null };
  }

  /** Whether the integrity check's repair withdrew the object and kept it for inspection. One head. */
  async isQuarantined(key: string): Promise<boolean> {
    return (await this.storage.bucket.head(Paths.quarantine(key))) !== null;
  }

  private async *listAll(prefix: string): AsyncGenerator<R2Object> {
    let cursor: string | undefined;
    for (;;) {
      const page = await this.storage.bucket.list({
        prefix,
        include: ["customMetadata"],
        ...(cursor ? { cursor } : {}),
      });
      yield* page.objects;
      if (!page.truncated) return;
      cursor = page.cursor;
    }
  }
}
