#!/usr/bin/env node
// Local registry: the Worker bundled exactly as `wrangler deploy` bundles it, served by
// Miniflare (workerd, with R2, KV and Durable Objects persisted on local disk) behind a
// small HTTP front on 127.0.0.1 (scripts/lib/local-worker.mjs starts the Worker).
//
// Why Miniflare directly and not `wrangler dev`: wrangler dev runs two workerd
// processes, its own proxy Worker in front of ours, and every byte of every upload
// crossed both. The proxy answers any non-GET request that is in flight when it
// believes the Worker reloaded with `503 Your worker restarted mid-request`, which is
// what broke large skopeo pushes (docs/operations.md). Miniflare on its own serves the
// same Worker, with the same bindings (read from wrangler.toml by wrangler's own
// `unstable_getMiniflareWorkerOptions`) and the same state layout (`<persist>/v3`, so
// `wrangler dev` and `npm start` share state), with one process and one hop less.
// There is no hot reload: restart after editing src/ (`npm run dev` is wrangler dev with
// reload, for working on the code).
//
// Why the front: see scripts/lib/front.mjs (HTTPS-first clients fall back at once, answers
// given before a body was read reach the client, malformed requests get an OCI 400).
//
// Usage: node scripts/dev.mjs [--port 5000] [--persist-to .wrangler/state] [--quiet] [--access-log FILE]
//                             [--body-limit SIZE] [--header-timeout SECONDS]
//                             [--body-idle-timeout SECONDS] [--max-connections-per-address N]
//
// --body-limit SIZE (100MB, 32MiB, or bytes) refuses any request whose body is larger with
// an HTML 413 before the Worker sees it, as Cloudflare's edge does for the plan's limit:
// how the limit, and the relay that gets layers past it, are shown and tested locally.
//
// --header-timeout (10 s), --body-idle-timeout (60 s) and --max-connections-per-address
// (256) bound what slow clients may hold of the front (scripts/lib/connection-limits.mjs;
// docs/configuration.md, "The local front and the relay").
import { resolve } from "node:path";
import { startLocalWorker } from "./lib/local-worker.mjs";
import { connectionLimitsFrom } from "./lib/connection-limits.mjs";
import { startFront } from "./lib/front.mjs";
import { formatBytes, parseSize } from "./lib/sizes.mjs";

const args = process.argv.slice(2);
function option(name, fallback) {
  const index = args.indexOf(name);
  return index >= 0 && args[index + 1] !== undefined ? args[index + 1] : fallback;
}
const port = Number(option("--port", process.env.PORT ?? "5000"));
const persistTo = resolve(option("--persist-to", ".wrangler/state"));
const quiet = args.includes("--quiet");
// --access-log FILE: a JSON line per request, with what it cost in storage calls (Server-Timing).
const accessLog = option("--access-log", undefined);
let bodyLimit;
try {
  const text = option("--body-limit", undefined);
  bodyLimit = text === undefined ? undefined : parseSize(text);
} catch (error) {
  console.error(`--body-limit: ${error.message}`);
  process.exit(2);
}
let limits;
try {
  limits = connectionLimitsFrom({
    "header-timeout": option("--header-timeout", undefined),
    "body-idle-timeout": option("--body-idle-timeout", undefined),
    "max-connections-per-address": option("--max-connections-per-address", undefined),
  });
} catch (error) {
  console.error(error.message);
  process.exit(2);
}

// workerd on a port of the system's choosing, the front on --port (0: also the system's;
// the ready line below says which, and the e2e harness reads it from there).
const {
  port: innerPort,
  authenticated,
  frontSecret,
  stop: stopWorker,
} = await startLocalWorker({ persistTo, port: 0, quiet });

const front = await startFront({
  port,
  targetPort: innerPort,
  accessLog: accessLog && resolve(accessLog),
  bodyLimit,
  limits,
  frontSecret,
});
const auth = authenticated
  ? "authentication enforced (AUTH_USERS or OIDC_TRUST)"
  : "OPEN: no authentication, anyone on this machine may push (set AUTH_USERS to require logins)";
const limit = bodyLimit === undefined ? "" : `; request bodies over ${formatBytes(bodyLimit)} refused with 413`;
console.log(`edge-registry ready: http://127.0.0.1:${front.port}/v2/ (state in ${persistTo}; ${auth}${limit})`);

async function stop() {
  await front.close();
  await stopWorker();
  process.exit(0);
}
process.on("SIGINT", () => void stop());
process.on("SIGTERM", () => void stop());
