import { json, namePattern, parseDuration, SettingsError, tagPattern } from "./values";

/**
 * Retention rules (setting RETENTION, JSON; docs/configuration.md): which tags and
 * untagged manifests a garbage collection run removes besides what nothing uses. A list
 * of rules; the first whose `repositories` pattern matches a repository applies to it
 * (`*` within one path component, `**` across them, as in AUTH_ACCESS):
 *
 *   [{ "repositories": "ci/**", "keepTags": 3, "keepTagPatterns": ["v*", "latest"],
 *      "removeTagsOlderThan": "30d", "pulledWithin": "90d", "removeUntaggedOlderThan": "7d" }]
 *
 * A tag survives when it matches a keep pattern, or is among the `keepTags` most
 * recently pushed of the others, or was pushed within `removeTagsOlderThan`, or was used
 * within `pulledWithin` (its manifest pulled, or the tag pushed: a tag never pulled is not
 * removed before it is that old); with none of the three last set, every tag survives. Manifests whose every tag a rule removed go with them
 * (unless something kept still needs them); other untagged manifests go only under
 * `removeUntaggedOlderThan`. Durations: a number of seconds, or `<n>s|m|h|d|w`.
 */
export interface RetentionRule {
  repositories: string;
  keepTags?: number;
  keepTagPatterns?: string[];
  removeTagsOlderThan?: number;
  /** Seconds: tags whose manifest was neither pulled nor pushed within this long go (needs pull records). */
  pulledWithin?: number;
  removeUntaggedOlderThan?: number;
}

export interface CompiledRule extends RetentionRule {
  pattern: RegExp;
  keepPatterns: RegExp[];
}

export function parseRetention(text: string | undefined): CompiledRule[] {
  if (text === undefined || text.trim() === "") return [];
  const value = json("RETENTION", text);
  if (!Array.isArray(value)) throw new SettingsError("RETENTION must be a JSON list of rules");
  return value.map((entry: unknown, index): CompiledRule => {
    const where = `RETENTION[${index}]`;
    if (typeof entry !== "object" || entry === null) throw new SettingsError(`${where} must be an object`);
    const raw = entry as Record<string, unknown>;
    const known = [
      "repositories",
      "keepTags",
      "keepTagPatterns",
      "removeTagsOlderThan",
      "pulledWithin",
      "removeUntaggedOlderThan",
    ];
    for (const key of Object.keys(raw)) {
      if (!known.includes(key)) throw new SettingsError(`${where}: unknown field "${key}"`);
    }
    if (typeof raw.repositories !== "string" || raw.repositories === "")
      throw new SettingsError(`${where}.repositories must be a repository pattern`);
    const rule: CompiledRule = {
      repositories: raw.repositories,
      pattern: namePattern(raw.repositories),
      keepPatterns: [],
    };
    if (raw.keepTags !== undefined) {
      if (typeof raw.keepTags !== "number" || !Number.isSafeInteger(raw.keepTags) || raw.keepTags < 0)
        throw new SettingsError(`${where}.keepTags must be a whole number`);
      rule.keepTags = raw.keepTags;
    }
    if (raw.keepTagPatterns !== undefined) {
      if (!Array.isArray(raw.keepTagPatterns) || !raw.keepTagPatterns.every((p) => typeof p === "string"))
        throw new SettingsError(`${where}.keepTagPatterns must be a list of tag patterns`);
      rule.keepTagPatterns = raw.keepTagPatterns as string[];
      rule.keepPatterns = rule.keepTagPatterns.map(tagPattern);
    }
    if (raw.removeTagsOlderThan !== undefined)
      rule.removeTagsOlderThan = parseDuration(raw.removeTagsOlderThan, `${where}.removeTagsOlderThan`);
    if (raw.pulledWithin !== undefined) rule.pulledWithin = parseDuration(raw.pulledWithin, `${where}.pulledWithin`);
    if (raw.removeUntaggedOlderThan !== undefined)
      rule.removeUntaggedOlderThan = parseDuration(raw.removeUntaggedOlderThan, `${where}.removeUntaggedOlderThan`);
    return rule;
  });
}
