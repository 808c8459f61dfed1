import { markRepository, type RepositoryListing } from "./mark";
import { settingsOf } from "../settings/settings";
import { ruleFor } from "./retention";
import { RemovalState } from "./run-tables";
import { batch, cutoff, next, removed, STEP, type Step } from "./run";

/**
 * The decide phase: per repository, what the scan listed goes through the mark
 * (mark.ts), and what it decides is written down: the digests in use, and the tags,
 * revisions and layer links to remove, in that order (the prune's). No storage calls.
 */
export async function decide(step: Step): Promise<void> {
  const { state, tables } = step;
  const rules = settingsOf(step.env).gc.retention;
  const repos = tables.repositoriesAfter(state.cursor ?? "", batch(state, STEP.repositories));
  if (repos.length === 0) return next(state);
  for (const repo of repos) {
    const listing = tables.listing(repo);
    const marks = markRepository(listing, {
      rule: ruleFor(rules, repo),
      startedMs: state.startedMs,
      cutoff: cutoff(state),
      keepTags: immutableTagsOf(step, repo, listing),
    });
    tables.markInUse(marks.inUse);
    for (const tag of listing.tags) {
      if (!marks.tags.has(tag.tag)) continue;
      tables.doomTag(repo, tag.tag, tag.digest, tag.uploaded, tag.etag);
      if (state.dryRun) removed(step, "tag", `${repo}:${tag.tag}`);
    }
    for (const revision of listing.revisions) {
      if (!marks.manifests.has(revision.digest)) continue;
      const references = revision.references;
      tables.doomManifest(
        repo,
        references?.mediaType ?? null,
        revision.digest,
        revision.uploaded,
        references?.subject ?? null,
      );
      if (state.dryRun) removed(step, "manifest", `${repo}@${revision.digest}`);
    }
    for (const link of listing.links) {
      if (!marks.links.has(link.digest)) continue;
      tables.doomLink(repo, link.digest, link.uploaded);
      if (state.dryRun) removed(step, "link", `${repo}@${link.digest}`);
    }
  }
  state.cursor = repos[repos.length - 1];
  state.phaseDone += repos.length;
}

/**
 * The tags of `repo` IMMUTABLE_TAGS names: retention never removes them (the immutable-tags
 * policy would refuse it; a dry run must not list them either).
 */
function immutableTagsOf(step: Step, repo: string, listing: RepositoryListing): Set<string> {
  const immutable = settingsOf(step.env).immutableTags;
  if (!immutable.any || !immutable.covers(repo)) return new Set();
  return new Set(listing.tags.filter((tag) => immutable.ruleFor(repo, tag.tag) !== undefined).map((tag) => tag.tag));
}

/**
 * After a policy refused a tag's or a revision's removal (prune): the repository is
 * marked again with what was refused kept, so what that needs is in use (never condemned)
 * and its removals not yet made are spared. What was removed before the refusal and is
 * needed now is linked again by the check, as for a concurrent push.
 */
export function markAgain(step: Step, repo: string): void {
  const { state, tables } = step;
  const refused = tables.removalsIn(repo, RemovalState.refused);
  const listing = tables.listing(repo);
  const marks = markRepository(listing, {
    rule: ruleFor(settingsOf(step.env).gc.retention, repo),
    startedMs: state.startedMs,
    cutoff: cutoff(state),
    keepTags: new Set([
      ...immutableTagsOf(step, repo, listing),
      ...refused.filter((row) => row.kind === "tag").map((row) => row.name ?? ""),
    ]),
    keepManifests: new Set(refused.filter((row) => row.kind === "manifest").map((row) => row.digest)),
  });
  tables.markInUse(marks.inUse);
  for (const row of tables.removalsIn(repo, RemovalState.pending)) {
    const still =
      row.kind === "tag"
        ? marks.tags.has(row.name ?? "")
        : row.kind === "manifest"
          ? marks.manifests.has(row.digest)
          : marks.links.has(row.digest);
    if (!still) tables.setRemovalState(row.seq, RemovalState.spared);
  }
}
