import type { Digest } from "../oci/digest";
import { RegistryError } from "../oci/errors";
import type { BlobDescriptor, BlobStore, ByteRange, CachedCopy } from "./blob-store";
import { finishedSize, storeFinishedBlob, type FinishedBlob } from "./blob-commit";
import { Catalog } from "./catalog";
import type { Change, ChangeContext, ChangeSeam, Pull } from "./changes";
import type { EdgeCache } from "./edge-cache";
import type { LinkCopy, LinkedBlobStore } from "./linked-blob-store";
import { currentMeter, runMetered, type Meter } from "./meter";
import type { Manifests, PutManifestOptions, PutManifestResult, Reference, StoredManifest } from "./manifests";
import type { ReferrerDescriptor, Referrers } from "./referrers";
import type { TagListing, TagRecord, Tags } from "./tags";

/** The storage services one repository is made of (registry.ts wires them). */
export interface RepositoryParts {
  blobs: BlobStore;
  layers: LinkedBlobStore;
  revisions: LinkedBlobStore;
  tags: Tags;
  referrers: Referrers;
  manifests: Manifests;
  catalog: Catalog;
  edge: EdgeCache;
  /** The meter of the request these parts serve (registry/meter.ts), when they serve one. */
  meter?: Meter;
}

/**
 * A blob answered from elsewhere than storage (a mirror's upstream, for a blob not stored
 * yet): the answer's status, headers and body as they are to be sent.
 */
export interface PassThroughBlob {
  status: 200;
  headers: Record<string, string>;
  body: ReadableStream<Uint8Array> | null;
}

/** Where a blob a pull asks for is: stored and linked here (its descriptor), or passed through. */
export type LocatedBlob = { descriptor: BlobDescriptor } | { passThrough: PassThroughBlob };

/**
 * The client's request reading a blob or a manifest: its method, and how to keep work
 * going after the answer (a mirror's fill; telling the pull listeners, when any asked).
 */
export interface PullRequest {
  method: string;
  waitUntil: (work: Promise<unknown>) => void;
}

/** The pull asking for a blob. */
export type BlobRequest = PullRequest;

/** Most entries one page of a listing holds, whatever `n` asks for. */
export const MAX_PAGE = 1000;

/**
 * One repository, as everything above the registry layer sees it (docs/architecture.md,
 * "The repository seam"): reads, and every change a repository goes through. Each change
 * is described to the seam's policies before anything is written (any may refuse it) and
 * to its listeners once it is committed, with who made it (`context`). Nothing outside
 * src/registry/ writes a storage key; the routes, the web pages, the mirror and the
 * collector all change repositories through here.
 */
export class Repository {
  constructor(
    readonly name: string,
    protected readonly parts: RepositoryParts,
    protected readonly seam: ChangeSeam,
    readonly context: ChangeContext,
  ) {}

  /** This repository with the changes it makes attributed to `context` (a viewer of the pages). */
  as(context: ChangeContext): Repository {
    return new Repository(this.name, this.parts, this.seam, context);
  }

  /**
   * Why nothing may be written here (a mirrored repository's content is its upstream's),
   * or null. Routes refuse every write to a read-only repository before it starts.
   */
  readOnlyReason(): string | null {
    return null;
  }

  // ---- Reads ----

  /** Whether the repository exists (it has linked anything): the catalog's entry. */
  exists(): Promise<boolean> {
    return this.parts.catalog.exists(this.name);
  }

  /** A blob this repository links, as a pull sees it (from the edge index first); BLOB_UNKNOWN otherwise. */
  async statBlob(digest: Digest): Promise<BlobDescriptor> {
    return (await this.parts.layers.stat(digest)).descriptor;
  }

