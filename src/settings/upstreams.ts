import { validateName } from "../oci/names";
import { json, SettingsError } from "./values";

/**
 * Upstream registries this one mirrors (setting UPSTREAMS, JSON; docs/configuration.md):
 *
 *   [{ "prefix": "docker.io", "url": "https://registry-1.docker.io", "tagTtlSeconds": 300,
 *      "credentials": "UPSTREAM_DOCKER_IO" }]
 *
 * A pull of `<prefix>/<repository>` is answered from what is stored under that name, and
 * otherwise fetched from `<url>/v2/<repository>/…`, stored, and served. `credentials` names
 * a secret holding `username:password` (Basic, or the token endpoint's login) or a bare
 * token (sent as a Bearer token). `library` (default: on for Docker Hub) puts
 * one-component names under `library/`, as Docker Hub names its official images.
 * UPSTREAM_DEFAULT names the upstream (by its prefix) that serves names with no prefix:
 * the registry then works as a docker daemon's `registry-mirrors` entry.
 */
export interface Upstream {
  prefix: string;
  /** Origin and optional path, no trailing slash: requests go to `${url}/v2/...`. */
  url: string;
  tagTtlSeconds: number;
  /** Name of the secret holding the credentials, if any. */
  credentials?: string;
  /**
   * What that secret holds, as an Authorization value: `Basic …` for `user:password`
   * (Basic, or the token endpoint's login), `Bearer …` for a bare token. Absent when the
   * secret is unset or blank.
   */
  login?: { basic: string } | { token: string };
  library: boolean;
  /** How long to wait for an upstream's answer (its headers) before serving what is stored. */
  timeoutMs: number;
}

const DEFAULT_TAG_TTL_SECONDS = 300;
const DEFAULT_TIMEOUT_SECONDS = 20;
const DOCKER_HUB_HOSTS = new Set(["registry-1.docker.io", "index.docker.io", "docker.io"]);

function isDockerHub(prefix: string, url: URL): boolean {
  return prefix === "docker.io" || DOCKER_HUB_HOSTS.has(url.hostname);
}

