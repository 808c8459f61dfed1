import { settingsOf } from "../settings/settings";
import { digestOrNull, parseDigest } from "../oci/digest";
import type { CollectOutcome, CollectorStore } from "../registry/collection";
import type { ManifestReferences } from "../registry/inventory";
import { markAgain } from "./decide";
import { RemovalState, type Removal } from "./run-tables";
import { batch, cutoff, inParallel, next, removed, STEP, type GcRefused, type Step } from "./run";

/**
 * The phases that remove what decide doomed, each removal through the registry layer
 * (CollectorStore: conditional, and a `collect` change through the change seam), and put
 * back what writes made during the run need (docs/architecture.md, "Garbage collection").
 */

/** Clock slack between the Worker and R2's `uploaded` times. */
const CLOCK_MARGIN_MS = 60_000;
/** Beyond the upload TTL before an unnamed `data/` object is deleted. */
const ORPHAN_MARGIN_MS = 60 * 60_000;

const REFUSED: Record<Removal["kind"], keyof GcRefused> = { tag: "tags", manifest: "manifests", link: "links" };

/** Removes what decide doomed, each re-checked just before (a push may have written it again). */
export async function prune(step: Step): Promise<void> {
  const { state, tables, store } = step;
  const rows = tables.pendingRemovals(batch(state, STEP.prune));
  if (rows.length === 0) return next(state);
  let done = 0;
  // In order: a repository's tags before its revisions before its links (decide's order).
  for (const row of rows) {
    // Begun: this row's deletes began. Gone on a retry then means removed by the earlier
    // attempt (check must still look at it); gone before they began, by a client.
    const resumed = row.done === RemovalState.begun;
    if (!resumed) tables.setRemovalState(row.seq, RemovalState.begun);
    const outcome = await removeOne(store, row, resumed);
    tables.setRemovalState(row.seq, RemovalState[outcome]);
    done++;
    if (outcome === "removed") {
      if (row.kind === "tag") removed(step, "tag", `${row.repo}:${row.name ?? ""}`);
      else removed(step, row.kind, `${row.repo}@${row.digest}`);
    } else if (outcome === "refused") {
      state.refused[REFUSED[row.kind]]++;
      // A refused link stays, so its blob is in use.
      if (row.kind === "link") tables.markInUse([row.digest]);
      else {
        // What a refused tag or revision needs stays: the repository is marked again, which
        // may spare rows of this batch: the rest waits for the next step, which reads them again.
        markAgain(step, row.repo);
        break;
      }
    }
  }
  state.phaseDone += done;
}

function removeOne(store: CollectorStore, row: Removal, resumed: boolean): Promise<CollectOutcome> {
  const listed = { uploaded: row.uploaded, resumed };
  if (row.kind === "tag") {
    // The scan keeps only targets that are digests; a row of an earlier version's run may not.
    const target = digestOrNull(row.digest);
    if (row.name === null || !target) return Promise.resolve("unchanged");
    return store.removeTag(row.repo, row.name, target, listed);
  }
  const digest = parseDigest(row.digest);
  if (row.kind === "link") return store.removeLayerLink(row.repo, digest, listed);
  return store.removeRevision(row.repo, digest, row.subject ? parseDigest(row.subject) : null, listed);
}

/**
 * Per pruned repository: a manifest written (or a tag set) since the scan may need what
 * was just removed; it is linked again. The other half of this is the manifest PUT's own
 * check while the run's marker exists (Manifests.put); between them, every interleaving
 * is covered (docs/architecture.md). What a refused removal kept is looked at the same way.
 */
export async function check(step: Step): Promise<void> {
  const { state, tables, inventory, store } = step;
  const repos = tables.prunedRepositoriesAfter(state.cursor ?? "", batch(state, STEP.checkRepositories));
  if (repos.length === 0) return next(state);
  const since = state.startedMs - CLOCK_MARGIN_MS;
  for (const repo of repos) {
    const removedRows = tables.removalsIn(repo, RemovalState.removed).filter((row) => row.kind !== "tag");
    const removedLinks = new Set(removedRows.filter((r) => r.kind === "link").map((r) => r.digest));
    const removedRevs = new Set(removedRows.filter((r) => r.kind === "manifest").map((r) => r.digest));
    if (removedLinks.size === 0 && removedRevs.size === 0) continue;
    // Every manifest a new write needs, transitively: what a restored index lists, what a
    // restored manifest references, and the referrers of a restored subject.
    const queue: string[] = [];
    const seen = new Set<string>();
    const need = (digest: string) => {
      if (seen.has(digest)) return;
      seen.add(digest);
      queue.push(digest);
    };
    for await (const target of inventory.tagTargetsWrittenSince(repo, since)) need(target);
    for await (const digest of inventory.revisionsWrittenSince(repo, since)) need(digest);
    // A refused tag's manifest, or a refused revision, may need what went before the refusal.
    for (const row of tables.removalsIn(repo, RemovalState.refused)) if (row.kind !== "link") need(row.digest);
    while (queue.length > 0) {
      const digest = queue.shift() ?? "";
      const references = await referencesOf(step, repo, digest);
      if (removedRevs.delete(digest)) {
        await store.restoreRevision(repo, parseDigest(digest), references?.mediaType ?? "");
        for (const row of removedRows) if (row.kind === "manifest" && row.subject === digest) need(row.digest);
      }
      if (!references) continue;
      for (const child of references.children) need(child);
      for (const blob of references.blobs) {
        if (removedLinks.delete(blob)) await store.restoreLayerLink(repo, parseDigest(blob));
      }
    }
  }
  state.cursor = repos[repos.length - 1];
  state.phaseDone += repos.length;
}