  /**
   * A blob a pull asks for (`method` GET or HEAD): its descriptor when linked here (else
   * BLOB_UNKNOWN), told to the pull listeners (a GET, when any asked).
   */
  async locateBlob(digest: Digest, request: BlobRequest): Promise<LocatedBlob> {
    const located = await this.findBlob(digest, request);
    if (request.method === "GET" && this.seam.watches("blob.pull")) {
      const size =
        "descriptor" in located ? located.descriptor.size : Number(located.passThrough.headers["Content-Length"] ?? 0);
      this.observe({ action: "blob.pull", repository: this.name, digest, size }, request);
    }
    return located;
  }

  /** Where a pulled blob is: linked here. A decorator (the mirror) may answer one not stored yet. */
  protected async findBlob(digest: Digest, request: BlobRequest): Promise<LocatedBlob> {
    void request; // what a decorator needs to fetch one; stored blobs need nothing of it
    return { descriptor: await this.statBlob(digest) };
  }

  /**
   * Runs a change through the seam within the request's meter: the seam's policies and
   * listeners are kept per isolate and find the meter of what they run in (registry/meter.ts),
   * which a GET (a mirror storing what it fetched) does not enter otherwise.
   */
  private metering<T>(change: () => Promise<T>): Promise<T> {
    const meter = this.parts.meter;
    return meter && currentMeter() !== meter ? runMetered(meter, change) : change();
  }

  /** Tells the pull listeners, after the answer. */
  private observe(pull: Pull, request: PullRequest): void {
    this.seam.observe(pull, this.context, request.waitUntil);
  }

  /** A manifest revision this repository links, with its link record and (small ones) its bytes. */
  statRevision(digest: Digest): Promise<LinkCopy> {
    return this.parts.revisions.stat(digest, { unknownCode: "MANIFEST_UNKNOWN" });
  }

  /** A stored blob's descriptor whether or not this repository links it (write paths: read strongly). */
  storedBlob(digest: Digest): Promise<BlobDescriptor | null> {
    return this.parts.blobs.stat(digest, { strong: true });
  }

  /** Whether this repository links the blob, read from R2 (the truth). */
  async linksBlob(digest: Digest): Promise<boolean> {
    return (await this.parts.layers.readLink(digest)) !== null;
  }

  openBlob(descriptor: BlobDescriptor, range?: ByteRange): Promise<ReadableStream<Uint8Array>> {
    return this.parts.blobs.open(descriptor, range);
  }

  openBlobTwice(descriptor: BlobDescriptor): Promise<CachedCopy> {
    return this.parts.blobs.openTwice(descriptor);
  }

  /** The descriptor as it is now, its object checked to be there (for a redirect to it). */
  blobWithObject(descriptor: BlobDescriptor): Promise<BlobDescriptor> {
    return this.parts.blobs.withObject(descriptor);
  }

  readBlobBytes(descriptor: BlobDescriptor): Promise<Uint8Array<ArrayBuffer> | null> {
    return this.parts.blobs.readBytes(descriptor);
  }

  statManifest(
    reference: Reference,
    resolved?: TagRecord,
  ): Promise<{ digest: Digest; mediaType: string; size: number }> {
    return this.parts.manifests.stat(reference, resolved);
  }

  /**
   * A manifest by tag or digest. `pull`: the client's GET reading it, told to the pull
   * listeners when any asked (the pages' reads are no pulls).
   */
  async getManifest(reference: Reference, resolved?: TagRecord, pull?: PullRequest): Promise<StoredManifest> {
    const manifest = await this.parts.manifests.get(reference, resolved);
    if (pull && pull.method === "GET" && this.seam.watches("manifest.pull")) {
      this.observe(
        {
          action: "manifest.pull",
          repository: this.name,
          digest: manifest.digest,
          mediaType: manifest.mediaType,
          size: manifest.bytes.byteLength,
          ...("tag" in reference ? { tag: reference.tag } : {}),
        },
        pull,
      );
    }
    return manifest;
  }

  /** A tag's record as this location sees it (EDGE_TAG_TTL_SECONDS), or null. */
  resolveTagAtEdge(tag: string): Promise<TagRecord | null> {
    return this.parts.tags.resolveAtEdge(tag);
  }

