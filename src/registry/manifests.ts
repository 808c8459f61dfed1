import { digestOf, looksLikeDigest, parseDigest, type Digest, type DigestAlgorithm } from "../oci/digest";
import { RegistryError, unavailable } from "../oci/errors";
import { parseManifest, parseManifestOrNull, type Descriptor, type ParsedManifest } from "../oci/manifest";
import { validateTag } from "../oci/names";
import type { BlobDescriptor, BlobStore } from "./blob-store";
import { EdgeCache } from "./edge-cache";
import { forEachBounded } from "./bounded";
import { decodeContent, EMBEDDED_CONTENT_MAX_BYTES, encodeContent, type LinkedBlobStore } from "./linked-blob-store";
import { Paths } from "./paths";
import { Referrers } from "./referrers";
import type { TagRecord, TagSummary, Tags } from "./tags";

/** Bytes carried in a tag record or a link copy, when they decode and hash to `digest`; else null. */
async function verifiedContent(content: string, digest: Digest): Promise<Uint8Array<ArrayBuffer> | null> {
  const bytes = decodeContent(content);
  if (!bytes || (await digestOf(bytes, digest.algorithm)).value !== digest.value) return null;
  return bytes;
}

/** What a manifest whose link records no media type (none written so) is served as. */
const DEFAULT_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json";

/** A manifest as served: its exact bytes and the media type it was pushed with. */
export interface StoredManifest {
  digest: Digest;
  mediaType: string;
  bytes: Uint8Array<ArrayBuffer>;
}

export interface PutManifestOptions {
  /** More tags to point at the manifest (`?tag=`), after the reference's own. */
  extraTags?: string[];
  /** Most descriptors the manifest may list (see RegistryConfig.manifestMaxReferences). */
  maxReferences?: number;
  /**
   * A manifest fetched from an upstream (src/mirror), confirmed by it at this time: what it
   * references is fetched when pulled, so nothing is checked here, and its tags record when
   * the upstream confirmed them.
   */
  mirroredAt?: number;
}

/** What a tag's listing shows of the manifest it names (TagSummary). */
function summarize(manifest: ParsedManifest): TagSummary {
  if (manifest.kind === "image") return { size: manifest.blobs.reduce((total, blob) => total + blob.size, 0) };
  const platforms = manifest.manifests.flatMap((child) =>
    child.platform && child.platform.length <= 64 ? [child.platform] : [],
  );
  return { platforms: [...new Set(platforms)].slice(0, 32) };
}

/** How deep relink follows children linked again (an index of indexes of manifests is 2). */
const MAX_RELINK_DEPTH = 3;

const NONE: ReadonlyMap<string, string> = new Map();

/** Reference checks in flight at once for one manifest PUT (see forEachBounded). */
const REFERENCE_CHECKS_IN_FLIGHT = 6;

/** One distinct digest a manifest references, with every size the manifest declares for it. */
interface ReferenceCheck {
  store: LinkedBlobStore;
  digest: Digest;
  sizes: Set<number>;
}

export interface PutManifestResult {
  digest: Digest;
  manifest: ParsedManifest;
  /** Every tag the push set (the reference's and any `?tag=`). */
  tags: string[];
}

/** A manifest checked and ready to store (Manifests.prepare): nothing of it is written yet. */
export interface PreparedManifest {
  digest: Digest;
  manifest: ParsedManifest;
  tags: string[];
  bytes: Uint8Array;
  /** The collector's marker as read before the checks (see store). */
  markerBefore: Promise<{ active: boolean; etag: string | null }>;
  mirroredAt: number | undefined;
}

/** What a manifest DELETE removes (Manifests.planDeletion). */
export interface PlannedDeletion {
  reference: Reference;
  /** The tags that go: the one named, or every tag naming the digest. */
  tags: string[];
  /** The subject whose referrer record goes too. */
  subject?: Digest | null;
  /** Only a KV copy of the revision link is left (at the edge): it goes, nothing else. */
  edgeOnly?: boolean;
}