function parseOne(entry: unknown, index: number): Upstream {
  const where = `UPSTREAMS[${index}]`;
  if (typeof entry !== "object" || entry === null) throw new SettingsError(`${where} must be an object`);
  const raw = entry as Record<string, unknown>;
  const prefix = raw.prefix;
  if (typeof prefix !== "string") throw new SettingsError(`${where}.prefix must be a string`);
  try {
    validateName(prefix);
  } catch {
    throw new SettingsError(`${where}.prefix "${prefix}" is not a repository name path (e.g. docker.io, ghcr.io)`);
  }
  if (typeof raw.url !== "string") throw new SettingsError(`${where}.url must be a string`);
  let url: URL;
  try {
    url = new URL(raw.url);
  } catch {
    // Without the value: this message reaches clients (settingsOf), and a URL may be internal.
    throw new SettingsError(`${where}.url is not a URL`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new SettingsError(`${where}.url must be http(s)`);
  }
  const seconds = (field: string, fallback: number): number => {
    const value = raw[field];
    if (value === undefined) return fallback;
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
      throw new SettingsError(`${where}.${field} must be a number of seconds`);
    }
    return value;
  };
  if (raw.credentials !== undefined && (typeof raw.credentials !== "string" || raw.credentials === "")) {
    throw new SettingsError(`${where}.credentials must name a secret`);
  }
  if (raw.library !== undefined && typeof raw.library !== "boolean") {
    throw new SettingsError(`${where}.library must be true or false`);
  }
  const upstream: Upstream = {
    prefix,
    url: `${url.origin}${url.pathname.replace(/\/+$/, "")}`,
    tagTtlSeconds: seconds("tagTtlSeconds", DEFAULT_TAG_TTL_SECONDS),
    library: raw.library ?? isDockerHub(prefix, url),
    timeoutMs: seconds("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS) * 1000,
  };
  if (typeof raw.credentials === "string") upstream.credentials = raw.credentials;
  return upstream;
}

export interface Mirrors {
  upstreams: Upstream[];
  fallback?: Upstream;
}

/** Parses UPSTREAMS and UPSTREAM_DEFAULT; throws a SettingsError naming what is wrong. */
export function parseUpstreams(
  text: string | undefined,
  defaultPrefix: string | undefined,
  secrets: Record<string, unknown> = {},
): Mirrors {
  if (text === undefined || text.trim() === "") {
    if (defaultPrefix?.trim()) throw new SettingsError("UPSTREAM_DEFAULT is set but UPSTREAMS is empty");
    return { upstreams: [] };
  }
  const value = json("UPSTREAMS", text);
  if (!Array.isArray(value)) throw new SettingsError("UPSTREAMS must be a JSON list");
  const upstreams = value.map((entry: unknown, index) => {
    const upstream = parseOne(entry, index);
    const secret = upstream.credentials === undefined ? undefined : secrets[upstream.credentials];
    if (typeof secret === "string" && secret.trim() !== "") {
      const text = secret.trim();
      upstream.login = text.includes(":") ? { basic: `Basic ${btoa(text)}` } : { token: `Bearer ${text}` };
    }
    return upstream;
  });
  const prefixes = new Set<string>();
  for (const upstream of upstreams) {
    if (prefixes.has(upstream.prefix)) throw new SettingsError(`UPSTREAMS: prefix "${upstream.prefix}" appears twice`);
    prefixes.add(upstream.prefix);
  }
  // Longest prefix first, so `ghcr.io/team` wins over `ghcr.io`.
  upstreams.sort((a, b) => b.prefix.length - a.prefix.length);
  const mirrors: Mirrors = { upstreams };
  const wanted = defaultPrefix?.trim();
  if (wanted) {
    const fallback = upstreams.find((upstream) => upstream.prefix === wanted);
    if (!fallback) throw new SettingsError(`UPSTREAM_DEFAULT "${wanted}" is not the prefix of an upstream`);
    mirrors.fallback = fallback;
  }
  return mirrors;
}

/** What a requested name is, for the mirror: the upstream, its name there, and the name it is stored under. */
export interface MirroredName {
  upstream: Upstream;
  /** The repository's name at the upstream (`library/alpine`). */
  remote: string;
  /** The repository it is stored as here (`docker.io/library/alpine`). */
  local: string;
}

/** The name at an upstream: Docker Hub keeps one-component names under `library/`. */
function remoteName(upstream: Upstream, name: string): string {
  return upstream.library && !name.includes("/") ? `library/${name}` : name;
}

function mirrored(upstream: Upstream, name: string): MirroredName | null {
  if (name === "") return null;
  const remote = remoteName(upstream, name);
  // What is stored must be a name this registry could hold (the grammar, and its length).
  const local = validateName(`${upstream.prefix}/${remote}`);
  return { upstream, remote, local };
}

/** The upstream containerd's `?ns=<registry host>` names: by its prefix, or its URL's host. */
export function upstreamOfNs(mirrors: Mirrors, ns: string): Upstream | undefined {
  return mirrors.upstreams.find((upstream) => upstream.prefix === ns || new URL(upstream.url).host === ns);
}

/**
 * Which upstream, if any, a requested repository name belongs to:
 * - `ns` (containerd's `?ns=<registry host>` on requests to a mirror) naming an upstream's
 *   prefix or host: the name as it is, under that prefix (then as below, so nested
 *   prefixes resolve to the longest);
 * - a name under an upstream's prefix (`docker.io/library/alpine`);
 * - with a default upstream, any other name (`library/alpine`, `alpine`).
 * Null: a repository of this registry's own. Throws NAME_INVALID when the name it would be
 * stored as breaks the grammar. (An `ns` naming no upstream is the caller's to refuse:
 * mirror/mirrored-repository.ts.)
 */
export function mirroredName(mirrors: Mirrors, name: string, ns?: string): MirroredName | null {
  if (mirrors.upstreams.length === 0) return null;
  const byNs = ns ? upstreamOfNs(mirrors, ns) : undefined;
  if (byNs && !name.startsWith(`${byNs.prefix}/`)) return mirroredName(mirrors, `${byNs.prefix}/${name}`);
  for (const upstream of mirrors.upstreams) {
    if (name.startsWith(`${upstream.prefix}/`)) return mirrored(upstream, name.slice(upstream.prefix.length + 1));
  }
  return mirrors.fallback ? mirrored(mirrors.fallback, name) : null;
}
