import { knownActor } from "../auth/authorize";
import { rawPathOf, requestUrl } from "../oci/request-url";
import { serveBlob } from "./blobs";
import { errorAnswer, type RouteRequest } from "./http";
import { serveTags } from "./listings";
import { serveManifest } from "./manifests";

/** A manifest by tag or digest (GET, HEAD): the name, then the reference. */
const MANIFEST = /^\/v2\/(.+)\/manifests\/([^/]+)$/;
/** A blob (GET, HEAD), by something digest-like (anything else is the routes' to refuse). */
const BLOB = /^\/v2\/(.+)\/blobs\/([^/]*:[^/]*)$/;
/** A repository's tags (GET), the first page (no query). */
const TAGS = /^\/v2\/(.+)\/tags\/list$/;

type Serve = (request: RouteRequest) => Promise<Response>;

/** The route a pull's request takes, or undefined for any other request. */
function pullRoute(method: string, path: string): Serve | undefined {
  let match = MANIFEST.exec(path);
  if (match) {
    const [, name = "", reference = ""] = match;
    return (request) => serveManifest(request, name, reference);
  }
  match = BLOB.exec(path);
  if (match) {
    const [, name = "", digest = ""] = match;
    return (request) => serveBlob(request, name, digest);
  }
  match = method === "GET" ? TAGS.exec(path) : null;
  if (match) {
    const [, name = ""] = match;
    return (request) => serveTags(request, name, () => ({ n: undefined, last: undefined }));
  }
  return undefined;
}

/**
 * The pull path: the requests a pull makes over and over with one token (a manifest's
 * HEAD and GET, a blob's HEAD and GET, the first page of tags) answered by the same route
 * functions as through Hono, through the same repository API, without Hono's router,
 * context and middleware. Only a request whose authorization is already known takes it
 * (auth/authorize.ts `knownActor`: an open registry, or a user's token that was allowed
 * this very request before); every other request, the first of each token included, one
 * with a query (`?ns=`, `?n=`) or percent-encoding, and anything not a pull, gets null
 * here and goes through Hono as always (app.ts). A small request's CPU is mostly the
 * layers around its one storage call (docs/performance.md, "Request CPU against
 * serverless-registry"); this path is most of that cost taken away, nothing of what the
 * request is checked for.
 */
export async function servePull(
  request: Request,
  env: Env,
  executionCtx: { waitUntil(work: Promise<unknown>): void } | undefined,
): Promise<Response | null> {
  const method = request.method;
  if (method !== "GET" && method !== "HEAD") return null;
  const url = requestUrl(request);
  if (url.includes("?")) return null;
  const path = rawPathOf(url);
  if (!path.startsWith("/v2/") || path.includes("%")) return null;
  const serve = pullRoute(method, path);
  if (!serve) return null;
  try {
    const actor = await knownActor(request, env, path);
    if (!actor) return null;
    return await serve({
      raw: request,
      env,
      actor,
      waitUntil: (work) => {
        try {
          executionCtx?.waitUntil(work);
        } catch {
          // No usable ExecutionContext (app.request in tests): the work runs on by itself.
        }
      },
    });
  } catch (error) {
    return errorAnswer(error, method);
  }
}
