import { validateName } from "../oci/names";
import type { Mirrors } from "./upstreams";
import { json, parseSize, SettingsError } from "./values";

/**
 * Storage quotas per namespace (setting QUOTAS, JSON; docs/configuration.md, "Storage
 * quotas"):
 *
 *   [{ "namespace": "team", "bytes": "100MiB" }, { "namespace": "team/ci", "bytes": 10737418240 }]
 *
 * A namespace is a repository name path: `team` covers the repository `team` and every one
 * under `team/` (`team/app`, `team/app/api`), never `teams`. Its usage is the bytes of the
 * distinct blobs (manifests included) its repositories link; a push that would take it over
 * `bytes` is refused. Namespaces may nest: a push must fit every quota that covers it.
 */
export interface Quota {
  namespace: string;
  bytes: number;
}

export function parseQuotas(text: string | undefined): Quota[] {
  if (text === undefined || text.trim() === "") return [];
  const value = json("QUOTAS", text);
  if (!Array.isArray(value)) throw new SettingsError("QUOTAS must be a JSON list of {namespace, bytes}");
  const quotas = value.map((entry: unknown, index): Quota => {
    const where = `QUOTAS[${index}]`;
    if (typeof entry !== "object" || entry === null) throw new SettingsError(`${where} must be an object`);
    const raw = entry as Record<string, unknown>;
    for (const key of Object.keys(raw)) {
      if (key !== "namespace" && key !== "bytes") throw new SettingsError(`${where}: unknown field "${key}"`);
    }
    const namespace = typeof raw.namespace === "string" ? raw.namespace.trim() : "";
    try {
      validateName(namespace);
    } catch {
      throw new SettingsError(
        `${where}.namespace "${namespace.slice(0, 80)}" is not a repository name path (e.g. team)`,
      );
    }
    if (raw.bytes === undefined) throw new SettingsError(`${where}.bytes is required (e.g. 104857600 or "100MiB")`);
    return { namespace, bytes: parseSize(raw.bytes, `${where}.bytes`) };
  });
  const seen = new Set<string>();
  for (const quota of quotas) {
    if (seen.has(quota.namespace)) throw new SettingsError(`QUOTAS names the namespace "${quota.namespace}" twice`);
    seen.add(quota.namespace);
  }
  return quotas;
}

/** Whether `namespace` covers the repository `name`: the name itself, or one under it. */
export function covers(namespace: string, name: string): boolean {
  return name === namespace || name.startsWith(`${namespace}/`);
}

/**
 * Whether a stored repository is the mirror's (under an upstream's prefix): what the
 * mirror fetched is the upstream's content, neither counted nor limited by quotas.
 */
export function isMirrorStore(mirrors: Mirrors, name: string): boolean {
  return mirrors.upstreams.some((upstream) => name.startsWith(`${upstream.prefix}/`));
}

/** The quotas counting a stored repository (none, one, or nested ones), outermost first. */
export function quotasOf(settings: { quotas: readonly Quota[]; mirrors: Mirrors }, name: string): Quota[] {
  if (settings.quotas.length === 0 || isMirrorStore(settings.mirrors, name)) return [];
  return settings.quotas
    .filter((quota) => covers(quota.namespace, name))
    .sort((a, b) => a.namespace.length - b.namespace.length);
}