/** A manifest's references: from the table when read before, else read now (and kept). */
async function referencesOf(step: Step, repo: string, digest: string): Promise<ManifestReferences | null> {
  const known = step.tables.references(digest);
  if (known) return known;
  const references = await step.inventory.manifestReferences(repo, parseDigest(digest));
  if (references) step.tables.remember(digest, references);
  return references;
}

/**
 * Lists blob descriptors: an unmarked one older than the cutoff is condemned (a
 * conditional rewrite with the mark), a marked one that an earlier run condemned is
 * revived, and every object a descriptor names is remembered for the orphan sweep.
 */
export async function condemn(step: Step): Promise<void> {
  const { state, tables, inventory, store } = step;
  const listing = await inventory.descriptors({
    limit: batch(state, STEP.blobPage),
    ...(state.cursor ? { cursor: state.cursor } : {}),
  });
  const cutoffMs = cutoff(state);
  await inParallel(listing.items, async (listed) => {
    state.scanned.blobs++;
    const meta = listed.metadata;
    const descriptor = await inventory.descriptorOf(listed);
    if (descriptor) tables.addNamed(descriptor.key);
    const isMarked = tables.isInUse(listed.digest);
    if (meta.gc === "tombstone") {
      // Tombstones stay (see reclaim). One whose bytes may remain (a run stopped part-way
      // through it) is finished: a tombstone is absent to every reader.
      if (!state.dryRun && meta.reclaimed === undefined) {
        const size = Number(meta.size ?? 0);
        tables.condemn({ digest: listed.digest, etag: listed.etag, key: meta.key ?? null, size, tombstone: 1 });
      }
      return;
    }
    if (!descriptor) return; // not a descriptor: npm run verify reports it; never touched here
    if (isMarked) {
      if (meta.gc === "condemned" && !state.dryRun) await store.reviveBlob(listed, descriptor);
      return;
    }
    if (listed.uploaded >= cutoffMs) return;
    if (state.dryRun) return removed(step, "blob", listed.digest, descriptor.size);
    let etag = listed.etag;
    if (meta.gc !== "condemned") {
      const written = await store.condemnBlob(listed, descriptor);
      if (written === null) return; // changed meanwhile: not this run's to condemn
      etag = written;
    }
    tables.condemn({ digest: listed.digest, etag, key: descriptor.key, size: descriptor.size, tombstone: 0 });
  });
  state.phaseDone += listing.listed;
  if (listing.cursor === null) return next(state);
  state.cursor = listing.cursor;
}

/** Lists every link again, after the last condemnation: a blob linked now is spared. */
export async function confirm(step: Step): Promise<void> {
  const { state, tables, inventory } = step;
  if (!state.cursor && !tables.hasCondemned()) return next(state);
  for (let page = 0; page < STEP.listPages; page++) {
    const listing = await inventory.repositoryEntries({
      limit: state.batch ?? 1000,
      metadata: false,
      ...(state.cursor ? { cursor: state.cursor } : {}),
    });
    for (const entry of listing.items) if (entry.link) tables.spare(entry.link.digest.value);
    state.phaseDone += listing.listed;
    if (listing.cursor === null) return next(state);
    state.cursor = listing.cursor;
  }
}

/** Tombstones each still-condemned descriptor (if unchanged), then deletes its KV copy, bytes and record. */
export async function reclaim(step: Step): Promise<void> {
  const { state, tables, store } = step;
  const rows = tables.condemnedBatch(batch(state, STEP.reclaim));
  if (rows.length === 0) return next(state);
  await inParallel(rows, async (row) => {
    const outcome = await store.reclaimBlob({
      digest: parseDigest(row.digest),
      etag: row.etag,
      key: row.key,
      size: row.size,
      tombstone: row.tombstone !== 0,
    });
    if (outcome === "removed") removed(step, "blob", row.digest, row.size);
    else if (outcome === "refused") state.refused.blobs++;
    tables.forget(row.digest);
  });
  state.phaseDone += rows.length;
}

/** Deletes `data/` objects no descriptor names, older than the upload TTL (an upload's, never published). */
export async function orphans(step: Step): Promise<void> {
  const { state, tables, inventory, store } = step;
  const listing = await inventory.dataObjects({
    limit: batch(state, STEP.orphanPage),
    ...(state.cursor ? { cursor: state.cursor } : {}),
  });
  // The upload TTL and an hour: a session's retried commit may publish its object until then.
  const oldest = Date.now() - settingsOf(step.env).uploadTtlSeconds * 1000 - ORPHAN_MARGIN_MS;
  const keys: string[] = [];
  for (const object of listing.items) {
    state.scanned.dataObjects++;
    if (object.uploaded >= oldest) continue;
    if (tables.isNamed(object.key)) continue;
    // Withdrawn by the integrity check's repair and kept for inspection: never swept.
    if (await inventory.isQuarantined(object.key)) continue;
    keys.push(object.key);
    removed(step, "orphan", object.key, object.size);
  }
  if (!state.dryRun) await store.removeOrphans(keys);
  state.phaseDone += listing.listed;
  if (listing.cursor === null) return next(state);
  state.cursor = listing.cursor;
}
