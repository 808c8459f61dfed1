import { parseDigest } from "../oci/digest";
import { pullRecordsOf } from "../registry/pull-records";
import { settingsOf } from "../settings/settings";
import { ruleFor } from "./retention";
import { batch, inParallel, markRun, next, STEP, type Step } from "./run";

/**
 * The phases that learn what the registry holds (docs/architecture.md, "Garbage
 * collection"): scan lists every link and tag into the run's tables; tags reads the
 * targets a listing did not carry; manifests reads what each manifest references, once
 * per digest ever; pulls reads when manifests were last pulled, where a retention rule
 * asks. Reads only, but the run marker.
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

/**
 * Reads the pull records (D1) of repositories whose retention rule has `pulledWithin`, in
 * key order, STEP.pullRows a query: nothing when no rule asks. A manifest counts as pulled
 * until one PULL_RECORD_INTERVAL after its recorded time: an isolate writes a record at
 * most that often, so the last pull can be that much later than the record says. A D1
 * failure fails the step (retried): no tag is judged unpulled for want of its record.
 */
export async function readPulls(step: Step): Promise<void> {
  const { state, tables, env } = step;
  const settings = settingsOf(env);
  const rules = settings.gc.retention;
  if (!rules.some((rule) => rule.pulledWithin !== undefined)) return next(state);
  const slackMs = (settings.pullRecordIntervalSeconds ?? 0) * 1000;
  const records = pullRecordsOf(env);
  const asks = new Map<string, boolean>();
  const limit = batch(state, STEP.pullRows);
  for (let page = 0; page < STEP.pullPages; page++) {
    const [repository = "", digest = ""] = parseCursor(state.cursor);
    const rows = await records.page(state.cursor ? [repository, digest] : null, limit);
    for (const row of rows) {
      let asked = asks.get(row.repository);
      if (asked === undefined) {
        asked = ruleFor(rules, row.repository)?.pulledWithin !== undefined;
        asks.set(row.repository, asked);
      }
      if (asked) tables.addPull(row.repository, row.digest, row.lastPulled + slackMs);
    }
    state.phaseDone += rows.length;
    const last = rows.at(-1);
    if (rows.length < limit || !last) return next(state);
    state.cursor = JSON.stringify([last.repository, last.digest]);
  }
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