/** A manifest reference in a URL: a tag or a digest. */
export type Reference = { tag: string } | { digest: Digest };

export function parseReference(text: string): Reference {
  return looksLikeDigest(text) ? { digest: parseDigest(text) } : { tag: validateTag(text) };
}

/**
 * A repository's manifests. Manifests are stored as blobs in the global BlobStore
 * (so identical manifests in two repositories are stored once) and seen through the
 * repository's revision links; tags point at revisions.
 */
export class Manifests {
  constructor(
    private readonly blobs: BlobStore,
    private readonly layers: LinkedBlobStore,
    private readonly revisions: LinkedBlobStore,
    private readonly tags: Tags,
    private readonly referrers: Referrers,
    private readonly edge: EdgeCache = EdgeCache.bypass(),
  ) {}

  /**
   * What a reference names for a pull: a digest, or a tag's record as this location sees
   * it (with the manifest's media type and size, when the tag was written with them);
   * MANIFEST_UNKNOWN for a tag that does not exist.
   */
  async resolve(reference: Reference): Promise<TagRecord> {
    if ("digest" in reference) return { digest: reference.digest };
    const record = await this.tags.resolveAtEdge(reference.tag);
    if (!record) throw new RegistryError("MANIFEST_UNKNOWN", undefined, { tag: reference.tag });
    return record;
  }

  /** `resolve` for a HEAD: a tag's digest, media type and size without its record's body (Tags.statAtEdge). */
  private async resolveForStat(reference: Reference): Promise<TagRecord> {
    if ("digest" in reference) return { digest: reference.digest };
    const record = await this.tags.statAtEdge(reference.tag);
    if (!record) throw new RegistryError("MANIFEST_UNKNOWN", undefined, { tag: reference.tag });
    return record;
  }

  /**
   * Size and media type without the bytes (HEAD). By tag, the tag record holds them (a
   * tag names a manifest its repository holds: tags.ts); by digest, the revision link and
   * the blob's descriptor, from KV at the edge.
   */
  async stat(reference: Reference, resolved?: TagRecord): Promise<{ digest: Digest; mediaType: string; size: number }> {
    const record = resolved ?? (await this.resolveForStat(reference));
    if (record.mediaType !== undefined && record.size !== undefined) {
      return { digest: record.digest, mediaType: record.mediaType, size: record.size };
    }
    const { descriptor, link } = await this.revisions.stat(record.digest, { unknownCode: "MANIFEST_UNKNOWN" });
    return { digest: record.digest, mediaType: link.mediaType ?? DEFAULT_MEDIA_TYPE, size: descriptor.size };
  }

  /**
   * The manifest's bytes: from this location's cache by digest (after the link check, or
   * by a tag that names it), else from R2 (and then kept here). `resolved`: the reference's
   * record, when the caller resolved it already.
   */
  async get(reference: Reference, resolved?: TagRecord): Promise<StoredManifest> {
    const record = resolved ?? (await this.resolve(reference));
    const digest = record.digest;
    let known: { mediaType: string; size: number } | null =
      record.mediaType !== undefined && record.size !== undefined
        ? { mediaType: record.mediaType, size: record.size }
        : null;
    // A small manifest rides in its tag record, or in its link's KV copy: one read in all.
    const inRecord = known && record.content ? await verifiedContent(record.content, digest) : null;
    if (known && inRecord) return { digest, mediaType: known.mediaType, bytes: inRecord };
    let descriptor: BlobDescriptor | null = null;
    if (!known) {
      const stat = await this.revisions.stat(digest, { unknownCode: "MANIFEST_UNKNOWN" });
      descriptor = stat.descriptor;
      known = { mediaType: stat.link.mediaType ?? DEFAULT_MEDIA_TYPE, size: stat.descriptor.size };
      const inCopy = stat.content ? await verifiedContent(stat.content, digest) : null;
      if (inCopy) return { digest, mediaType: known.mediaType, bytes: inCopy };
    }
    const cached = await this.edge.matchBlob(digest.value, known.size);
    if (cached) {
      const bytes = new Uint8Array(await cached.arrayBuffer());
      // A manifest is small: its digest is checked on every hit, whatever the cache says.
      if ((await digestOf(bytes, digest.algorithm)).value === digest.value) {
        return { digest, mediaType: known.mediaType, bytes };
      }
    }
    descriptor ??= (await this.revisions.stat(digest, { unknownCode: "MANIFEST_UNKNOWN" })).descriptor;
    const bytes = await this.blobs.readBytes(descriptor);
    if (!bytes)
      throw new RegistryError("MANIFEST_UNKNOWN", "manifest content missing from storage", { digest: digest.value });
    const verified = digestOf(bytes, digest.algorithm).then((computed) => computed.value === digest.value);
    if (this.edge.holds(bytes.byteLength))
      void this.edge.putBlob(digest.value, bytes.byteLength, bytes.slice(), verified);
    return { digest, mediaType: known.mediaType, bytes };
  }

