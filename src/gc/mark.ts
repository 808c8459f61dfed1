import type { ManifestReferences } from "../registry/inventory";
import { tagsToRemove, type CompiledRule } from "./retention";

export type { ManifestReferences };

/**
 * The mark phase of garbage collection, as a pure function of what a run listed of one
 * repository (docs/architecture.md, "Garbage collection"): which tags retention removes,
 * which manifest revisions are kept, which layer links no kept manifest uses, and every
 * digest in use. No storage: the driver (collector.ts) gathers the listing in its tables
 * and writes down the decision; the prune phase removes it.
 */

export interface ListedTag {
  tag: string;
  /** The manifest it names; "" when its record was gone or unreadable (it names nothing). */
  digest: string;
  /** When the tag was last written (R2 `uploaded`, ms). */
  uploaded: number;
  /**
   * When the manifest it names was last pulled, as late as the pull records allow (ms:
   * the recorded time plus PULL_RECORD_INTERVAL); absent: no pull recorded, or no rule
   * asks (RETENTION `pulledWithin`).
   */
  lastPull?: number;
}

export interface ListedRevision {
  digest: string;
  uploaded: number;
  /** Null when its bytes could not be read: such a revision is always kept. */
  references: ManifestReferences | null;
}

export interface ListedLink {
  digest: string;
  uploaded: number;
}

/** One repository as a run listed it. */
export interface RepositoryListing {
  tags: ListedTag[];
  revisions: ListedRevision[];
  links: ListedLink[];
  /** Some revision's bytes could not be read: what it uses is unknown, so no link goes this run. */
  unsure: boolean;
}

export interface MarkOptions {
  /** The retention rule of the repository (retention.ruleFor), if any. */
  rule: CompiledRule | null;
  /** When the run started (ms): retention's "now". */
  startedMs: number;
  /** Links and untagged revisions written at or after this (ms) are never removed: the grace period. */
  cutoff: number;
  /** Tags kept whatever retention says: their removal was refused (a ChangePolicy). */
  keepTags?: ReadonlySet<string>;
  /** Revisions kept whatever the rules say: their removal was refused. */
  keepManifests?: ReadonlySet<string>;
}

/** The decision for one repository. */
export interface Marks {
  /** Tag names retention removes. */
  tags: Set<string>;
  /** Revisions (digests) nothing keeps. */
  manifests: Set<string>;
  /** Layer links (digests) no kept manifest uses, older than the cutoff. */
  links: Set<string>;
  /**
   * Digests in use: kept revisions, the blobs they reference, and the links that stay. A
   * blob in use is never condemned, even where the repository lost its link (a failure).
   */
  inUse: Set<string>;
}

/**
 * A revision is kept while a tag names it, while a kept index lists it, or while its
 * subject is kept (referrers follow their subject); untagged revisions are kept unless
 * retention removes them (their every tag removed by a rule, or untagged for longer than
 * `removeUntaggedOlderThan` and older than the cutoff). A layer link stays while a kept
 * revision uses its blob, while it is younger than the cutoff, or while the listing is
 * unsure.
 */
export function markRepository(listing: RepositoryListing, options: MarkOptions): Marks {
  const { rule, startedMs, cutoff } = options;
  const keepTags = options.keepTags ?? new Set<string>();
  const keepManifests = options.keepManifests ?? new Set<string>();
  // A tag whose record was gone or unreadable ('' digest) names nothing: not ranked.
  const removedTags = tagsToRemove(
    rule,
    listing.tags
      .filter((t) => t.digest !== "")
      .map((t) => ({ tag: t.tag, pushedAt: t.uploaded, pulledAt: t.lastPull })),
    startedMs,
  );
  for (const tag of keepTags) removedTags.delete(tag);
  const tagged = new Set(listing.tags.filter((t) => !removedTags.has(t.tag)).map((t) => t.digest));
  const untaggedByRule = new Set(listing.tags.filter((t) => removedTags.has(t.tag)).map((t) => t.digest));
  const byDigest = new Map(listing.revisions.map((revision) => [revision.digest, revision]));
  const kept = new Set<string>();
  const queue: string[] = [];
  const keep = (digest: string) => {
    if (kept.has(digest) || !byDigest.has(digest)) return;
    kept.add(digest);
    queue.push(digest);
  };
  for (const revision of listing.revisions) {
    const removable =
      revision.references !== null &&
      !tagged.has(revision.digest) &&
      !keepManifests.has(revision.digest) &&
      (untaggedByRule.has(revision.digest) ||
        (rule?.removeUntaggedOlderThan !== undefined &&
          startedMs - revision.uploaded > rule.removeUntaggedOlderThan * 1000 &&
          // Untagged and young: maybe a child pushed before its index (grace, as for links).
          revision.uploaded < cutoff));
    if (!removable) keep(revision.digest);
  }
  // Children of kept indexes, and referrers of kept subjects, to a fixed point.
  for (;;) {
    while (queue.length > 0) {
      const digest = queue.pop() ?? "";
      for (const child of byDigest.get(digest)?.references?.children ?? []) keep(child);
    }
    const before = kept.size;
    for (const revision of listing.revisions) {
      const subject = revision.references?.subject;
      if (subject && kept.has(subject)) keep(revision.digest);
    }
    if (kept.size === before && queue.length === 0) break;
  }
  // A referrer whose subject goes in this run goes in the next: if a push brings the
  // subject back meanwhile, a PUT's relink (which restores the subject only) keeps it.
  for (const revision of listing.revisions) {
    const subject = revision.references?.subject;
    if (!kept.has(revision.digest) && subject && byDigest.has(subject)) kept.add(revision.digest);
  }
  const inUse = new Set<string>();
  const used = new Set<string>();
  for (const digest of kept) {
    for (const blob of byDigest.get(digest)?.references?.blobs ?? []) {
      used.add(blob);
      inUse.add(blob);
    }
    inUse.add(digest);
  }
  const links = new Set<string>();
  for (const link of listing.links) {
    if (used.has(link.digest) || listing.unsure || link.uploaded >= cutoff) inUse.add(link.digest);
    else links.add(link.digest);
  }
  return {
    tags: removedTags,
    manifests: new Set(listing.revisions.filter((r) => !kept.has(r.digest)).map((r) => r.digest)),
    links,
    inUse,
  };
}
