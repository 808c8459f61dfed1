/**
 * Parts of a request's URL, read from `request.url` as the runtime serialised it (scheme,
 * `//`, host with any port, path, query) without parsing it again: a `new URL()` per use
 * cost a small request more than its routing did. The results are what `URL` would give
 * for that string (`host`, `origin`, `pathname`), since a serialised URL is already in
 * the form `URL` produces.
 */

/** Each request's URL string, read from the runtime once: every read of `request.url` makes a new string. */
const urls = new WeakMap<Request, string>();

/** `request.url`, read once per request. */
export function requestUrl(request: Request): string {
  let url = urls.get(request);
  if (url === undefined) {
    url = request.url;
    urls.set(request, url);
  }
  return url;
}

/** The query parameter `name` of `url` (as URLSearchParams decodes it), without parsing a URL that has no query. */
export function queryParameter(url: string, name: string): string | undefined {
  const query = url.indexOf("?");
  if (query < 0) return undefined;
  const fragment = url.indexOf("#", query);
  return new URLSearchParams(url.slice(query + 1, fragment < 0 ? url.length : fragment)).get(name) ?? undefined;
}

/** Index of the path's `/` (the URL's length when it has no path). */
function pathStart(url: string): number {
  const scheme = url.indexOf("//");
  const slash = url.indexOf("/", scheme < 0 ? 0 : scheme + 2);
  return slash < 0 ? url.length : slash;
}

/** `https://registry.example.com:8443`: the scheme and the host. */
export function originOf(url: string): string {
  return url.slice(0, pathStart(url));
}

/** `registry.example.com:8443`: the host as clients address it, with any port. */
export function hostOf(url: string): string {
  const scheme = url.indexOf("//");
  return url.slice(scheme < 0 ? 0 : scheme + 2, pathStart(url));
}

/** The host without its port (`[::1]` keeps its brackets, as `URL.hostname` does not: only suffixes are compared). */
export function hostnameOf(url: string): string {
  const host = hostOf(url);
  const colon = host.lastIndexOf(":");
  return colon > host.lastIndexOf("]") ? host.slice(0, colon) : host;
}

/** The path as sent, percent-encoding kept (`/v2/a%2Fb/tags/list`), without the query. */
export function rawPathOf(url: string): string {
  const start = pathStart(url);
  const query = url.indexOf("?", start);
  const fragment = url.indexOf("#", start);
  const end = Math.min(query < 0 ? url.length : query, fragment < 0 ? url.length : fragment);
  return url.slice(start, end);
}
