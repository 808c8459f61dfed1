import type { MiddlewareHandler } from "hono";
import { Mirror } from "../mirror/mirror";
import { mirroredName, upstreamOfNs, type MirroredName } from "../settings/upstreams";
import { settingsOf } from "../settings/settings";
import { digestOrNull } from "../oci/digest";
import { RegistryError, unavailable } from "../oci/errors";
import { parseReference, type Reference } from "../registry/manifests";
import { changeContextOf, edgeCacheOf, waitUntil, type AppEnv } from "./http";

/** The API paths a mirrored name serves, by kind (the name as the routes match it: greedy). */
const PATHS: { kind: "manifest" | "blob" | "upload" | "tags" | "referrers"; pattern: RegExp }[] = [
  { kind: "upload", pattern: /^\/v2\/(.+)\/blobs\/uploads(?:\/[^/]*)?$/ },
  { kind: "manifest", pattern: /^\/v2\/(.+)\/manifests\/([^/]+)$/ },
  { kind: "blob", pattern: /^\/v2\/(.+)\/blobs\/([^/]+)$/ },
  { kind: "tags", pattern: /^\/v2\/(.+)\/tags\/list$/ },
  { kind: "referrers", pattern: /^\/v2\/(.+)\/referrers\/([^/]+)$/ },
];

/**
 * Work that talks to an upstream: whatever an upstream can make go wrong that no check
 * foresaw is the upstream failing (503, logged), never a 500. The error names the
 * mirror's prefix only: what went wrong may name internal addresses, and goes to the log.
 */
async function upstreamWork<T>(mirrored: MirroredName, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof RegistryError) throw error;
    console.error(`mirror ${mirrored.local}: unexpected failure`, error);
    throw unavailable(`the answer of the upstream registry of ${mirrored.upstream.prefix} could not be used; retry`, {
      upstream: mirrored.upstream.prefix,
    });
  }
}

function referenceOrNull(text: string): Reference | null {
  try {
    return parseReference(text);
  } catch {
    return null;
  }
}

/**
 * Pull-through mirroring (src/mirror; docs/configuration.md, "Mirroring upstream
 * registries"), after authorization: for a name an upstream serves, the routes read the
 * repository it is stored as (`c.var.mirror`, see repositoryName), and this middleware
 * fills in what is missing from the upstream:
 * - a manifest is made stored and fresh before the route serves it;
 * - a blob the repository does not link is fetched when the route finds none;
 * - the tag list is the upstream's (the stored one when the upstream cannot answer);
 * - referrers are what is stored.
 * Writes to a mirrored name are refused: its content is the upstream's.
 */
export const mirrorMiddleware: MiddlewareHandler<AppEnv> = async (c, next) => {
  const mirrors = settingsOf(c.env).mirrors;
  if (mirrors.upstreams.length === 0) return next();
  const url = new URL(c.req.url);
  let match: { kind: (typeof PATHS)[number]["kind"]; name: string; rest: string } | null = null;
  for (const { kind, pattern } of PATHS) {
    const found = pattern.exec(url.pathname);
    if (found) {
      match = { kind, name: found[1] ?? "", rest: found[2] ?? "" };
      break;
    }
  }
  if (!match) return next();
  const ns = url.searchParams.get("ns") ?? undefined;
  if (ns && ns !== url.host && !upstreamOfNs(mirrors, ns)) {
    // containerd asks a mirror for another registry's name: one this registry does not
    // mirror. Never this registry's own repository, nor the default upstream's, by that
    // name (another registry's image would be substituted); containerd then goes on to
    // the next host.
    throw new RegistryError("NAME_UNKNOWN", `this registry does not mirror ${ns}`, { ns });
  }
  const mirrored = mirroredName(mirrors, match.name, ns);
  if (!mirrored) return next();
  if (c.req.method !== "GET" && c.req.method !== "HEAD") {
    throw new RegistryError(
      "DENIED",
      `${match.name} is mirrored from ${mirrored.upstream.prefix}: it is read-only here`,
      {
        name: match.name,
        upstream: mirrored.upstream.prefix,
      },
    );
  }
  if (match.kind === "upload") return next();
  c.set("mirror", mirrored);
  const mirror = new Mirror(c.env, mirrored, edgeCacheOf(c), changeContextOf(c));

  if (match.kind === "manifest") {
    const reference = referenceOrNull(match.rest);
    if (reference) {
      const record = await upstreamWork(mirrored, () => mirror.manifest(reference));
      if (record) c.set("mirrorTag", record);
    }
    return next();
  }

  if (match.kind === "tags") {
    const query = new URLSearchParams();
    for (const key of ["n", "last"]) {
      const value = url.searchParams.get(key);
      if (value !== null) query.set(key, value);
    }
    const answer = await upstreamWork(mirrored, () =>
      mirror.tags(query.size > 0 ? `?${query.toString()}` : "", match.name),
    );
    if (!answer) return next();
    if (answer.link) c.header("Link", answer.link);
    return c.json({ name: match.name, tags: answer.tags });
  }

  if (match.kind === "blob") {
    const digest = digestOrNull(match.rest);
    if (!digest) return next();
    // Linked here already: the route serves it (the stat is passed on, not made twice).
    try {
      c.set("mirrorBlob", await mirror.repository.statBlob(digest));
      return next();
    } catch (error) {
      if (!(error instanceof RegistryError && error.code === "BLOB_UNKNOWN")) throw error;
    }
    // A Range is served by the route once the blob is linked; fetched, the answer is whole.
    const fetched = await upstreamWork(mirrored, () => mirror.blob(digest, c.req.method, (work) => waitUntil(c, work)));
    if ("descriptor" in fetched) {
      c.set("mirrorBlob", fetched.descriptor);
      return next();
    }
    for (const [header, value] of Object.entries(fetched.headers)) c.header(header, value);
    if (c.req.method === "HEAD" || !fetched.body) return c.body(null, fetched.status);
    return c.body(fetched.body, fetched.status);
  }
  return next();
};
