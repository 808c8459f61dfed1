import type { AccessSettings } from "../settings/access";
import type { Settings } from "../settings/settings";
import { mirroredName } from "../settings/upstreams";
import { ACTIONS, type Action, type Resource } from "../oci/access";

/**
 * What the access settings (AUTH_USERS, AUTH_ACCESS, AUTH_MODE: src/settings/access.ts)
 * allow: a user's actions on a resource.
 */
export type { AccessRule, AuthMode } from "../settings/access";

export interface Policy extends AccessSettings {
  /**
   * The name rules are matched against, for a requested name: a mirrored name's stored
   * name (`library/alpine` through the default upstream is `docker.io/library/alpine`),
   * so one rule covers every way of asking for it. Identity when nothing is mirrored.
   */
  subjectName?: (name: string) => string;
}

const policies = new WeakMap<AccessSettings, Policy>();

/**
 * The policy of these settings (one per isolate): the access rules, matching a mirrored
 * name by the name it is stored as (settings/upstreams.ts).
 */
export function policyOf(settings: Settings): Policy {
  const known = policies.get(settings.access);
  if (known) return known;
  const mirrors = settings.mirrors;
  const policy: Policy = { ...settings.access };
  if (mirrors.upstreams.length > 0) {
    policy.subjectName = (name) => {
      try {
        return mirroredName(mirrors, name)?.local ?? name;
      } catch {
        return name;
      }
    };
  }
  policies.set(settings.access, policy);
  return policy;
}

/** The actions `user` (null: anonymous) may take on `resource`. */
export function allowedActions(policy: Policy, user: string | null, resource: Resource): Set<Action> {
  const allowed = new Set<Action>();
  if (policy.mode === "open") return new Set(ACTIONS);
  if (policy.mode === "read-only") {
    // No users: nothing can be written. What can be read is what AUTH_ACCESS lets
    // anonymous clients read, or, without AUTH_ACCESS, everything (a registry never given
    // rules has nothing private). A missing AUTH_USERS never opens repositories the rules
    // keep private.
    if (!policy.explicitRules) return new Set<Action>(["pull"]);
    return allowedActions({ ...policy, mode: "enforced" }, null, resource).has("pull")
      ? new Set<Action>(["pull"])
      : allowed;
  }
  if (user !== null && !policy.users.has(user)) return allowed;
  const subject =
    policy.subjectName && resource.type === "repository" ? policy.subjectName(resource.name) : resource.name;
  for (const rule of policy.rules) {
    const applies = user === null ? rule.anonymous : rule.users.includes("*") || rule.users.includes(user);
    if (!applies) continue;
    if (resource.type === "registry") {
      // Listing the catalog counts as pulling it.
      if (rule.catalog) allowed.add("pull");
      continue;
    }
    if (rule.repositories.some((pattern) => pattern.test(subject))) {
      for (const action of rule.actions) allowed.add(action);
    }
  }
  return allowed;
}
