import type { Digest } from "../oci/digest";
import { parseManifest } from "../oci/manifest";
import { RegistryError } from "../oci/errors";
import { BlobStore, descriptorMetadata, type BlobDescriptor } from "./blob-store";
import { changeSeamOf, type Change, type ChangeContext, type ChangeSeam } from "./changes";
import { LinkedBlobStore } from "./linked-blob-store";
import { Paths } from "./paths";
import { Referrers } from "./referrers";
import type { Storage } from "./storage";
import { Tags } from "./tags";

/**
 * The garbage collector's writes (src/gc; docs/architecture.md, "Garbage collection"):
 * every removal a run makes, each conditional on what it listed being unchanged, and
 * each a `collect` change through the change seam (policies may refuse it; listeners hear
 * of it once it is made); the blob descriptors' marks (condemned, revived, tombstoned,
 * reclaimed); what a run puts back for a concurrent push; the upload data nothing names;
 * and the run marker manifest PUTs read. The collector itself writes no key.
 */

/** How a removal went: made, not made (changed since listed, or gone), or refused by a policy. */
export type CollectOutcome = "removed" | "unchanged" | "refused";

/** When a listed item was written, and whether its removal is a retry (see removeTag). */
export interface Listed {
  /** Its write time when listed (R2 `uploaded`, ms): it is removed only if that is unchanged. */
  uploaded: number;
  /** A retried removal: found gone, it was removed by the earlier attempt; else by a client. */
  resumed: boolean;
}

/** The seam a run's removals go through: the same policies and listeners as every change (changeSeamOf). */
export function collectorSeam(env: Env): ChangeSeam {
  return changeSeamOf(env);
}

/** The collector as an actor: `requestId` is the run's id. */
export function collectorContext(runId: string): ChangeContext {
  return { actor: { kind: "collector", name: "collector" }, requestId: runId };
}

export class CollectorStore {
  private readonly bucket: R2Bucket;
  private readonly blobs: BlobStore;

  constructor(
    private readonly storage: Storage,
    private readonly seam: ChangeSeam,
    private readonly context: ChangeContext,
  ) {
    this.bucket = storage.bucket;
    this.blobs = new BlobStore(storage);
  }

  /**
   * The run marker (Paths.gcActive) says whether a run may be removing links: written
   * `active` before the scan and `idle` at the end, never deleted, so a manifest PUT that
   * straddles a run's start or end sees it change (Manifests.put).
   */
  async markRun(runId: string, state: "active" | "idle"): Promise<void> {
    await this.bucket.put(Paths.gcActive, JSON.stringify({ run: runId, state }), { customMetadata: { state } });
  }

  // ---- links and tags (the prune) ----

  async removeTag(repository: string, tag: string, target: Digest, listed: Listed): Promise<CollectOutcome> {
    return this.collect({ action: "collect", kind: "tag", repository, digest: target, tag }, async () => {
      const tags = new Tags(this.bucket, repository);
      const written = await tags.writtenAt(tag);
      // Compared by write time: an etag is the body's MD5, the same for a tag pushed again.
      if (!unchanged(written, listed)) return false;
      if (written !== null) await tags.removeRecord(tag);
      return true;
    });
  }

  /** A revision link, with its referrer record (when it has a subject) and its KV copy. */
  async removeRevision(
    repository: string,
    digest: Digest,
    subject: Digest | null,
    listed: Listed,
  ): Promise<CollectOutcome> {
    return this.collect({ action: "collect", kind: "manifest", repository, digest }, async () => {
      const revisions = this.links(repository, "revision");
      const written = await revisions.writtenAt(digest);
      // Written again since the scan (a push, a manifest PUT): in use, left alone.
      if (!unchanged(written, listed)) return false;
      if (subject) await new Referrers(this.bucket, repository).remove(subject, digest);
      await revisions.removeUnused(digest, written !== null);
      return true;
    });
  }

  /** A layer link, with its KV copy. */
  async removeLayerLink(repository: string, digest: Digest, listed: Listed): Promise<CollectOutcome> {
    return this.collect({ action: "collect", kind: "layer", repository, digest }, async () => {
      const layers = this.links(repository, "layer");
      const written = await layers.writtenAt(digest);
      // Written again since the scan (a push, a mount): in use, left alone.
      if (!unchanged(written, listed)) return false;
      await layers.removeUnused(digest, written !== null);
      return true;
    });
  }

  /** Writes back a revision link (and its referrer record) the prune removed, for a write made meanwhile. */
  async restoreRevision(repository: string, digest: Digest, mediaType: string): Promise<void> {
    const descriptor = await this.blobs.stat(digest, { strong: true });
    const bytes = descriptor ? await this.blobs.readBytes(descriptor) : null;
    if (!descriptor || !bytes) return;
    try {
      const manifest = parseManifest(bytes, mediaType);
      if (manifest.subject) {
        await new Referrers(this.bucket, repository).add(
          manifest.subject.digest,
          digest,
          Referrers.describe(manifest, digest, bytes.byteLength),
        );
      }
    } catch {
      // Stored manifests parsed when pushed; one that no longer does is linked as it was.
    }
    await this.links(repository, "revision").link(digest, descriptor, mediaType ? { mediaType } : {}, bytes);
  }

  /** Writes back a layer link the prune removed, if its blob is still stored. */
  async restoreLayerLink(repository: string, digest: Digest): Promise<void> {
    const descriptor = await this.blobs.stat(digest, { strong: true });
    if (descriptor) await this.links(repository, "layer").link(digest, descriptor);
  }

  // ---- blobs (condemn, reclaim) ----

