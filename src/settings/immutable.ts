import { json, namePattern, SettingsError, tagPattern } from "./values";

/**
 * Immutable tags (setting IMMUTABLE_TAGS, JSON; docs/configuration.md "Immutable tags"):
 * tags that, once set, always name the same manifest. A list of rules:
 *
 *   [{ "repositories": ["team/**"], "tags": ["v*"], "except": ["latest", "sha256-*"] }]
 *
 * A tag is immutable when a rule's repository pattern matches its repository (`*` within
 * one path component, `**` across them, as in AUTH_ACCESS), one of its tag patterns
 * matches the tag (`*`: any run of characters) and none of its `except` patterns does.
 */
export interface ImmutableRule {
  /** `IMMUTABLE_TAGS[i]`, for messages. */
  where: string;
  repositories: string[];
  tags: string[];
  except: string[];
  repositoryPatterns: RegExp[];
  tagPatterns: RegExp[];
  exceptPatterns: RegExp[];
}

/** The compiled rules, asked per repository and tag. */
export class ImmutableTags {
  constructor(readonly rules: readonly ImmutableRule[] = []) {}

  /** Whether any rule is set (none: nothing is immutable, and nothing is asked). */
  get any(): boolean {
    return this.rules.length > 0;
  }

  /** Whether any rule names `repository` (a repository no rule names has no immutable tag). */
  covers(repository: string): boolean {
    return this.rules.some((rule) => rule.repositoryPatterns.some((pattern) => pattern.test(repository)));
  }

  /** The rule that makes `tag` of `repository` immutable, or undefined. */
  ruleFor(repository: string, tag: string): ImmutableRule | undefined {
    return this.rules.find(
      (rule) =>
        rule.repositoryPatterns.some((pattern) => pattern.test(repository)) &&
        rule.tagPatterns.some((pattern) => pattern.test(tag)) &&
        !rule.exceptPatterns.some((pattern) => pattern.test(tag)),
    );
  }

  /** A rule as a message names it: `IMMUTABLE_TAGS[0] (v* in team/**, except latest)`. */
  static describe(rule: ImmutableRule): string {
    const except = rule.except.length > 0 ? `, except ${rule.except.join(", ")}` : "";
    return `${rule.where} (${rule.tags.join(", ")} in ${rule.repositories.join(", ")}${except})`;
  }
}

function patterns(value: unknown, where: string, required: boolean): string[] {
  if (value === undefined && !required) return [];
  const list = typeof value === "string" ? [value] : value;
  if (!Array.isArray(list) || (required && list.length === 0) || !list.every((p) => typeof p === "string" && p !== ""))
    throw new SettingsError(`${where} must be a list of patterns`);
  return list as string[];
}

export function parseImmutableTags(text: string | undefined): ImmutableTags {
  if (text === undefined || text.trim() === "") return new ImmutableTags();
  const value = json("IMMUTABLE_TAGS", text);
  if (!Array.isArray(value)) throw new SettingsError("IMMUTABLE_TAGS must be a JSON list of rules");
  return new ImmutableTags(
    value.map((entry: unknown, index): ImmutableRule => {
      const where = `IMMUTABLE_TAGS[${index}]`;
      if (typeof entry !== "object" || entry === null || Array.isArray(entry))
        throw new SettingsError(`${where} must be an object`);
      const raw = entry as Record<string, unknown>;
      for (const key of Object.keys(raw)) {
        if (!["repositories", "tags", "except"].includes(key))
          throw new SettingsError(`${where}: unknown field "${key}"`);
      }
      const repositories = patterns(raw.repositories, `${where}.repositories`, true);
      const tags = patterns(raw.tags, `${where}.tags`, true);
      const except = patterns(raw.except, `${where}.except`, false);
      return {
        where,
        repositories,
        tags,
        except,
        repositoryPatterns: repositories.map(namePattern),
        tagPatterns: tags.map(tagPattern),
        exceptPatterns: except.map(tagPattern),
      };
    }),
  );
}
