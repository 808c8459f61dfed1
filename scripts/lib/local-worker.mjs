// The Worker as it runs locally (npm start, npm run verify): bundled by wrangler exactly as
// `wrangler deploy` bundles it, served by Miniflare with the bindings wrangler.toml declares
// and its state persisted under <persistTo>/v3, the layout `wrangler dev` uses. See
// docs/architecture.md, "Local development server", for why not `wrangler dev` itself.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { Log, LogLevel, Miniflare } from "miniflare";
import { applyMigrations } from "./d1-migrations.mjs";
import { cachedBundle } from "./bundle-cache.mjs";

const CONFIG = "wrangler.toml";

/**
 * Miniflare's binding proxy makes synchronous calls (the D1 binding's `prepare`, when the
 * migrations are applied) through a worker thread. Under heavy load one such call has
 * failed with an AssertionError from its SynchronousFetcher (five servers starting at once
 * on two cores), after which that instance's proxy cannot be trusted: the start is made
 * again with a new instance, at most this many times in all. Anything else fails the start.
 */
const STARTS = 3;

function isProxyRace(error) {
  return error?.code === "ERR_ASSERTION" && String(error.stack).includes("SynchronousFetcher");
}

/** Bundles the Worker into `outDir` with wrangler's own bundler; throws with wrangler's output on failure. */
export function bundleWorker(outDir) {
  const wranglerCli = createRequire(import.meta.url).resolve("wrangler/bin/wrangler.js");
  const bundled = spawnSync(process.execPath, [wranglerCli, "deploy", "--dry-run", "--outdir", outDir, "-c", CONFIG], {
    encoding: "utf8",
    env: { ...process.env, WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" },
  });
  if (bundled.status !== 0) throw new Error(`bundling failed\n${bundled.stdout}\n${bundled.stderr}`);
}

/**
 * A deployed Worker needs TOKEN_SECRET set; locally one is made once per state directory
 * (kept beside the state, readable by its owner only), so logins survive restarts.
 */
function localTokenSecret(persistTo) {
  const file = join(resolve(persistTo), "token-secret");
  if (!existsSync(file)) {
    mkdirSync(resolve(persistTo), { recursive: true });
    writeFileSync(file, randomBytes(32).toString("hex"), { mode: 0o600 });
  }
  return readFileSync(file, "utf8").trim();
}

/**
 * Secrets and optional settings that are not in wrangler.toml's [vars] (src/secrets.d.ts)
 * but may come from the environment too. Every [vars] setting may as well: handy for
 * tests and one-off runs (`EDGE_LINK_TTL_SECONDS=0 npm start`).
 */
const SECRETS = [
  "AUTH_USERS",
  "AUTH_ACCESS",
  "OIDC_TRUST",
  "TOKEN_SECRET",
  "ADMIN_TOKEN",
  "AUTH_SERVICE",
  "AUTH_REALM",
  "R2_ACCESS_KEY_ID",
  "R2_SECRET_ACCESS_KEY",
  "R2_ENDPOINT",
  "R2_BUCKET_NAME",
  "BLOB_REDIRECT_MIN_BYTES",
  "BLOB_REDIRECT_TTL_SECONDS",
];

/**
 * Starts the Worker on 127.0.0.1:`port` (0: any free port). `bindings` adds or overrides
 * variables (the verify command passes a one-off ADMIN_TOKEN). Settings come from
 * wrangler.toml, then `.dev.vars`, then the environment (any of those names, and SECRETS), then
 * `bindings`. Without AUTH_USERS the local registry runs open (AUTH_MODE=open): a
 * deployed Worker without users is read-only instead.
 *
 * Every start makes a new random `frontSecret`, bound as LOCAL_FRONT_SECRET: the Worker
 * then trusts `CF-Connecting-IP` only on requests that carry it, which only the front
 * (startFront's `frontSecret`) sends. workerd's own port is on 127.0.0.1 and visible in
 * `ps`; without the secret, anything on the machine could send it requests with a chosen
 * address and so dodge the failed-login limit per address (src/auth/client-address.ts).
 *
 * Returns the Miniflare instance, the port it listens on, whether authentication is
 * enforced, the front's secret, and stop() (disposes it and removes its bundle).
 */
export async function startLocalWorker({ persistTo, port = 0, quiet = false, bindings = {} }) {
  process.env.CLOUDFLARE_CF_FETCH_ENABLED = "false";
  process.env.WRANGLER_SEND_METRICS = "false";
  // A bundle of its own per start: two servers starting at once must not overwrite
  // each other's files (the e2e suite and the benchmarks start several).
  // With WORKER_BUNDLE_CACHE (the e2e harness), code bundled before is not bundled again
  // (scripts/lib/bundle-cache.mjs); the cached bundle is kept when this server stops.
  const build = async (outDir) => {
    bundleWorker(outDir);
    const { unstable_getMiniflareWorkerOptions } = await import("wrangler");
    return unstable_getMiniflareWorkerOptions(CONFIG).workerOptions;
  };
  const cacheDir = process.env.WORKER_BUNDLE_CACHE;
  let bundleDir;
  let workerOptions;
  if (cacheDir) {
    ({ bundleDir, workerOptions } = await cachedBundle(resolve(cacheDir), build));
  } else {
    mkdirSync(resolve("build"), { recursive: true });
    bundleDir = mkdtempSync(join(resolve("build"), "worker-"));
    workerOptions = await build(bundleDir);
  }
  const settable = new Set([
    ...SECRETS,
    ...Object.entries(workerOptions.bindings ?? {})
      .filter(([, value]) => typeof value === "string")
      .map(([name]) => name),
  ]);
  // Upstream credentials (UPSTREAMS' "credentials") are secrets of any name: UPSTREAM_* ones pass;
  // so do the webhook settings and the secrets their endpoints name (WEBHOOK*).
  for (const name of Object.keys(process.env)) {
    if (name.startsWith("UPSTREAM_") || name.startsWith("WEBHOOK")) settable.add(name);
  }
  const fromEnvironment = Object.fromEntries(
    [...settable].filter((name) => process.env[name] !== undefined).map((name) => [name, process.env[name]]),
  );
  const frontSecret = randomBytes(32).toString("hex");
  const settings = { ...workerOptions.bindings, ...fromEnvironment, LOCAL_FRONT_SECRET: frontSecret, ...bindings };
  // Users, or trusted OIDC issuers (OIDC_TRUST): authentication is enforced.
  const authenticated = ["AUTH_USERS", "OIDC_TRUST"].some(
    (name) => typeof settings[name] === "string" && settings[name].trim() !== "",
  );
  if (!authenticated) settings.AUTH_MODE = "open";
  if (authenticated && !settings.TOKEN_SECRET) settings.TOKEN_SECRET = localTokenSecret(persistTo);
  const options = {
    ...workerOptions,
    bindings: settings,
    name: "edge-registry",
    modules: true,
    scriptPath: join(bundleDir, "index.js"),
    modulesRoot: bundleDir,
    modulesRules: [
      { type: "ESModule", include: ["**/*.js"] },
      { type: "CompiledWasm", include: ["**/*.wasm"] },
    ],
    host: "127.0.0.1",
    port,
    defaultPersistRoot: join(resolve(persistTo), "v3"),
    log: new Log(quiet ? LogLevel.ERROR : LogLevel.INFO),
    logRequests: !quiet,
  };
  let miniflare;
  let listening;
  for (let attempt = 1; ; attempt++) {
    miniflare = new Miniflare(options);
    try {
      // The port workerd listens on (with `port` 0, the one the system gave it: no other
      // process can take it between choosing and binding, as one may a port chosen beforehand).
      listening = Number(new URL(await miniflare.ready).port);
      // The audit log's and the deliveries' tables (D1), as `npm run deploy` migrates them.
      await applyMigrations(await miniflare.getD1Database("AUDIT"));
      break;
    } catch (error) {
      await miniflare.dispose().catch(() => undefined);
      if (attempt >= STARTS || !isProxyRace(error)) throw error;
      console.error(
        `edge-registry: Miniflare's binding proxy failed while starting (${error.message}); starting again`,
      );
    }
  }
  // Miniflare's own signal handling may end the process before an async stop finishes:
  // remove the bundle on exit, synchronously, however the process ends.
  const removeBundle = () => {
    if (!cacheDir) rmSync(bundleDir, { recursive: true, force: true });
  };
  process.once("exit", removeBundle);
  const stop = async () => {
    await miniflare.dispose();
    removeBundle();
  };
  return { miniflare, port: listening, authenticated, frontSecret, stop };
}
