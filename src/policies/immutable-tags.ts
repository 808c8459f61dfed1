import { RegistryError } from "../oci/errors";
import type { Change, ChangeAction, ChangePolicy, SeamExtension, WriteConditions } from "../registry/changes";
import { ImmutableTags, type ImmutableRule } from "../settings/immutable";
import { settingsOf } from "../settings/settings";

/**
 * Immutable tags (IMMUTABLE_TAGS; docs/configuration.md, "Immutable tags"), a policy on the
 * change seam: a tag a rule names, once set, always names the same manifest. A push that
 * would move it, a delete of it, a delete of the manifest it names and the collector's
 * removal of it are refused (DENIED, naming the rule); a push of the manifest it already
 * names succeeds (clients retry). A push that sets a new immutable tag may only create it:
 * the tag's write is conditional (R2's `If-None-Match: *`, tags.ts), so of concurrent
 * pushes of different manifests exactly one wins, the others refused like a later push.
 */
export class ImmutableTagsPolicy implements ChangePolicy {
  readonly name = "immutable-tags";

  constructor(private readonly rules: ImmutableTags) {}

  wants(action: ChangeAction, repository?: string): boolean {
    return JUDGED.has(action) && repository !== undefined && this.rules.covers(repository);
  }

  check(change: Change, _context: unknown, conditions: WriteConditions): void {
    switch (change.action) {
      case "manifest.put":
        for (const tag of change.tags) {
          const rule = this.rules.ruleFor(change.repository, tag);
          if (rule) conditions.createOnly(tag, refusal(change.repository, tag, rule, "it names another manifest"));
        }
        return;
      case "tag.move":
        return this.refuseIfImmutable(change.repository, change.tag, `it names ${change.previous.value}`);
      case "tag.delete":
        return this.refuseIfImmutable(change.repository, change.tag, "it cannot be deleted");
      case "manifest.delete":
        for (const tag of change.tags) {
          const rule = this.rules.ruleFor(change.repository, tag);
          if (rule) {
            throw new RegistryError(
              "DENIED",
              `manifest ${change.digest.value} is named by immutable tag "${tag}" of ${change.repository} ` +
                `(${ImmutableTags.describe(rule)}): it cannot be deleted`,
            );
          }
        }
        return;
      case "collect":
        if (change.kind === "tag" && change.tag !== undefined && change.repository !== undefined)
          this.refuseIfImmutable(change.repository, change.tag, "the collector keeps it");
        return;
    }
  }

  private refuseIfImmutable(repository: string, tag: string, why: string): void {
    const rule = this.rules.ruleFor(repository, tag);
    if (rule) throw new RegistryError("DENIED", refusal(repository, tag, rule, why));
  }
}

/** What the policy judges: pushes (their tags), moves and every kind of removal; never uploads or pulls. */
const JUDGED = new Set<ChangeAction>(["manifest.put", "tag.move", "tag.delete", "manifest.delete", "collect"]);

function refusal(repository: string, tag: string, rule: ImmutableRule, why: string): string {
  return `tag "${tag}" of ${repository} is immutable (${ImmutableTags.describe(rule)}): ${why}`;
}

/** Registered by app.ts: the policy, when IMMUTABLE_TAGS names a rule. */
export const immutableTagsExtension: SeamExtension = {
  name: "immutable-tags",
  policies(env) {
    const rules = settingsOf(env).immutableTags;
    return rules.any ? [new ImmutableTagsPolicy(rules)] : [];
  },
};
