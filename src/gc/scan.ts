import { parseDigest } from "../oci/digest";
import { batch, inParallel, markRun, next, STEP, type Step } from "./run";

/**
 * The phases that learn what the registry holds (docs/architecture.md, "Garbage
 * collection"): scan lists every link and tag into the run's tables; tags reads the
 * targets a listing did not carry; manifests reads what each manifest references, once
 * per digest ever. Reads only, but the run marker.
 */

/** Lists `repositories/` (a few pages per step) into the tag, rev and link tables. */
export async function scan(step: Step): Promise<void> {
  const { state, tables, inventory } = step;
  // Before the first listing: a manifest PUT that does not see the run active wrote its
  // revision before the scan lists it (docs/architecture.md, "Garbage collection").
  if (!state.cursor) await markRun(step, "active");
  for (let page = 0; page < STEP.listPages; page++) {
    const listing = await inventory.repositoryEntries({
      limit: state.batch ?? 1000,
      metadata: true,
      ...(state.cursor ? { cursor: state.cursor } : {}),
    });
    for (const entry of listing.items) {
      tables.addRepository(entry.name);
      if (entry.link?.kind === "layer") {
        tables.addLink(entry.name, entry.link.digest.value, entry.uploaded);
        state.scanned.links++;
      } else if (entry.link?.kind === "revision") {
        tables.addRevision(entry.name, entry.link.digest.value, entry.uploaded);
        state.scanned.manifests++;
      } else if (entry.tag !== undefined) {
        tables.addTag(entry.name, entry.tag, entry.target ?? null, entry.uploaded, entry.etag);
        state.scanned.tags++;
      }
    }
    state.phaseDone += listing.listed;
    if (listing.cursor === null) return next(state);
    state.cursor = listing.cursor;
  }
}

/** Reads the target of tags whose listing did not carry it (written before tags carried it). */
export async function readTags(step: Step): Promise<void> {
  const { state, tables, inventory } = step;
  const rows = tables.tagsWithoutTarget(batch(state, STEP.tagReads));
  if (rows.length === 0) return next(state);
  await inParallel(rows, async ({ repo, tag }) => {
    const target = await inventory.tagTarget(repo, tag);
    // A tag gone or unreadable names nothing; '' keeps it from being read again.
    tables.setTagTarget(repo, tag, target?.value ?? "");
  });
  state.phaseDone += rows.length;
}

/** Reads the references of every manifest not read by an earlier run (digests are immutable). */
export async function readManifests(step: Step): Promise<void> {
  const { state, tables, inventory } = step;
  const [afterRepo = "", afterDigest = ""] = parseCursor(state.cursor);
  const rows = tables.revisionsToRead(afterRepo, afterDigest, batch(state, STEP.manifestReads));
  if (rows.length === 0) return next(state);
  await inParallel(rows, async ({ repo, digest }) => {
    const references = await inventory.manifestReferences(repo, parseDigest(digest));
    // Unreadable (its bytes are gone): kept, and its repository loses no links this run.
    if (!references) tables.addUnreadable(repo, digest);
    else tables.remember(digest, references);
  });
  const last = rows[rows.length - 1];
  if (last) state.cursor = JSON.stringify([last.repo, last.digest]);
  state.phaseDone += rows.length;
}

/** A `[repo, digest]` cursor; anything else (a cursor of an earlier version) starts over. */
function parseCursor(cursor: string | undefined): string[] {
  try {
    const value: unknown = cursor ? JSON.parse(cursor) : [];
    return Array.isArray(value) && value.every((part) => typeof part === "string") ? value : [];
  } catch {
    return [];
  }
}
