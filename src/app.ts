import { Hono, type ErrorHandler, type MiddlewareHandler, type NotFoundHandler } from "hono";
import { TrieRouter } from "hono/router/trie-router";
import { auditExtension } from "./audit/audit";
import { authorize } from "./auth/authorize";
import { RegistryError } from "./oci/errors";
import { rawPathOf, requestUrl } from "./oci/request-url";
import { mirrorResolver } from "./mirror/mirrored-repository";
import { Meter, runMetered, withMeter } from "./registry/meter";
import { addSeamExtension } from "./registry/changes";
import { pullRecordsExtension } from "./registry/pull-recorder";
import { addRepositoryResolver } from "./registry/registry";
import { eventsExtension } from "./events/sender";
import { immutableTagsExtension } from "./policies/immutable-tags";
import { quotaExtension } from "./quotas/quota-keeper";
import { adminRoutes } from "./routes/admin";
import { adminAuditRoutes } from "./routes/admin-audit";
import { adminDeliveryRoutes } from "./routes/admin-deliveries";
import { adminTokenRoutes } from "./routes/admin-tokens";
import { blobRoutes } from "./routes/blobs";
import { dispatcher } from "./routes/dispatch";
import { errorAnswer, type AppEnv } from "./routes/http";
import { listingRoutes } from "./routes/listings";
import { manifestRoutes } from "./routes/manifests";
import { referrerRoutes } from "./routes/referrers";
import { servePull } from "./routes/pull-path";
import { RememberingRouter } from "./routes/remembering-router";
import { tokenRoutes } from "./routes/token";
import { uploadRoutes } from "./routes/uploads";
import { uiRoutes } from "./ui/routes";

// The composition root: layers above the registry that serve some names with a
// repository of their own register here (the mirror decorates mirrored names).
addRepositoryResolver(mirrorResolver);
// Policies, cheapest first: tags IMMUTABLE_TAGS names never move or go
// (src/policies/immutable-tags.ts; no storage call to refuse); then storage quotas per
// namespace (QUOTAS: a policy and a listener, src/quotas, reserving in a Durable Object,
// given back if a later step abandons the change).
addSeamExtension(immutableTagsExtension);
addSeamExtension(quotaExtension);
// The audit log hears every committed change (src/audit).
addSeamExtension(auditExtension);
// Every committed change (and, for endpoints that asked, every pull) becomes an event on
// the EVENTS queue when WEBHOOKS names an endpoint (src/events/sender.ts).
addSeamExtension(eventsExtension);
// When each manifest was last pulled, and how often (src/registry/pull-recorder.ts): the
// web pages show it, and retention's `pulledWithin` removes tags nobody pulls.
addSeamExtension(pullRecordsExtension);

// Hono's trie router, remembering its matches per isolate (routes/remembering-router.ts). Not
// Hono's default SmartRouter: it would first build a RegExpRouter, which refuses the API's
// `:name{.+}` routes, at the first request, and then use a TrieRouter anyway.
export const app = new Hono<AppEnv>({ router: new RememberingRouter(new TrieRouter()) });

/** What every API request meets before its route: the path's check, then authorization (its answer gets the API's version header: app.fetch below). */
const api: MiddlewareHandler<AppEnv> = (c, next) => {
  // Names, tags and digests never contain '%': a percent-encoded path (`%2F`, `%2E%2E`)
  // is an attempt to smuggle characters past the grammar, so refuse it up front.
  if (rawPathOf(requestUrl(c.req.raw)).includes("%")) {
    throw new RegistryError("NAME_INVALID", "percent-encoded characters are not allowed in names or references");
  }
  // Called here rather than as a middleware of its own: one step less for every request.
  return authorize(c, next);
};
app.use("/v2", api);
app.use("/v2/*", api);

// API version check: 200 tells clients this is a v2 registry.
app.get("/v2/", (c) => c.json({}));
app.get("/v2", (c) => c.json({}));

const v2 = new Hono<AppEnv>();
v2.route("/", listingRoutes);
v2.route("/", uploadRoutes);
v2.route("/", blobRoutes);
v2.route("/", manifestRoutes);
v2.route("/", referrerRoutes);
app.route("/v2", v2);
app.route("/_admin", adminRoutes);
app.route("/_admin", adminAuditRoutes);
app.route("/_admin", adminDeliveryRoutes);
app.route("/_admin", adminTokenRoutes);
// The web pages (src/ui): after the API's routes, at the paths they leave free.
app.route("/", uiRoutes);
app.route("/token", tokenRoutes);

const notFound: NotFoundHandler<AppEnv> = () => {
  throw new RegistryError("UNSUPPORTED", "no such endpoint", undefined, {}, 404);
};

// Rendered by errorAnswer (routes/http.ts, the pull path's too), sent through the context so
// that headers a route set before failing (the pages' no-store and framing rules) are kept.
const onError: ErrorHandler<AppEnv> = (error, c) => {
  const answer = errorAnswer(error, c.req.method);
  for (const [header, value] of answer.headers) c.header(header, value);
  const status = answer.status as 400;
  return answer.body === null ? c.body(null, status) : c.body(answer.body, status);
};

app.notFound(notFound);
app.onError(onError);

const dispatch = dispatcher(app, onError, notFound);

/** `/v2` and everything under it: the answers that carry the API's version header. */
function isApiPath(request: Request): boolean {
  const path = rawPathOf(requestUrl(request));
  return path.startsWith("/v2/") || path === "/v2";
}

/**
 * Every request, `app.request` in tests included: the app's routes (routes/dispatch.ts).
 * Every answer says what it cost in storage calls (Server-Timing; see registry/meter.ts),
 * and every API answer, errors included, which API it is (`Docker-Distribution-API-Version`),
 * both set on the answer as made, not on headers copied into it.
 */
app.fetch = async (...[request, env, executionCtx]: Parameters<typeof app.fetch>) => {
  const meter = new Meter();
  // The request's code finds its meter on its env (registry/meter.ts). A request that may
  // change something also runs in it: the change seam's policies and listeners are kept
  // per isolate and find it there (a GET or HEAD changes nothing, and skips that cost).
  const scoped = withMeter(env ?? {}, meter);
  const method = request.method;
  // A pull's request whose authorization is known skips Hono (routes/pull-path.ts).
  const response =
    method === "GET" || method === "HEAD"
      ? ((await servePull(request, scoped as Env, executionCtx)) ?? (await dispatch(request, scoped, executionCtx)))
      : await runMetered(meter, () => dispatch(request, scoped, executionCtx));
  const api = isApiPath(request);
  try {
    const headers = response.headers;
    headers.set("Server-Timing", meter.header());
    if (api) headers.set("Docker-Distribution-API-Version", "registry/2.0");
    return response;
  } catch {
    // An answer with immutable headers (one passed through from the cache): copy it.
    const copy = new Response(response.body, response);
    copy.headers.set("Server-Timing", meter.header());
    if (api) copy.headers.set("Docker-Distribution-API-Version", "registry/2.0");
    return copy;
  }
};
