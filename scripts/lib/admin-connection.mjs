// How the operator commands (npm run gc, npm run audit) reach the registry's /_admin
// endpoints: a running registry by its URL, with the ADMIN_TOKEN environment variable as
// the bearer token; or the local state (.wrangler/state, or another directory) by starting
// the Worker on it with a one-off admin token. Do not point the latter at the state of a
// registry that is running: use its URL.
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { resolve } from "node:path";

/** The headers and body of an admin request: the bearer token, and `json` as the body when given. */
function request(token, json) {
  const headers = { Authorization: `Bearer ${token}` };
  if (json === undefined) return { headers };
  return { headers: { ...headers, "Content-Type": "application/json" }, body: JSON.stringify(json) };
}

/**
 * `url`: the running registry's, or undefined for the local state in `state` (default
 * .wrangler/state). `fail(message)` reports what is missing and exits. Returns { call(method,
 * path[, json]) → { status, body }, stop() }; `json`, when given, is sent as the JSON body.
 */
export async function adminConnection({ url, state, fail }) {
  if (url) {
    const token = process.env.ADMIN_TOKEN;
    if (!token) fail("set ADMIN_TOKEN to the registry's admin token (the ADMIN_TOKEN Worker secret)");
    const call = async (method, path, json) => {
      const response = await fetch(new URL(path, url), { method, ...request(token, json) });
      return { status: response.status, body: await response.text() };
    };
    return { call, stop: async () => undefined };
  }
  const stateDir = resolve(state ?? ".wrangler/state");
  if (!existsSync(stateDir)) fail(`no state at ${stateDir}`);
  // The Worker's bundle imports build/sha256.wasm (what `npm run build:wasm` writes; silent).
  await import("../build-wasm.mjs");
  const token = randomUUID();
  // Loaded here only: Miniflare takes ~1 s to import, which a command given --url never needs.
  const { startLocalWorker } = await import("./local-worker.mjs");
  const { miniflare, stop } = await startLocalWorker({
    persistTo: stateDir,
    quiet: true,
    bindings: { ADMIN_TOKEN: token },
  });
  const call = async (method, path, json) => {
    const response = await miniflare.dispatchFetch(new URL(path, "http://admin.local").toString(), {
      method,
      ...request(token, json),
    });
    return { status: response.status, body: await response.text() };
  };
  return { call, stop };
}