  /**
   * Checks a manifest before it is stored: valid, digest matching the URL when the URL
   * names one, and (unless mirrored) every blob and child manifest it references linked in
   * this repository (read strongly: a blob whose upload just returned 201 must count).
   * Writes nothing: `store` does, once the change seam's policies agreed.
   */
  async prepare(
    reference: Reference,
    bytes: Uint8Array,
    contentType: string,
    options: PutManifestOptions = {},
  ): Promise<PreparedManifest> {
    const manifest = parseManifest(bytes, contentType);
    const references = manifest.blobs.length + manifest.manifests.length;
    if (options.maxReferences !== undefined && references > options.maxReferences) {
      throw new RegistryError(
        "MANIFEST_INVALID",
        `the manifest lists ${references} descriptors; this registry accepts at most ${options.maxReferences}`,
        { references, limit: options.maxReferences },
      );
    }
    const algorithm: DigestAlgorithm = "digest" in reference ? reference.digest.algorithm : "sha256";
    const digest = await digestOf(bytes, algorithm);
    if ("digest" in reference && reference.digest.value !== digest.value) {
      throw new RegistryError("DIGEST_INVALID", "manifest digest does not match the reference", {
        reference: reference.digest.value,
        computed: digest.value,
      });
    }
    // Read before the checks and again after the writes (see store); settled either way.
    const markerBefore = this.blobs.collectorMarker();
    markerBefore.catch(() => undefined);
    if (options.mirroredAt === undefined) await this.checkReferences(manifest);
    const tags = [...new Set([...("tag" in reference ? [reference.tag] : []), ...(options.extraTags ?? [])])];
    return { digest, manifest, tags, bytes, markerBefore, mirroredAt: options.mirroredAt };
  }

  /**
   * Stores a prepared manifest: its bytes, its revision link, its referrer record, then its
   * tags. A tag in `createOnly` (an immutable tag) is only created, first: if it names
   * another manifest by then (a concurrent push won), the store is refused with the reason
   * given, before any other tag is written (the manifest stays, untagged).
   */
  async store(prepared: PreparedManifest, createOnly: ReadonlyMap<string, string> = NONE): Promise<PutManifestResult> {
    const { digest, manifest, tags, bytes, markerBefore, mirroredAt } = prepared;
    const mirrored = mirroredAt !== undefined;
    const descriptor = await this.blobs.putBytes(digest, bytes, Paths.uploadData(crypto.randomUUID()));
    await this.revisions.link(digest, descriptor, { mediaType: manifest.mediaType }, bytes);
    if (manifest.subject) {
      // The subject need not exist (yet): referrers may be pushed before what they refer to.
      await this.referrers.add(manifest.subject.digest, digest, Referrers.describe(manifest, digest, bytes.byteLength));
    }
    // The manifest's half of the collector's protocol (docs/architecture.md, "Garbage
    // collection"): if a run was active when the checks began, or when the writes
    // ended, or one started or ended in between (the marker changed), links it may have
    // removed meanwhile are written again. Two R2 heads when no run is active. Before the
    // tags, so that a tag never names a manifest whose references could not be restored.
    const before = await markerBefore;
    const after = await this.blobs.collectorMarker();
    if (before.active || after.active || before.etag !== after.etag)
      await this.relink(manifest, digest, bytes, mirrored);
    // Tags last: a tag never points at a manifest that is not fully stored.
    const record: TagRecord = {
      digest,
      mediaType: manifest.mediaType,
      size: bytes.byteLength,
      summary: summarize(manifest),
    };
    if (bytes.byteLength <= EMBEDDED_CONTENT_MAX_BYTES) record.content = encodeContent(bytes);
    if (mirrored) record.checkedAt = mirroredAt;
    for (const tag of tags) {
      const reason = createOnly.get(tag);
      if (reason === undefined || (await this.tags.create(tag, record))) continue;
      const current = await this.tags.resolve(tag);
      if (current?.digest.value !== digest.value) throw new RegistryError("DENIED", reason);
    }
    for (const tag of tags) if (!createOnly.has(tag)) await this.tags.set(tag, record);
    return { digest, manifest, tags };
  }

