import { ACTIONS, type Action } from "../oci/access";
import { json, namePattern, SettingsError } from "./values";

/**
 * Who may do what (docs/configuration.md, "Authentication"):
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

export interface AccessSettings {
  mode: AuthMode;
  /** user name → bcrypt hash. */
  users: Map<string, string>;
  rules: AccessRule[];
  /** Whether AUTH_ACCESS gave the rules (else they are the default: users may do everything). */
  explicitRules: boolean;
}

function parseUsers(text: string | undefined): Map<string, string> {
  const users = new Map<string, string>();
  for (const entry of (text ?? "").split(/[\s,]+/)) {
    if (entry === "") continue;
    const colon = entry.indexOf(":");
    const name = entry.slice(0, colon);
    const hash = entry.slice(colon + 1);
    if (colon <= 0 || !/^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/.test(hash)) {
      throw new SettingsError(`AUTH_USERS: "${entry.slice(0, 40)}" is not a name:bcrypt-hash line (htpasswd -nB NAME)`);
    }
    users.set(name, hash);
  }
  return users;
}

function stringList(value: unknown, where: string): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || !value.every((item) => typeof item === "string")) {
    throw new SettingsError(`AUTH_ACCESS: ${where} must be a list of strings`);
  }
  return value as string[];
}

function parseRules(text: string | undefined): AccessRule[] {
  if (text === undefined || text.trim() === "") {
    return [{ repositories: [/^.*$/], users: ["*"], anonymous: false, actions: [...ACTIONS], catalog: true }];
  }
  const parsed = json("AUTH_ACCESS", text);
  if (!Array.isArray(parsed)) throw new SettingsError("AUTH_ACCESS must be a JSON list of rules");
  return parsed.map((rule: unknown, index) => {
    if (typeof rule !== "object" || rule === null) throw new SettingsError(`AUTH_ACCESS[${index}] must be an object`);
    const record = rule as Record<string, unknown>;
    const actions = stringList(record.actions, `[${index}].actions`);
    const unknown = actions.filter((action) => !ACTIONS.includes(action as Action));
    if (unknown.length > 0) throw new SettingsError(`AUTH_ACCESS[${index}]: unknown actions ${unknown.join(", ")}`);
    return {
      repositories: stringList(record.repositories, `[${index}].repositories`).map(namePattern),
      users: stringList(record.users, `[${index}].users`),
      anonymous: record.anonymous === true,
      actions: actions as Action[],
      catalog: record.catalog === true,
    };
  });
}

/** Parses AUTH_MODE, AUTH_USERS and AUTH_ACCESS (and checks TOKEN_SECRET is there when it must be). */
export function parseAccess(env: Env): AccessSettings {
  const users = parseUsers(env.AUTH_USERS);
  // Trusted OIDC issuers (OIDC_TRUST: settings/oidc.ts) log in too: authentication is enforced.
  const federated = env.OIDC_TRUST !== undefined && env.OIDC_TRUST.trim() !== "";
  const mode: AuthMode = users.size > 0 || federated ? "enforced" : env.AUTH_MODE === "open" ? "open" : "read-only";
  if (mode === "enforced" && !env.TOKEN_SECRET) {
    // A key derived from AUTH_USERS would let anyone who saw the bcrypt hashes (which
    // people treat as safe to show) sign tokens: the key must be a secret of its own.
    throw new SettingsError("TOKEN_SECRET must be set (a long random value) when AUTH_USERS or OIDC_TRUST is");
  }
  const explicitRules = env.AUTH_ACCESS !== undefined && env.AUTH_ACCESS.trim() !== "";
  return { mode, users, rules: parseRules(env.AUTH_ACCESS), explicitRules };
}