  /**
   * Condemns a descriptor record no link names, if it is still the one listed (its
   * `etag`): the record's etag after, or null when it changed meanwhile (not this run's to
   * condemn). Any writer linking the blob afterwards revives it (BlobStore.ensureLive).
   */
  async condemnBlob(record: { key: string; etag: string }, descriptor: BlobDescriptor): Promise<string | null> {
    // R2's etag is the MD5 of the body: the mark goes into the body too (with its time,
    // so no two condemnations share an etag), or a revival, which writes the plain
    // descriptor back, could not be told from it by the tombstone's condition.
    const since = String(Date.now());
    const written = await this.bucket.put(record.key, JSON.stringify({ ...plain(descriptor), condemned: since }), {
      httpMetadata: { contentType: "application/json" },
      customMetadata: { ...descriptorMetadata(descriptor), gc: "condemned", since },
      onlyIf: { etagMatches: record.etag },
    });
    return written?.etag ?? null;
  }

  /** Writes the plain descriptor back over a condemned record (if unchanged): the blob is in use. */
  async reviveBlob(record: { key: string; etag: string }, descriptor: BlobDescriptor): Promise<void> {
    await this.bucket.put(record.key, JSON.stringify(plain(descriptor)), {
      httpMetadata: { contentType: "application/json" },
      customMetadata: descriptorMetadata(descriptor),
      onlyIf: { etagMatches: record.etag },
    });
  }

  /**
   * Removes a condemned blob: tombstones its record if it is still the condemned one
   * (`etag`; `tombstone`: an earlier attempt or run tombstoned it already), then deletes
   * its KV copy and its bytes, then marks the tombstone reclaimed. "removed" once the
   * tombstone is marked; "unchanged" when a writer revived or replaced the record first.
   * A refused removal revives the record.
   */
  async reclaimBlob(blob: {
    digest: Digest;
    etag: string;
    key: string | null;
    size: number;
    tombstone: boolean;
  }): Promise<CollectOutcome> {
    const recordKey = Paths.blobDescriptor(blob.digest);
    const meta = { key: blob.key ?? "", size: String(blob.size), gc: "tombstone" };
    const outcome = await this.collect({ action: "collect", kind: "blob", digest: blob.digest }, async () => {
      let etag = blob.etag;
      if (!blob.tombstone) {
        // Exactly one of this and a writer's revival (BlobStore.ensureLive) wins.
        const tombstone = await this.bucket.put(
          recordKey,
          JSON.stringify({ digest: blob.digest.value, tombstone: true }),
          {
            httpMetadata: { contentType: "application/json" },
            customMetadata: meta,
            onlyIf: { etagMatches: blob.etag },
          },
        );
        if (tombstone) etag = tombstone.etag;
        else {
          // Revived or replaced; or this step's earlier attempt wrote the tombstone.
          const head = await this.bucket.head(recordKey);
          const ours =
            head?.customMetadata?.gc === "tombstone" &&
            head.customMetadata.reclaimed === undefined &&
            head.customMetadata.key === meta.key;
          if (!head || !ours) return false;
          etag = head.etag;
        }
      }
      await this.storage.kv.delete(Paths.kvBlob(blob.digest));
      if (blob.key) await this.bucket.delete(blob.key);
      // The tombstone stays, marked reclaimed (R2 has no conditional delete: deleting it
      // could delete a descriptor a writer published over it meanwhile). A publish of the
      // digest replaces it; later runs skip it.
      const reclaimed = await this.bucket.put(
        recordKey,
        JSON.stringify({ digest: blob.digest.value, tombstone: true, reclaimed: true }),
        {
          httpMetadata: { contentType: "application/json" },
          customMetadata: { ...meta, reclaimed: "1" },
          onlyIf: { etagMatches: etag },
        },
      );
      return reclaimed !== null;
    });
    // A refused blob stays in use; a tombstone (from an earlier attempt) stays for a later run.
    if (outcome === "refused" && !blob.tombstone && blob.key !== null) {
      await this.reviveBlob(
        { key: recordKey, etag: blob.etag },
        { digest: blob.digest.value, size: blob.size, key: blob.key },
      );
    }
    return outcome;
  }

  /** Deletes upload data no descriptor names (one call). */
  async removeOrphans(keys: string[]): Promise<void> {
    if (keys.length > 0) await this.bucket.delete(keys);
  }

  private links(repository: string, kind: "layer" | "revision"): LinkedBlobStore {
    return new LinkedBlobStore(this.storage, this.blobs, repository, kind);
  }

  /**
   * Asks the policies, makes the removal, and tells the listeners when it was made. A
   * policy's refusal leaves the item as it is; anything else thrown (a failed write, or a
   * policy that could not decide for want of storage: 503) fails the step, which is retried.
   */
  private async collect(change: Change, write: () => Promise<boolean>): Promise<CollectOutcome> {
    let allowed = false;
    try {
      const removed = await this.seam.apply(change, this.context, () => {
        allowed = true;
        return write();
      });
      return removed ? "removed" : "unchanged";
    } catch (error) {
      if (allowed || (error instanceof RegistryError && error.status === 503)) throw error;
      return "refused";
    }
  }
}

/** Whether an item listed as `listed` is as it was: written then, or (on a retry) gone since. */
function unchanged(written: number | null, listed: Listed): boolean {
  return written !== null ? written === listed.uploaded : listed.resumed;
}

/** Just the descriptor's fields (a condemned record's body has its mark too). */
function plain(descriptor: BlobDescriptor): BlobDescriptor {
  return { digest: descriptor.digest, size: descriptor.size, key: descriptor.key };
}