  /** Checks and stores a manifest (prepare, then store), for callers with no policy to ask between. */
  async put(
    reference: Reference,
    bytes: Uint8Array,
    contentType: string,
    options: PutManifestOptions = {},
  ): Promise<PutManifestResult> {
    return this.store(await this.prepare(reference, bytes, contentType, options));
  }

  /**
   * Links again whatever a stored manifest needs that a collection run removed meanwhile:
   * its blobs, its children (and, for a child that had to be linked again, what it needs
   * in turn), and its own revision. `partial`: a mirrored manifest, whose references need
   * not be stored yet (they are fetched when pulled); what is not stored is skipped.
   */
  private async relink(
    manifest: ParsedManifest,
    digest: Digest,
    bytes: Uint8Array,
    partial: boolean,
    depth = 0,
  ): Promise<void> {
    const needed = new Map<
      string,
      { store: LinkedBlobStore; digest: Digest; mediaType?: string; bytes?: Uint8Array }
    >();
    for (const blob of manifest.blobs) {
      if (!blob.urls || blob.urls.length === 0)
        needed.set(`blob ${blob.digest.value}`, { store: this.layers, digest: blob.digest });
    }
    for (const child of manifest.manifests) {
      needed.set(`manifest ${child.digest.value}`, {
        store: this.revisions,
        digest: child.digest,
        mediaType: child.mediaType,
      });
    }
    needed.set(`manifest ${digest.value}`, { store: this.revisions, digest, mediaType: manifest.mediaType, bytes });
    await forEachBounded([...needed.values()], REFERENCE_CHECKS_IN_FLIGHT, async (entry) => {
      if (await entry.store.readLink(entry.digest)) return;
      const descriptor = await this.blobs.stat(entry.digest, { strong: true });
      const content =
        entry.store === this.revisions && !entry.bytes && descriptor ? await this.blobs.readBytes(descriptor) : null;
      if (!descriptor && partial) return;
      if (!descriptor)
        throw unavailable("a blob this manifest references was garbage-collected meanwhile; push it again");
      const record = entry.mediaType === undefined ? {} : { mediaType: entry.mediaType };
      await entry.store.link(entry.digest, descriptor, record, entry.bytes ?? content ?? undefined);
      // A child linked again may have lost its own links too (indexes nest at most a few deep).
      if (content && entry.digest.value !== digest.value && depth < MAX_RELINK_DEPTH) {
        // Parsed by its own media type (the index's descriptor may name another one).
        const child = parseManifestOrNull(content);
        if (child) await this.relink(child, entry.digest, content, partial, depth + 1);
      }
    });
  }

