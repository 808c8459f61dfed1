import type { Context } from "hono";
import type { AuthEnv, RequestActor } from "../auth/authorize";
import { clientAddressOf } from "../auth/client-address";
import { settingsOf } from "../settings/settings";
import { RegistryError } from "../oci/errors";
import { validateName } from "../oci/names";
import { hostnameOf, hostOf, originOf, queryParameter, requestUrl } from "../oci/request-url";
import { readAtMost } from "../registry/bounded";
import type { Actor, ChangeContext } from "../registry/changes";
import { meterOnEnv } from "../registry/meter";
import {
  EdgeCache,
  type EdgeCacheOptions,
  MAX_PAGE,
  openRepository,
  openRequested,
  type Repository,
  type ResolveOptions,
} from "../registry/registry";

export type AppEnv = AuthEnv;
export type AppContext = Context<AppEnv>;

/**
 * A request as the read routes use it: the request, its env, who made it (authorization
 * says) and how to keep work going after the answer. Hono's context gives one
 * (`routeRequestOf`); the pull path (routes/pull-path.ts) makes one without a context.
 */
export interface RouteRequest {
  readonly raw: Request;
  readonly env: Env;
  readonly actor: RequestActor | undefined;
  waitUntil(work: Promise<unknown>): void;
}

export function routeRequestOf(c: AppContext): RouteRequest {
  return { raw: c.req.raw, env: c.env, actor: c.get("actor"), waitUntil: (work) => waitUntil(c, work) };
}

/**
 * An error's answer: a RegistryError's code, status, detail and headers; anything else
 * an UNKNOWN 500 (logged). A HEAD's has no body. The one renderer of errors: app.ts's
 * error handler and the pull path.
 */
export function errorAnswer(error: unknown, method: string): Response {
  const registryError =
    error instanceof RegistryError ? error : new RegistryError("UNKNOWN", "internal error", { cause: String(error) });
  if (!(error instanceof RegistryError)) console.error("unhandled error", error);
  const headers: Record<string, string> = {
    "Docker-Distribution-API-Version": "registry/2.0",
    ...registryError.headers,
    "Content-Type": "application/json",
  };
  const body = method === "HEAD" ? null : JSON.stringify(registryError.toJSON());
  return new Response(body, { status: registryError.status, headers });
}

