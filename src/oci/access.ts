/**
 * The vocabulary of access control, as the Docker registry token specification names
 * it: a request needs actions on a resource, a scope names them
 * (`repository:team/app:pull,push`, `registry:catalog:*`), and a token carries grants.
 * Pure: no I/O.
 */
export type Action = "pull" | "push" | "delete";
export const ACTIONS: readonly Action[] = ["pull", "push", "delete"];

export type Resource = { type: "repository"; name: string } | { type: "registry"; name: "catalog" };

/**
 * What one request needs: actions on a resource; `base` for the API version check
 * (any identity, anonymous included, but one must be presented when authentication is
 * on, so that `docker login` sees the challenge); `nothing` for a path that is no
 * endpoint (it gets its 404).
 */
export type Need = { resource: Resource; actions: Action[] } | "base" | "nothing";

export interface Grant {
  type: string;
  name: string;
  actions: string[];
}

export function resourceKey(resource: Resource): string {
  return `${resource.type}:${resource.name}`;
}

/** `repository:team/app:pull,push` / `registry:catalog:*`. */
export function formatScope(resource: Resource, actions: Action[]): string {
  if (resource.type === "registry") return "registry:catalog:*";
  return `repository:${resource.name}:${actions.join(",")}`;
}

/**
 * Parses one `scope` parameter of a token request. Repository names may not contain
 * ':' (the name grammar), so the last ':' separates the actions. Unknown resource
 * types and actions are dropped, as the token spec allows (a token carries only what
 * was granted).
 */
export function parseScope(text: string): { resource: Resource; actions: Action[] } | null {
  const first = text.indexOf(":");
  const last = text.lastIndexOf(":");
  if (first <= 0 || last === first) return null;
  const type = text.slice(0, first);
  const name = text.slice(first + 1, last);
  const actions = text.slice(last + 1).split(",");
  // Listing the catalog counts as pulling it (`registry:catalog:*`).
  if (type === "registry" && name === "catalog") {
    return { resource: { type: "registry", name: "catalog" }, actions: ["pull"] };
  }
  if (type !== "repository" || name === "") return null;
  return {
    resource: { type: "repository", name },
    actions: ACTIONS.filter((action) => actions.includes(action) || actions.includes("*")),
  };
}

/**
 * What a /v2 request needs, from its method and path: the one table of endpoint to
 * scope. The patterns are the routes' own (a greedy name, then the endpoint), so a
 * name containing `blobs` or `manifests` components is classified as Hono routes it.
 * A request no pattern matches needs nothing and falls through to its 404.
 */
export function needOf(method: string, path: string): Need {
  if (path === "/v2" || path === "/v2/") return "base";
  if (path === "/v2/_catalog") return { resource: { type: "registry", name: "catalog" }, actions: ["pull"] };
  const repository = (name: string): Resource => ({ type: "repository", name });
  const read = method === "GET" || method === "HEAD";
  let match = /^\/v2\/(.+)\/blobs\/uploads\/?(?:[^/]*)$/.exec(path);
  if (match?.[1]) return { resource: repository(match[1]), actions: ["pull", "push"] };
  match = /^\/v2\/(.+)\/(?:blobs|manifests)\/[^/]+$/.exec(path);
  if (match?.[1]) {
    if (read) return { resource: repository(match[1]), actions: ["pull"] };
    if (method === "DELETE") return { resource: repository(match[1]), actions: ["delete"] };
    return { resource: repository(match[1]), actions: ["pull", "push"] };
  }
  match = /^\/v2\/(.+)\/(?:tags\/list|referrers\/[^/]+)$/.exec(path);
  if (match?.[1]) return { resource: repository(match[1]), actions: ["pull"] };
  return "nothing";
}
