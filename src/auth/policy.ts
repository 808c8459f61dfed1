import { ACTIONS, type Action, type Resource } from "./access";

/**
 * Who may do what, from the Worker's configuration (docs/configuration.md,
 * "Authentication"):
 *
 * - `AUTH_USERS`: htpasswd lines `name:$2y$…` (bcrypt, as `htpasswd -nB name` or
 *   `npm run passwd` print them), separated by newlines, commas or spaces. A secret.
 * - `AUTH_ACCESS`: JSON rules; each grants `actions` on `repositories` (name patterns:
 *   `*` within one path component, `**` across components) to `users` (`"*"`: every
 *   user), or to anonymous clients with `"anonymous": true`; `"catalog": true` grants
 *   `GET /v2/_catalog`. Grants add up. Without it, every user may do everything and
 *   anonymous clients nothing (distribution's htpasswd behaviour).
 * - `AUTH_MODE=open` (set by `npm start` when no users are configured): no
 *   authentication at all. A deployed Worker without users is read-only instead.
 * - `TOKEN_SECRET`: the key tokens are signed with; required with AUTH_USERS.
 */
export type AuthMode = "open" | "read-only" | "enforced";

export interface AccessRule {
  repositories: RegExp[];
  users: string[];
  anonymous: boolean;
  actions: Action[];
  catalog: boolean;
}

export interface Policy {
  mode: AuthMode;
  /** user name → bcrypt hash. */
  users: Map<string, string>;
  rules: AccessRule[];
  /** Whether AUTH_ACCESS gave the rules (else they are the default: users may do everything). */
  explicitRules: boolean;
  /**
   * The name rules are matched against, for a requested name: a mirrored name's stored
   * name (`library/alpine` through the default upstream is `docker.io/library/alpine`),
   * so one rule covers every way of asking for it. Identity when nothing is mirrored.
   */
  subjectName?: (name: string) => string;
}

/** A mistake in the authentication settings: the operator's to fix, so the registry refuses to guess. */
export class PolicyError extends Error {}

/** `*` matches within one path component, `**` across components; everything else literally. */
export function namePattern(glob: string): RegExp {
  let source = "";
  for (let index = 0; index < glob.length; index++) {
    const char = glob.charAt(index);
    if (char === "*" && glob[index + 1] === "*") {
      source += ".*";
      index++;
    } else if (char === "*") {
      source += "[^/]*";
    } else {
      source += char.replace(/[.+?^${}()|[\]\\]/g, "\\$&");
    }
  }
  return new RegExp(`^${source}$`);
}

function parseUsers(text: string | undefined): Map<string, string> {
  const users = new Map<string, string>();
  for (const entry of (text ?? "").split(/[\s,]+/)) {
    if (entry === "") continue;
    const colon = entry.indexOf(":");
    const name = entry.slice(0, colon);
    const hash = entry.slice(colon + 1);
    if (colon <= 0 || !/^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/.test(hash)) {
      throw new PolicyError(`AUTH_USERS: "${entry.slice(0, 40)}" is not a name:bcrypt-hash line (htpasswd -nB NAME)`);
    }
    users.set(name, hash);
  }
  return users;
}

function stringList(value: unknown, where: string): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || !value.every((item) => typeof item === "string")) {
    throw new PolicyError(`AUTH_ACCESS: ${where} must be a list of strings`);
  }
  return value as string[];
}

function parseRules(text: string | undefined): AccessRule[] {
  if (text === undefined || text.trim() === "") {
    return [{ repositories: [/^.*$/], users: ["*"], anonymous: false, actions: [...ACTIONS], catalog: true }];
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new PolicyError("AUTH_ACCESS is not valid JSON");
  }
  if (!Array.isArray(parsed)) throw new PolicyError("AUTH_ACCESS must be a JSON list of rules");
  return parsed.map((rule: unknown, index) => {
    if (typeof rule !== "object" || rule === null) throw new PolicyError(`AUTH_ACCESS[${index}] must be an object`);
    const record = rule as Record<string, unknown>;
    const actions = stringList(record.actions, `[${index}].actions`);
    const unknown = actions.filter((action) => !ACTIONS.includes(action as Action));
    if (unknown.length > 0) throw new PolicyError(`AUTH_ACCESS[${index}]: unknown actions ${unknown.join(", ")}`);
    return {
      repositories: stringList(record.repositories, `[${index}].repositories`).map(namePattern),
      users: stringList(record.users, `[${index}].users`),
      anonymous: record.anonymous === true,
      actions: actions as Action[],
      catalog: record.catalog === true,
    };
  });
}

const cache = new Map<string, Policy>();

/** The policy of this environment (parsed once per isolate and settings). */
export function policyOf(env: Env, subjectName?: (name: string) => string): Policy {
  const key = JSON.stringify([
    env.AUTH_MODE,
    env.AUTH_USERS,
    env.AUTH_ACCESS,
    env.TOKEN_SECRET !== undefined,
    env.UPSTREAMS,
    env.UPSTREAM_DEFAULT,
  ]);
  const cached = cache.get(key);
  if (cached) return cached;
  const users = parseUsers(env.AUTH_USERS);
  const mode: AuthMode = users.size > 0 ? "enforced" : env.AUTH_MODE === "open" ? "open" : "read-only";
  if (mode === "enforced" && !env.TOKEN_SECRET) {
    // A key derived from AUTH_USERS would let anyone who saw the bcrypt hashes (which
    // people treat as safe to show) sign tokens: the key must be a secret of its own.
    throw new PolicyError("TOKEN_SECRET must be set (a long random value) when AUTH_USERS is");
  }
  const explicitRules = env.AUTH_ACCESS !== undefined && env.AUTH_ACCESS.trim() !== "";
  const policy: Policy = { mode, users, rules: parseRules(env.AUTH_ACCESS), explicitRules };
  if (subjectName) policy.subjectName = subjectName;
  cache.clear();
  cache.set(key, policy);
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
