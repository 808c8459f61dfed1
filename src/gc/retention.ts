import type { CompiledRule } from "../settings/retention";

export type { CompiledRule } from "../settings/retention";

/**
 * What retention rules (RETENTION, parsed by src/settings/retention.ts) remove: the rule
 * that applies to a repository, and the tags it removes.
 */
export function ruleFor(rules: CompiledRule[], repository: string): CompiledRule | null {
  return rules.find((rule) => rule.pattern.test(repository)) ?? null;
}

export interface TagEntry {
  tag: string;
  /** When the tag was last written (R2 `uploaded`), ms. */
  pushedAt: number;
  /** When its manifest was last pulled, as late as it can have been (ms); absent: never recorded. */
  pulledAt?: number | undefined;
}

/** The tags a rule removes (see the module comment). */
export function tagsToRemove(rule: CompiledRule | null, tags: TagEntry[], now: number): Set<string> {
  const removed = new Set<string>();
  if (
    !rule ||
    (rule.keepTags === undefined && rule.removeTagsOlderThan === undefined && rule.pulledWithin === undefined)
  )
    return removed;
  // Tags a pattern keeps do not take places among the N newest.
  const ranked = tags.filter((entry) => !rule.keepPatterns.some((pattern) => pattern.test(entry.tag)));
  const newestFirst = ranked.sort((a, b) => b.pushedAt - a.pushedAt || a.tag.localeCompare(b.tag));
  newestFirst.forEach((entry, rank) => {
    if (rule.keepTags !== undefined && rank < rule.keepTags) return;
    if (rule.removeTagsOlderThan !== undefined && now - entry.pushedAt < rule.removeTagsOlderThan * 1000) return;
    // Used within pulledWithin: pulled, or pushed (a tag never pulled is not removed before it is that old).
    const lastUse = Math.max(entry.pushedAt, entry.pulledAt ?? 0);
    if (rule.pulledWithin !== undefined && now - lastUse < rule.pulledWithin * 1000) return;
    removed.add(entry.tag);
  });
  return removed;
}
