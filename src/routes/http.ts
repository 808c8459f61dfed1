import type { Context } from "hono";
import type { AuthEnv } from "../auth/authorize";
import { readConfig } from "../config";
import { RegistryError } from "../oci/errors";
import { validateName } from "../oci/names";
import { readAtMost } from "../registry/bounded";
import type { ChangeContext } from "../registry/changes";
import { EdgeCache } from "../registry/edge-cache";
import { openRepository, type Repository } from "../registry/registry";
import type { MirroredName } from "../settings/upstreams";
import type { TagRecord } from "../registry/tags";
import type { BlobDescriptor } from "../registry/blob-store";

export type AppEnv = {
  Bindings: AuthEnv["Bindings"];
  Variables: AuthEnv["Variables"] & {
    /** Set for a mirrored name (src/mirror): its upstream, and the repository it is stored as. */
    mirror?: MirroredName;
    /** For a mirrored manifest: the record to serve, once the mirror made sure it is stored and fresh. */
    mirrorTag?: TagRecord;
    /** For a mirrored blob: its descriptor, once the mirror found it linked (or linked it). */
    mirrorBlob?: BlobDescriptor;
  };
};
export type AppContext = Context<AppEnv>;

/**
 * The repository name from the route, validated against the spec's grammar; for a
 * mirrored name, the repository it is stored as (`library/alpine` → `docker.io/library/alpine`).
 */
export function repositoryName(c: AppContext): string {
  const mirror = c.get("mirror");
  if (mirror) return mirror.local;
  return validateName(c.req.param("name") ?? "");
}

/** Content-Length as a number, or undefined when absent (chunked bodies); throws on nonsense. */
export function contentLength(c: AppContext): number | undefined {
  const header = c.req.header("Content-Length");
  if (header === undefined) return undefined;
  if (!/^\d+$/.test(header) || !Number.isSafeInteger(Number(header))) {
    throw new RegistryError("SIZE_INVALID", "invalid Content-Length", { contentLength: header });
  }
  return Number(header);
}

/**
 * The request body, or null when the request carries none (no Content-Length and
 * no chunked Transfer-Encoding, or a declared length of 0).
 */
export function requestBody(c: AppContext): ReadableStream<Uint8Array> | null {
  const length = contentLength(c);
  if (length === 0) return null;
  return c.req.raw.body;
}

/** Parses `Content-Range: <start>-<end>` (docker/distribution's form, `bytes ` prefix tolerated). */
export function contentRange(c: AppContext): { start: number; end: number } | undefined {
  const header = c.req.header("Content-Range");
  if (header === undefined) return undefined;
  const match = /^(?:bytes[ =])?(\d+)-(\d+)(?:\/(?:\d+|\*))?$/.exec(header.trim());
  const start = Number(match?.[1]);
  const end = Number(match?.[2]);
  if (!match || !Number.isSafeInteger(start) || !Number.isSafeInteger(end) || end < start) {
    throw new RegistryError("RANGE_INVALID", "invalid Content-Range", { contentRange: header });
  }
  return { start, end };
}

/**
 * Reads a body that must not exceed `limit` bytes (manifests, the token form) without
 * ever holding more than that: the cap is enforced while reading, since a chunked body
 * declares no length, and a declared length over it is refused before reading anything.
 * `tooLarge` is the error to answer with (413 by default).
 */
export async function readLimited(
  c: AppContext,
  limit: number,
  tooLarge: () => RegistryError = () =>
    new RegistryError("SIZE_INVALID", `payload exceeds ${limit} bytes`, { limit }, {}, 413),
): Promise<Uint8Array<ArrayBuffer>> {
  const declared = contentLength(c);
  if (declared !== undefined && declared > limit) throw tooLarge();
  const body = c.req.raw.body;
  if (!body) return new Uint8Array(0);
  return readAtMost(body, limit, tooLarge);
}

/** Largest page a listing returns, whatever `n` asks for. */
export const MAX_PAGE = 1000;