  /** A tag's record from R2, or null. */
  resolveTag(tag: string): Promise<TagRecord | null> {
    return this.parts.tags.resolve(tag);
  }

  listTags(limit: number, last?: string): Promise<string[]> {
    return this.parts.tags.list(limit, last);
  }

  /**
   * One page of the tag list, as `GET tags/list?n=&last=` asks (`n` undefined: MAX_PAGE,
   * and never more): the tags, and the `last` to continue after when there are more.
   */
  async listTagsPage(n: number | undefined, last: string | undefined): Promise<{ tags: string[]; next?: string }> {
    const limit = Math.min(MAX_PAGE, n ?? MAX_PAGE);
    if (limit === 0) return { tags: [] };
    // One more than the page holds: a next page exists exactly when it comes back.
    const tags = await this.parts.tags.list(limit + 1, last);
    if (tags.length <= limit) return { tags };
    const page = tags.slice(0, limit);
    return { tags: page, next: page[page.length - 1] ?? "" };
  }

  /** Tags with the summaries their records carry, newest first, from listings alone (the web pages). */
  listTagSummaries(): Promise<TagListing> {
    return this.parts.tags.listWithSummaries();
  }

  /** The tags naming `digest`: at most `limit`, from at most `maxPages` listings (the web pages). */
  tagsNaming(digest: string, limit: number, maxPages: number): Promise<{ tags: string[]; more: boolean }> {
    return this.parts.tags.naming(digest, limit, maxPages);
  }

  listReferrers(
    subject: Digest,
    limit: number,
    last?: string,
  ): Promise<{ key: string; descriptor: ReferrerDescriptor | null }[]> {
    return this.parts.referrers.list(subject, limit, last);
  }

  // ---- Changes ----

  /**
   * An upload finished (the upload engine verified its bytes): the blob is stored under its
   * digest, if it was not already, and linked here. Told as a mirror store when the mirror
   * filled it. The one call the upload engine makes into the registry.
   */
  async commitBlob(digest: Digest, blob: FinishedBlob): Promise<BlobDescriptor> {
    const size = finishedSize(blob);
    const change =
      this.context.actor.kind === "mirror"
        ? ({ action: "mirror.store", repository: this.name, digest, kind: "blob", size } as const)
        : ({ action: "blob.commit", repository: this.name, digest, size } as const);
    return this.metering(() =>
      this.seam.apply(change, this.context, () => storeFinishedBlob(this.parts.blobs, this.parts.layers, digest, blob)),
    );
  }

  /**
   * Whether an upload of `size` bytes of `digest` may be committed here, asked before its
   * bytes are received (a `blob.upload` change: the policies may refuse it, as a quota
   * does, and nothing is written). The upload engine asks when the size is known up front;
   * the commit is judged again as a `blob.commit`.
   */
  async admitUpload(digest: Digest, size: number): Promise<void> {
    if (!this.seam.judges("blob.upload", this.name)) return;
    await this.metering(() =>
      this.seam.check({ action: "blob.upload", repository: this.name, digest, size }, this.context),
    );
  }

  /**
   * Links a stored blob here from `from` (`POST ?mount=&from=`; `from` undefined: any
   * stored blob, with automatic content discovery on). Returns the descriptor, or null
   * when there is nothing to mount (the source does not link it, or it is not stored).
   */
  async mountBlob(digest: Digest, from: Repository | undefined): Promise<BlobDescriptor | null> {
    if (from && !(await from.linksBlob(digest))) return null;
    const stored = await this.parts.blobs.stat(digest, { strong: true });
    if (!stored) return null;
    const change = {
      action: "blob.mount",
      repository: this.name,
      digest,
      size: stored.size,
      ...(from ? { from: from.name } : {}),
    } as const;
    await this.metering(() => this.seam.apply(change, this.context, () => this.parts.layers.link(digest, stored)));
    return stored;
  }

