import { namePattern } from "../auth/policy";

/**
 * Retention rules (setting RETENTION, JSON; docs/configuration.md): which tags and
 * untagged manifests a garbage collection run removes besides what nothing uses. A list
 * of rules; the first whose `repositories` pattern matches a repository applies to it
 * (`*` within one path component, `**` across them, as in AUTH_ACCESS):
 *
 *   [{ "repositories": "ci/**", "keepTags": 3, "keepTagPatterns": ["v*", "latest"],
 *      "removeTagsOlderThan": "30d", "removeUntaggedOlderThan": "7d" }]
 *
 * A tag survives when it matches a keep pattern, or is among the `keepTags` most
 * recently pushed of the others, or was pushed within `removeTagsOlderThan`; with neither of the two
 * last set, every tag survives. Manifests whose every tag a rule removed go with them
 * (unless something kept still needs them); other untagged manifests go only under
 * `removeUntaggedOlderThan`. Durations: a number of seconds, or `<n>s|m|h|d|w`.
 */
export interface RetentionRule {
  repositories: string;
  keepTags?: number;
  keepTagPatterns?: string[];
  removeTagsOlderThan?: number;
  removeUntaggedOlderThan?: number;
}

export interface CompiledRule extends RetentionRule {
  pattern: RegExp;
  keepPatterns: RegExp[];
}

export class RetentionError extends Error {}

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 };

/** Seconds in `5d`, `12h`, `90` (seconds), …; throws RetentionError otherwise. */
export function parseDuration(value: unknown, where: string): number {
  if (typeof value === "number" && Number.isFinite(value) && value >= 0) return value;
  const match = typeof value === "string" ? /^(\d+)([smhdw]?)$/.exec(value.trim()) : null;
  if (!match) throw new RetentionError(`${where}: "${String(value)}" is not a duration (e.g. 3600, 12h, 7d)`);
  return Number(match[1]) * (UNIT_SECONDS[match[2] || "s"] ?? 1);
}

/** Tag patterns: `*` matches any run of characters. */
function tagPattern(glob: string): RegExp {
  return new RegExp(`^${glob.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*")}$`);
}

export function parseRetention(text: string | undefined): CompiledRule[] {
  if (text === undefined || text.trim() === "") return [];
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new RetentionError("RETENTION is not valid JSON");
  }
  if (!Array.isArray(value)) throw new RetentionError("RETENTION must be a JSON list of rules");
  return value.map((entry: unknown, index): CompiledRule => {
    const where = `RETENTION[${index}]`;
    if (typeof entry !== "object" || entry === null) throw new RetentionError(`${where} must be an object`);
    const raw = entry as Record<string, unknown>;
    const known = ["repositories", "keepTags", "keepTagPatterns", "removeTagsOlderThan", "removeUntaggedOlderThan"];
    for (const key of Object.keys(raw)) {
      if (!known.includes(key)) throw new RetentionError(`${where}: unknown field "${key}"`);
    }
    if (typeof raw.repositories !== "string" || raw.repositories === "")
      throw new RetentionError(`${where}.repositories must be a repository pattern`);
    const rule: CompiledRule = {
      repositories: raw.repositories,
      pattern: namePattern(raw.repositories),
      keepPatterns: [],
    };
    if (raw.keepTags !== undefined) {
      if (typeof raw.keepTags !== "number" || !Number.isSafeInteger(raw.keepTags) || raw.keepTags < 0)
        throw new RetentionError(`${where}.keepTags must be a whole number`);
      rule.keepTags = raw.keepTags;
    }
    if (raw.keepTagPatterns !== undefined) {
      if (!Array.isArray(raw.keepTagPatterns) || !raw.keepTagPatterns.every((p) => typeof p === "string"))
        throw new RetentionError(`${where}.keepTagPatterns must be a list of tag patterns`);
      rule.keepTagPatterns = raw.keepTagPatterns as string[];
      rule.keepPatterns = rule.keepTagPatterns.map(tagPattern);
    }
    if (raw.removeTagsOlderThan !== undefined)
      rule.removeTagsOlderThan = parseDuration(raw.removeTagsOlderThan, `${where}.removeTagsOlderThan`);
    if (raw.removeUntaggedOlderThan !== undefined)
      rule.removeUntaggedOlderThan = parseDuration(raw.removeUntaggedOlderThan, `${where}.removeUntaggedOlderThan`);
    return rule;
  });
}

export function ruleFor(rules: CompiledRule[], repository: string): CompiledRule | null {
  return rules.find((rule) => rule.pattern.test(repository)) ?? null;
}

export interface TagEntry {
  tag: string;
  /** When the tag was last written (R2 `uploaded`), ms. */
  pushedAt: number;
}

/** The tags a rule removes (see the module comment). */
export function tagsToRemove(rule: CompiledRule | null, tags: TagEntry[], now: number): Set<string> {
  const removed = new Set<string>();
  if (!rule || (rule.keepTags === undefined && rule.removeTagsOlderThan === undefined)) return removed;
  // Tags a pattern keeps do not take places among the N newest.
  const ranked = tags.filter((entry) => !rule.keepPatterns.some((pattern) => pattern.test(entry.tag)));
  const newestFirst = ranked.sort((a, b) => b.pushedAt - a.pushedAt || a.tag.localeCompare(b.tag));
  newestFirst.forEach((entry, rank) => {
    if (rule.keepTags !== undefined && rank < rule.keepTags) return;
    if (rule.removeTagsOlderThan !== undefined && now - entry.pushedAt < rule.removeTagsOlderThan * 1000) return;
    removed.add(entry.tag);
  });
  return removed;
}