/** `n` and `last` of a paginated listing (tags, catalog). */
export function pagination(c: AppContext): { limit: number; last?: string } {
  const n = c.req.query("n");
  const last = c.req.query("last");
  let limit = MAX_PAGE;
  if (n !== undefined) {
    if (!/^\d+$/.test(n))
      throw new RegistryError("PAGINATION_NUMBER_INVALID", "n must be a non-negative integer", { n });
    limit = Math.min(MAX_PAGE, Number(n));
  }
  return { limit, ...(last !== undefined ? { last } : {}) };
}

/**
 * Runs a listing for one page: asks for one entry more than the page holds, so the
 * `Link: <next>; rel="next"` header appears exactly when there is a next page.
 * `keyOf` gives the value `last` takes to continue after an entry.
 */
export async function paginate<T>(
  c: AppContext,
  path: string,
  list: (limit: number, last?: string) => Promise<T[]>,
  keyOf: (entry: T) => string,
  extraParams: Record<string, string> = {},
): Promise<T[]> {
  const { limit, last } = pagination(c);
  if (limit === 0) return [];
  const entries = await list(limit + 1, last);
  if (entries.length <= limit) return entries;
  const page = entries.slice(0, limit);
  const lastEntry = page[page.length - 1];
  const params = new URLSearchParams({
    ...extraParams,
    n: String(limit),
    last: lastEntry === undefined ? "" : keyOf(lastEntry),
  });
  c.header("Link", `<${path}?${params.toString()}>; rel="next"`);
  return page;
}

/** True when the client already holds this digest (`If-None-Match` names its ETag). */
export function notModified(c: AppContext, digest: string): boolean {
  const header = c.req.header("If-None-Match");
  if (!header) return false;
  return header
    .split(",")
    .map((tag) => tag.trim().replace(/^W\//, ""))
    .some((tag) => tag === "*" || tag === `"${digest}"` || tag === digest);
}

/** Keeps `work` going after the answer is sent (when the runtime gave us a context to do it in). */
export function waitUntil(c: AppContext, work: Promise<unknown>): void {
  try {
    c.executionCtx.waitUntil(work);
  } catch {
    // No ExecutionContext (app.request in tests): the work runs on by itself.
  }
}

/**
 * This location's cache for the request: keyed on the registry's own host, bypassed on
 * `*.workers.dev` (where the Cache API does nothing) and with EDGE_CACHE=off.
 */
export function edgeCacheOf(c: AppContext): EdgeCache {
  const config = readConfig(c.env);
  const url = new URL(c.req.url);
  const usable = config.edgeCacheEnabled && !url.hostname.endsWith(".workers.dev");
  return new EdgeCache({
    origin: usable ? url.origin : null,
    maxBytes: config.edgeCacheMaxBytes,
    tagTtlSeconds: config.edgeTagTtlSeconds,
    waitUntil: (work) => waitUntil(c, work),
  });
}

/**
 * Who made the request's changes, for the change seam's policies and listeners: the
 * authenticated user (or anonymous), the request's id (Cloudflare's `CF-Ray`, else one
 * made up), the client's address and user agent.
 */
export function changeContextOf(c: AppContext): ChangeContext {
  const context: ChangeContext = {
    actor: c.get("actor") ?? { kind: "anonymous", name: "" },
    requestId: c.req.header("CF-Ray") ?? crypto.randomUUID(),
  };
  const address = c.req.header("CF-Connecting-IP");
  if (address) context.address = address;
  const userAgent = c.req.header("User-Agent");
  if (userAgent) context.userAgent = userAgent;
  return context;
}

/**
 * The repository a request names (or, for a mirrored name, the one it is stored as),
 * its changes attributed to the request. `edge`: whether pulls may use this location's cache.
 */
export function repositoryOf(c: AppContext, name = repositoryName(c), { edge = true } = {}): Repository {
  return openRepository(c.env, name, {
    ...(edge ? { edge: edgeCacheOf(c) } : {}),
    context: changeContextOf(c),
  });
}