  /**
   * A blob the mirror found stored already, once the upstream proved it has the same
   * bytes (src/mirror): linked here as a mirror store.
   */
  async linkMirroredBlob(digest: Digest, descriptor: BlobDescriptor): Promise<void> {
    const change = {
      action: "mirror.store",
      repository: this.name,
      digest,
      kind: "blob",
      size: descriptor.size,
    } as const;
    await this.metering(() => this.seam.apply(change, this.context, () => this.parts.layers.link(digest, descriptor)));
  }

  /** Removes this repository's link to a blob (`DELETE /v2/<name>/blobs/<digest>`); BLOB_UNKNOWN when there is none. */
  async unlinkBlob(digest: Digest): Promise<void> {
    const removed = await this.metering(() =>
      this.seam.apply({ action: "blob.unlink", repository: this.name, digest }, this.context, () =>
        this.parts.layers.unlink(digest),
      ),
    );
    if (!removed) throw new RegistryError("BLOB_UNKNOWN", undefined, { digest: digest.value });
  }

  /**
   * Checks and stores a manifest and sets its tags (`PUT /v2/<name>/manifests/<reference>`).
   * A manifest the mirror fetched (`options.mirroredAt`) is told as a mirror store.
   */
  async putManifest(
    reference: Reference,
    bytes: Uint8Array,
    contentType: string,
    options: PutManifestOptions = {},
  ): Promise<PutManifestResult> {
    const prepared = await this.parts.manifests.prepare(reference, bytes, contentType, options);
    const { digest, manifest, tags } = prepared;
    const change =
      options.mirroredAt !== undefined
        ? ({
            action: "mirror.store",
            repository: this.name,
            digest,
            kind: "manifest",
            size: bytes.byteLength,
            mediaType: manifest.mediaType,
            ...(tags[0] !== undefined ? { tag: tags[0] } : {}),
          } as const)
        : ({
            action: "manifest.put",
            repository: this.name,
            digest,
            mediaType: manifest.mediaType,
            size: bytes.byteLength,
            tags,
            ...(manifest.subject ? { subject: manifest.subject.digest } : {}),
          } as const);
    // A tag that named another manifest moves: told as such, when anyone wants to know
    // (it costs a read of each tag the push sets).
    const moves: Change[] = [];
    if (this.seam.wants("tag.move", this.name)) {
      const previous = await Promise.all(tags.map((tag) => this.parts.tags.resolve(tag)));
      tags.forEach((tag, index) => {
        const before = previous[index]?.digest;
        if (before && before.value !== digest.value)
          moves.push({ action: "tag.move", repository: this.name, tag, digest, previous: before });
      });
    }
    return this.metering(() =>
      this.seam.applyAll([change, ...moves], this.context, (conditions) =>
        this.parts.manifests.store(prepared, conditions.createOnlyTags),
      ),
    );
  }

  /**
   * A tag the mirror's refresh found unchanged upstream: its record again, with when the
   * upstream confirmed it. The tag names what it named: not a change of content.
   */
  async confirmMirroredTag(tag: string, record: TagRecord): Promise<void> {
    await this.parts.tags.set(tag, record);
  }

  /**
   * `DELETE /v2/<name>/manifests/<reference>`: by tag, the tag; by digest, the revision
   * link and every tag naming it (MANIFEST_UNKNOWN when there is nothing to remove).
   */
  async deleteManifest(reference: Reference): Promise<void> {
    const plan = await this.parts.manifests.planDeletion(reference);
    const change =
      "tag" in reference
        ? ({ action: "tag.delete", repository: this.name, tag: reference.tag } as const)
        : ({ action: "manifest.delete", repository: this.name, digest: reference.digest, tags: plan.tags } as const);
    await this.metering(() => this.seam.apply(change, this.context, () => this.parts.manifests.remove(plan)));
  }
}