/** The repository name from the route, validated against the spec's grammar. */
export function repositoryName(c: AppContext): string {
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

/** `n` of a paginated listing (undefined when not asked), and `last`. */
export function pageQuery(c: AppContext): { n: number | undefined; last: string | undefined } {
  const n = c.req.query("n");
  if (n !== undefined && !/^\d+$/.test(n)) {
    throw new RegistryError("PAGINATION_NUMBER_INVALID", "n must be a non-negative integer", { n });
  }
  return { n: n === undefined ? undefined : Number(n), last: c.req.query("last") };
}

/** `n` and `last` of a paginated listing (tags, catalog), `n` at most MAX_PAGE. */
export function pagination(c: AppContext): { limit: number; last?: string } {
  const { n, last } = pageQuery(c);
  return { limit: Math.min(MAX_PAGE, n ?? MAX_PAGE), ...(last !== undefined ? { last } : {}) };
}

/** The `Link` header of a listing's next page. */
export function nextPageLink(
  path: string,
  limit: number,
  last: string,
  extraParams: Record<string, string> = {},
): string {
  const params = new URLSearchParams({ ...extraParams, n: String(limit), last });
  return `<${path}?${params.toString()}>; rel="next"`;
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
  c.header("Link", nextPageLink(path, limit, lastEntry === undefined ? "" : keyOf(lastEntry), extraParams));
  return page;
}

/** True when the client already holds this digest (`header`, its `If-None-Match`, names its ETag). */
export function notModified(header: string | undefined, digest: string): boolean {
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
  return edgeCacheFor(routeRequestOf(c));
}

export function edgeCacheFor(request: RouteRequest): EdgeCache {
  const config = settingsOf(request.env);
  const url = requestUrl(request.raw);
  const usable = config.edgeCacheEnabled && !hostnameOf(url).endsWith(".workers.dev");
  const options: EdgeCacheOptions = {
    origin: usable ? originOf(url) : null,
    maxBytes: config.edgeCacheMaxBytes,
    tagTtlSeconds: config.edgeTagTtlSeconds,
    waitUntil: (work) => request.waitUntil(work),
  };
  const meter = meterOnEnv(request.env);
  if (meter) options.meter = meter;
  return new EdgeCache(options);
}

/** Ids made up for requests that came without a `CF-Ray` (locally): one per request, however often asked. */
const madeUpIds = new WeakMap<Request, string>();
/**
 * A made-up id is this isolate's random prefix and a count (a random UUID per request cost
 * more than the rest of making the context).
 */
let madeUp: { prefix: string; count: number } | undefined;

function requestIdOf(request: Request): string {
  const ray = request.headers.get("CF-Ray");
  if (ray) return ray;
  let id = madeUpIds.get(request);
  if (!id) {
    madeUp ??= { prefix: crypto.randomUUID(), count: 0 };
    id = `${madeUp.prefix}-${++madeUp.count}`;
    madeUpIds.set(request, id);
  }
  return id;
}

/**
 * Who made a request's changes, for the change seam's policies and listeners: the
 * authenticated user (or anonymous), the request's id (Cloudflare's `CF-Ray`, else one
 * made up), the client's address and user agent, and the origin it addressed (for the
 * links events carry). All but the actor are read when first asked for: most requests
 * are pulls, which change nothing. A class, not an object with getters: V8 makes such an
 * object slowly, one accessor at a time, and a pull made one for nothing.
 */
class RequestChangeContext implements ChangeContext {
  private userAgentRead: string | null | undefined;
  constructor(
    readonly actor: Actor,
    private readonly request: Request,
    private readonly env: Env,
  ) {}
  get requestId(): string {
    return requestIdOf(this.request);
  }
  get address(): string | undefined {
    return clientAddressOf(this.request, this.env) || undefined;
  }
  get userAgent(): string | undefined {
    if (this.userAgentRead === undefined) this.userAgentRead = this.request.headers.get("User-Agent");
    return this.userAgentRead || undefined;
  }
  get origin(): string {
    return originOf(requestUrl(this.request));
  }
}

const ANONYMOUS: Actor = { kind: "anonymous", name: "" };

export function changeContextOf(c: AppContext): ChangeContext {
  return new RequestChangeContext(c.get("actor") ?? ANONYMOUS, c.req.raw, c.env);
}

function changeContextFor(request: RouteRequest): ChangeContext {
  return new RequestChangeContext(request.actor ?? ANONYMOUS, request.raw, request.env);
}

/**
 * The repository that serves the name the request's route names (a mirrored name's is the
 * mirror's decorator of the repository it is stored as: registry.ts openRequested), its
 * changes attributed to the request. A write (any method but GET and HEAD) to a read-only
 * repository is refused here, before anything starts. `edge`: whether pulls may use this
 * location's cache.
 */
export function requestedRepository(c: AppContext, { edge = true } = {}): Repository {
  return requestedRepositoryFor(routeRequestOf(c), c.req.param("name") ?? "", { edge });
}

/** `requestedRepository` for a request with or without Hono's context, `name` as the path gives it. */
export function requestedRepositoryFor(request: RouteRequest, name: string, { edge = true } = {}): Repository {
  const url = requestUrl(request.raw);
  const options: ResolveOptions = { context: changeContextFor(request) };
  if (edge) options.edge = edgeCacheFor(request);
  // The host matters only beside `?ns=` (is it naming this registry?).
  const ns = queryParameter(url, "ns");
  if (ns) {
    options.ns = ns;
    options.host = hostOf(url);
  }
  const repository = openRequested(request.env, name, options);
  const readOnly = repository.readOnlyReason();
  const method = request.raw.method;
  if (readOnly && method !== "GET" && method !== "HEAD") {
    throw new RegistryError("DENIED", readOnly, { name });
  }
  return repository;
}

/**
 * This registry's own repository `name` (the source of a mount, the web pages' view of what
 * is stored), its changes attributed to the request.
 */
export function repositoryOf(c: AppContext, name: string, { edge = true } = {}): Repository {
  return openRepository(c.env, name, {
    ...(edge ? { edge: edgeCacheOf(c) } : {}),
    context: changeContextOf(c),
  });
}