  /**
   * What a DELETE would remove, read but not removed: by tag, the tag (MANIFEST_UNKNOWN
   * when there is none, at `remove`); by digest, the revision link, every tag pointing at
   * it, and its referrer record. Null `digest`: only a KV copy left behind at the edge (a
   * race, a failure) remains, which still goes.
   */
  async planDeletion(reference: Reference): Promise<PlannedDeletion> {
    if ("tag" in reference) return { reference, tags: [reference.tag] };
    if (!(await this.revisions.readLink(reference.digest))) return { reference, tags: [], edgeOnly: true };
    const subject = await this.subjectOf(reference.digest);
    const tags = await this.tags.pointingAt(reference.digest);
    return { reference, tags, subject };
  }

  /**
   * DELETE by tag removes the tag only; DELETE by digest removes the revision link and
   * every tag pointing at it. The bytes stay for garbage collection, and other
   * repositories linking the same manifest are untouched.
   */
  async remove(plan: PlannedDeletion): Promise<void> {
    const { reference } = plan;
    if ("tag" in reference) {
      if (!(await this.tags.delete(reference.tag)))
        throw new RegistryError("MANIFEST_UNKNOWN", undefined, { tag: reference.tag });
      return;
    }
    if (plan.edgeOnly) {
      if (await this.revisions.unlink(reference.digest)) return;
      throw new RegistryError("MANIFEST_UNKNOWN", undefined, { digest: reference.digest.value });
    }
    // Tags first, then the referrer record, then the revision: a failure part-way
    // never leaves a tag or a referrer pointing at a manifest that is gone.
    for (const tag of plan.tags) await this.tags.delete(tag);
    if (plan.subject) await this.referrers.remove(plan.subject, reference.digest);
    if (!(await this.revisions.unlink(reference.digest))) {
      throw new RegistryError("MANIFEST_UNKNOWN", undefined, { digest: reference.digest.value });
    }
  }

  async delete(reference: Reference): Promise<void> {
    await this.remove(await this.planDeletion(reference));
  }

  /** The subject a stored manifest names, if any (null for a manifest this repository lacks). */
  private async subjectOf(digest: Digest): Promise<Digest | null> {
    const link = await this.revisions.readLink(digest);
    const descriptor = link ? await this.blobs.stat(digest) : null;
    const bytes = descriptor ? await this.blobs.readBytes(descriptor) : null;
    if (!bytes || !link) return null;
    try {
      return parseManifest(bytes, link.mediaType ?? "").subject?.digest ?? null;
    } catch {
      return null;
    }
  }

  /**
   * Every referenced blob and child manifest must be linked here, of the declared size.
   * Each distinct digest is read once (a manifest may list one layer thousands of times),
   * with a bounded number of reads in flight.
   */
  private async checkReferences(manifest: ParsedManifest): Promise<void> {
    const checks = new Map<string, ReferenceCheck>();
    const add = (store: LinkedBlobStore, descriptor: Descriptor, kind: string) => {
      const key = `${kind} ${descriptor.digest.value}`;
      const check = checks.get(key) ?? { store, digest: descriptor.digest, sizes: new Set<number>() };
      check.sizes.add(descriptor.size);
      checks.set(key, check);
    };
    for (const blob of manifest.blobs) {
      // Foreign (non-distributable) layers are fetched from their URLs, not from us.
      if (blob.urls && blob.urls.length > 0) continue;
      add(this.layers, blob, "blob");
    }
    for (const child of manifest.manifests) add(this.revisions, child, "manifest");
    await forEachBounded([...checks.values()], REFERENCE_CHECKS_IN_FLIGHT, (check) => this.checkOne(check));
  }

  private async checkOne({ store, digest, sizes }: ReferenceCheck): Promise<void> {
    const link = await store.readLink(digest);
    const descriptor = link ? await this.blobs.stat(digest, { strong: true }) : null;
    if (!descriptor) throw new RegistryError("MANIFEST_BLOB_UNKNOWN", undefined, { digest: digest.value });
    for (const declared of sizes) {
      if (declared !== descriptor.size) {
        throw new RegistryError("MANIFEST_INVALID", "a descriptor's size does not match the stored content", {
          digest: digest.value,
          declared,
          stored: descriptor.size,
        });
      }
    }
  }
}
