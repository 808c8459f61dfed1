// End-to-end harness: runs the Worker as `npm start` does (scripts/dev.mjs: the Worker
// bundled by wrangler, served by Miniflare/workerd) on a free 127.0.0.1 port with a
// fresh state directory, and runs the real OCI clients (skopeo, podman, buildah, umoci)
// against it with private, throw-away configuration and storage.
//
// - The server runs on a snapshot of the checkout, so the code under test and its bundle
//   are what they were at the start; E2E_IN_PLACE=1 runs it in place. Servers of the same
//   code share one bundle (build/e2e-bundles, or WORKER_BUNDLE_CACHE).
// - scripts/dev.mjs puts a small HTTP front before workerd that refuses TLS at once,
//   because workerd never answers a TLS ClientHello and containers/image tries https://
//   first (10 s per command otherwise).
// - Clients run in a private mount namespace with temp dirs over /var/lib and /run (the
//   root blob-info cache lives in /var/lib/containers/cache), with their own policy.json,
//   registries.conf, storage.conf (vfs) and containers.conf.
//
// Every child process is started in its own process group (detached) and killed as a
// group: on success, on failure, on timeout and when this test process exits or is
// signalled. Every command has a timeout and every wait loop a deadline.
//
// Set E2E_KEEP_TMP=1 to keep the temp directories (registry state, registry log, client
// storage, image layouts) for inspection, and E2E_VERBOSE=1 to log every command with its
// duration on stderr.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes, randomFillSync, randomUUID } from "node:crypto";
import { closeSync, createReadStream, createWriteStream, openSync, readdirSync, readFileSync } from "node:fs";
import { get as httpGet } from "node:http";
import { cp, mkdir, readdir, readFile, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { once } from "node:events";
import { join, resolve } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { freePort } from "../../scripts/lib/free-port.mjs";
import { processKeeper } from "../../scripts/lib/process-groups.mjs";
import { startFront } from "../../scripts/lib/front.mjs";
import { distributionCommand } from "../../scripts/lib/distribution.mjs";
import { clientEnv, isolatedArgs, probeIsolation } from "../../scripts/lib/client-sandbox.mjs";

/** The repository root (where wrangler.toml lives). */
export const ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));

const VERBOSE = process.env.E2E_VERBOSE === "1";

const keeper = processKeeper({ tempPrefix: "er-e2e", keepTmpVariable: "E2E_KEEP_TMP" });
export const { stopGroup, makeTempDir, removeTempDir } = keeper;

// ---------------------------------------------------------------------------------------
// Hashing and small file helpers.

export function sha256(bytes) {
  return createHash("sha256").update(bytes).digest("hex");
}

/** sha256 (hex) and size of a file, streamed. */
export async function hashFile(path) {
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { hex: hash.digest("hex"), size };
}

/** Writes `size` bytes of random (incompressible) data to `path`, in 1 MiB chunks. */
export async function writeRandomFile(path, size) {
  const out = createWriteStream(path);
  const chunk = Buffer.alloc(1 << 20);
  let left = size;
  try {
    while (left > 0) {
      const n = Math.min(left, chunk.length);
      randomFillSync(chunk, 0, n);
      if (!out.write(n === chunk.length ? chunk : chunk.subarray(0, n))) await once(out, "drain");
      left -= n;
    }
  } finally {
    await new Promise((resolveEnd, rejectEnd) => {
      out.once("error", rejectEnd);
      out.end(resolveEnd);
    });
  }
}

/** The last `lines` lines of a text file ('' if unreadable). */
export function tailFile(path, lines = 40) {
  try {
    const text = readFileSync(path, "utf8");
    return text.split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  }
}

// ---------------------------------------------------------------------------------------
// Running commands.

export class CommandError extends Error {
  constructor(message, result) {
    super(message);
    this.name = "CommandError";
    this.result = result;
  }
}

const MAX_CAPTURE = 64 << 20;

/**
 * Runs a command in its own process group with a timeout (the whole group is killed when
 * it expires). `input`, if given, is written to its stdin. Resolves { code, signal, stdout:
 * Buffer, stderr: string }; rejects with a CommandError carrying the output when it times
 * out or (unless `check: false`) exits non-zero.
 */
export function run(
  command,
  args,
  { env = process.env, cwd = ROOT, timeoutMs = 120_000, check = true, context, input } = {},
) {
  const printable = [command, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(" ");
  return new Promise((resolvePromise, rejectPromise) => {
    const stdin = input === undefined ? "ignore" : "pipe";
    const child = spawn(command, args, { env, cwd, detached: true, stdio: [stdin, "pipe", "pipe"] });
    if (input !== undefined) child.stdin.end(input);
    const description = `${printable}`;
    let timedOut = false;
    const stdout = [];
    let stdoutSize = 0;
    let stderr = "";
    child.stdout.on("data", (chunk) => {
      if (stdoutSize < MAX_CAPTURE) stdout.push(chunk);
      stdoutSize += chunk.length;
    });
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      if (stderr.length < MAX_CAPTURE) stderr += chunk;
    });
    if (child.pid !== undefined) keeper.track(child.pid, description);
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid !== undefined) keeper.kill(child.pid, "SIGKILL");
    }, timeoutMs);
    const started = performance.now();
    const finish = (error, code, signal) => {
      clearTimeout(timer);
      if (VERBOSE) {
        const seconds = ((performance.now() - started) / 1000).toFixed(1);
        console.error(`# ${seconds}s exit ${code ?? signal ?? error?.message}: ${printable.slice(-300)}`);
      }
      if (child.pid !== undefined) {
        // Reap anything the command left behind in its group.
        keeper.kill(child.pid, "SIGKILL");
        keeper.forget(child.pid);
      }
      const result = { command: printable, code, signal, stdout: Buffer.concat(stdout), stderr };
      const details = () => {
        let text = `\n$ ${printable}\n--- exit ${code ?? signal}\n--- stderr:\n${stderr.slice(-8000)}`;
        const out = result.stdout.toString("utf8");
        if (out.trim()) text += `\n--- stdout:\n${out.slice(-4000)}`;
        if (context) text += `\n${context()}`;
        return text;
      };
      if (error) rejectPromise(new CommandError(`failed to run ${printable}: ${error.message}${details()}`, result));
      else if (timedOut)
        rejectPromise(new CommandError(`timed out after ${timeoutMs} ms: ${printable}${details()}`, result));
      else if (check && code !== 0) rejectPromise(new CommandError(`command failed: ${printable}${details()}`, result));
      else resolvePromise(result);
    };
    child.once("error", (error) => finish(error, null, null));
    child.once("close", (code, signal) => finish(null, code, signal));
  });
}

/**
 * `r2;dur=1.5;desc="2", cache;dur=0;desc="hit"` → { r2: 2, cache: "hit", … } (desc as a
 * number where it is one), with `<name>Ms` for each dur.
 */
export function parseServerTiming(header) {
  const timing = {};
  for (const metric of (header ?? "").split(",")) {
    const [name, ...parameters] = metric.trim().split(";");
    if (!name) continue;
    for (const parameter of parameters) {
      const [key, raw = ""] = parameter.split("=");
      const value = raw.replace(/^"|"$/g, "");
      if (key === "desc") timing[name] = /^\d+$/.test(value) ? Number(value) : value;
      if (key === "dur") timing[`${name}Ms`] = Number(value);
    }
  }
  return timing;
}

/** The summed resident memory (bytes) of every process in a process group (ps). */
export function processGroupRss(pgid) {
  const listed = spawnSync("ps", ["-o", "rss=", "-g", String(pgid)], { encoding: "utf8", timeout: 10_000 });
  return listed.stdout
    .split("\n")
    .map((line) => Number(line.trim()))
    .filter((kib) => Number.isFinite(kib) && kib > 0)
    .reduce((sum, kib) => sum + kib * 1024, 0);
}

/**
 * The command `promise` runs must fail, and say why: its stderr (or, for an error that is
 * not a command's, the error itself) must match `pattern`.
 */
export async function expectFailure(promise, pattern) {
  try {
    await promise;
  } catch (error) {
    assert.match(String(error.result?.stderr ?? error), pattern);
    return;
  }
  assert.fail("the command succeeded but should have failed");
}

/** True if `command` is on PATH. */
export function haveCommand(command) {
  return spawnSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore", timeout: 10_000 }).status === 0;
}

// ---------------------------------------------------------------------------------------
// The registry under test.

/**
 * Runs `work(signal)` with a deadline: `signal` aborts at `timeoutMs`, and the result
 * rejects then whatever `work` does. An abort that lands while undici's fetch reads a body
 * can leave that read pending for ever (nodejs/undici#4089): seen here as a suite that
 * hung in a readiness probe whose answer came just before its 2 s timeout.
 */
async function withDeadline(url, timeoutMs, work) {
  if (!new URL(url).hostname.startsWith("127.0.0.1")) throw new Error(`refusing to fetch non-loopback ${url}`);
  const controller = new AbortController();
  let timer;
  const expired = new Promise((_resolve, reject) => {
    timer = setTimeout(() => {
      const error = new Error(`fetch timed out after ${timeoutMs} ms: ${url}`);
      controller.abort(error);
      reject(error);
    }, timeoutMs);
  });
  const working = work(controller.signal);
  working.catch(() => undefined);
  try {
    return await Promise.race([working, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** fetch with a timeout (the body read within it); only ever called with 127.0.0.1 URLs. */
export function fetchWithTimeout(url, init = {}, timeoutMs = 30_000) {
  return withDeadline(url, timeoutMs, async (signal) => {
    const response = await fetch(url, { ...init, signal });
    const body = Buffer.from(await response.arrayBuffer());
    return { status: response.status, headers: response.headers, body };
  });
}

/** Streams a GET body through sha256 (for big blobs); returns { status, headers, hex, size }. */
export function fetchHashed(url, init = {}, timeoutMs = 300_000) {
  return withDeadline(url, timeoutMs, async (signal) => {
    const response = await fetch(url, { ...init, signal });
    const hash = createHash("sha256");
    let size = 0;
    if (response.body) {
      for await (const chunk of response.body) {
        hash.update(chunk);
        size += chunk.length;
      }
    }
    return { status: response.status, headers: response.headers, hex: hash.digest("hex"), size };
  });
}

/**
 * Polls GET `url`/v2/ every `intervalMs` until it answers one of `statuses`. When the
 * server's process exits first (`exited()` is no longer null) or `readyTimeoutMs` passes,
 * stops it (`stop()`) and throws with its log's tail (`logTail()`, read before stopping).
 */
async function waitUntilReady({ name, url, statuses = [200], readyTimeoutMs, intervalMs, exited, stop, logTail }) {
  const deadline = Date.now() + readyTimeoutMs;
  let lastError = "";
  for (;;) {
    if (exited()) {
      const tail = logTail();
      await stop();
      throw new Error(`${name} exited before it was ready: ${JSON.stringify(exited())}\n${tail}`);
    }
    if (Date.now() > deadline) {
      const tail = logTail();
      await stop();
      throw new Error(`${name} not ready within ${readyTimeoutMs} ms (${lastError})\n${tail}`);
    }
    try {
      const response = await fetchWithTimeout(`${url}/v2/`, {}, 2000);
      if (statuses.includes(response.status)) return;
      lastError = `GET /v2/ answered ${response.status}`;
    } catch (error) {
      lastError = String(error?.cause ?? error);
    }
    await delay(intervalMs);
  }
}

/**
 * The port `npm start` (scripts/dev.mjs --port 0) listens on, from its ready line in
 * `logFile`. When its process exits first or `readyTimeoutMs` passes, stops it and throws
 * with its log's tail.
 */
async function readyPort({ logFile, readyTimeoutMs, exited, stop, logTail }) {
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    const port = /^edge-registry ready: http:\/\/127\.0\.0\.1:(\d+)\//m.exec(tailFile(logFile, 200))?.[1];
    if (port) return Number(port);
    if (exited() || Date.now() > deadline) {
      const tail = logTail();
      await stop();
      const why = exited()
        ? `exited before it was ready: ${JSON.stringify(exited())}`
        : `not ready within ${readyTimeoutMs} ms`;
      throw new Error(`the registry ${why}\n${tail}`);
    }
    await delay(100);
  }
}

/**
 * Where the servers of the suite keep the Worker's bundle (scripts/lib/bundle-cache.mjs):
 * each test file starts its own, often several, of the same code, and only the first
 * bundles it.
 */
const BUNDLE_CACHE = process.env.WORKER_BUNDLE_CACHE ?? join(ROOT, "build", "e2e-bundles");

/** Top-level entries of the checkout a snapshot leaves out (node_modules is symlinked). */
const SNAPSHOT_SKIP = new Set([".git", ".wrangler", ".tmp", "node_modules", "test", "bench"]);

/**
 * Copies the checkout (sources, wrangler.toml, build/*.wasm, ...) to `dir` and links its
 * node_modules, so a suite running while someone edits src/ tests the code as it was at
 * the start.
 */
async function snapshotCheckout(dir) {
  await mkdir(dir, { recursive: true });
  for (const entry of await readdir(ROOT)) {
    if (SNAPSHOT_SKIP.has(entry)) continue;
    await cp(join(ROOT, entry), join(dir, entry), {
      recursive: true,
      verbatimSymlinks: true,
      // Bundles of servers started in the checkout itself (scripts/lib/local-worker.mjs
      // writes build/worker-*, and removes it when that server stops) and the suite's
      // bundle cache (BUNDLE_CACHE): not needed, and one may vanish mid-copy.
      filter: (source) => !/[/\\]build[/\\](worker-[^/\\]*|e2e-bundles)$/.test(source),
    });
  }
  await symlink(join(ROOT, "node_modules"), join(dir, "node_modules"));
  return dir;
}

/**
 * Starts `scripts/dev.mjs --port 0 --persist-to <fresh dir>` (`server:
 * "npm-start"`) or `wrangler dev` behind the same TLS front (`server: "wrangler-dev"`) on
 * a snapshot of the checkout (see snapshotCheckout) and waits until GET /v2/ answers
 * (200, or 401 when `env` turns authentication on: AUTH_USERS and friends, taken from the
 * environment by scripts/lib/local-worker.mjs, or written to .dev.vars for wrangler dev).
 * Returns { port, host, url, clientHost, stateDir, logFile, logTail(), stop() }.
 */
export async function startRegistry({
  readyTimeoutMs = 90_000,
  env: extraEnv = {},
  server = "npm-start",
  bodyLimit,
} = {}) {
  const wasm = join(ROOT, "build", "sha256.wasm");
  try {
    await stat(wasm);
  } catch {
    throw new Error(`${wasm} is missing: run \`npm run build:wasm\` first`);
  }
  const dir = await makeTempDir("registry");
  const stateDir = join(dir, "state");
  const logFile = join(dir, "registry.log");
  await mkdir(join(dir, "config"), { recursive: true });
  // E2E_IN_PLACE=1 runs the server in the checkout itself; by default in a snapshot.
  const cwd = process.env.E2E_IN_PLACE === "1" ? ROOT : await snapshotCheckout(join(dir, "app"));
  // The registry as `npm start` runs it; or as `npm run dev` (plain `wrangler dev`) runs
  // it, with its settings in .dev.vars and the same TLS front (in this process) before it.
  // Its port is the system's choice when it binds (--port 0; its ready line says which):
  // a port chosen here and bound seconds later, after the start, could meanwhile be taken
  // by another suite's server or a client's connection (the suites run two at a time).
  const accessLogFile = join(dir, "access.log");
  let args = [
    join(cwd, "scripts", "dev.mjs"),
    "--port",
    "0",
    "--persist-to",
    stateDir,
    "--access-log",
    accessLogFile,
    ...(bodyLimit === undefined ? [] : ["--body-limit", String(bodyLimit)]),
  ];
  let front = null;
  if (server === "wrangler-dev") {
    const innerPort = await freePort();
    const vars = Object.entries(extraEnv).map(([name, value]) => `${name}='${value}'`);
    await writeFile(join(cwd, ".dev.vars"), `${vars.join("\n")}\n`);
    args = [
      join(cwd, "node_modules", "wrangler", "bin", "wrangler.js"),
      "dev",
      "--ip",
      "127.0.0.1",
      "--port",
      String(innerPort),
      "--persist-to",
      stateDir,
      "--show-interactive-dev-session=false",
    ];
    front = await startFront({ targetPort: innerPort, accessLog: accessLogFile, bodyLimit });
  }
  const env = {
    ...process.env,
    // Offline and quiet: no Request.cf download, no update check, no telemetry.
    CLOUDFLARE_CF_FETCH_ENABLED: "false",
    WRANGLER_SEND_METRICS: "false",
    WRANGLER_SEND_ERROR_REPORTS: "false",
    WRANGLER_HIDE_BANNER: "true",
    WRANGLER_LOG_PATH: join(dir, "wrangler-logs"),
    XDG_CONFIG_HOME: join(dir, "config"),
    WORKER_BUNDLE_CACHE: BUNDLE_CACHE,
    NO_COLOR: "1",
    FORCE_COLOR: "0",
    // Settings such as AUTH_USERS (scripts/lib/local-worker.mjs reads them from here).
    ...extraEnv,
  };
  const logFd = openSync(logFile, "a");
  const child = spawn(process.execPath, args, { cwd, env, detached: true, stdio: ["ignore", logFd, logFd] });
  closeSync(logFd);
  const pgid = child.pid;
  if (pgid === undefined) throw new Error("could not start the registry");
  keeper.track(pgid, `registry (${dir})`);
  let exited = null;
  child.once("exit", (code, signal) => {
    exited = { code, signal };
  });
  child.once("error", (error) => {
    exited = { error };
  });

  const logTail = (lines = 60) => `--- registry log (${logFile}), last ${lines} lines:\n${tailFile(logFile, lines)}`;
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await front?.close();
    await stopGroup(pgid);
    await removeTempDir(dir);
  };

  const port = front?.port ?? (await readyPort({ logFile, readyTimeoutMs, exited: () => exited, stop, logTail }));
  const host = `127.0.0.1:${port}`;
  const url = `http://${host}`;
  await waitUntilReady({
    name: "the registry",
    url,
    // 401: up, with authentication on.
    statuses: [200, 401],
    readyTimeoutMs,
    intervalMs: 250,
    exited: () => exited,
    stop,
    logTail,
  });
  const clientHost = host;
  /** Resident memory of the registry's processes (the front's node and workerd), in bytes. */
  const rssBytes = () => processGroupRss(pgid);
  /**
   * The front's access log: one entry per answered request ({method, path, status, ms,
   * serverTiming}, plus `timing`: Server-Timing parsed to {r2, kv, do, cache, ...}).
   * Entries are written as answers finish; `accessLog.mark()` and `accessLog.since(mark)`
   * take the ones of one phase of a test.
   */
  const accessLog = {
    entries() {
      let text;
      try {
        text = readFileSync(accessLogFile, "utf8");
      } catch {
        return [];
      }
      return text
        .split("\n")
        .filter((line) => line.trim() !== "")
        .map((line) => {
          const entry = JSON.parse(line);
          return { ...entry, timing: parseServerTiming(entry.serverTiming) };
        });
    },
    mark() {
      return this.entries().length;
    },
    since(mark) {
      return this.entries().slice(mark);
    },
    /** The entries since `mark` once no more arrive for a while (a client's last answer is logged after it got it). */
    async settledSince(mark) {
      let entries = this.since(mark);
      for (let attempt = 0; attempt < 40; attempt++) {
        await delay(75);
        const now = this.since(mark);
        if (now.length === entries.length) return now;
        entries = now;
      }
      return entries;
    },
  };
  return { port, host, url, clientHost, stateDir, logFile, logTail, rssBytes, accessLog, stop };
}

// ---------------------------------------------------------------------------------------
// The push relay (npm run relay), as its own process.

/**
 * Starts `node scripts/relay.mjs --to <to> --listen 127.0.0.1:<port> [--chunk <chunk>]`
 * (port: a free one unless given, so a test can start it again on the same port; `listen`:
 * the --listen value as typed, `{port}` standing for the port, by default
 * `127.0.0.1:{port}`) and waits for its ready line. Returns { port, host, url, output(),
 * kill(), stop() }.
 */
export async function startRelayProcess({ to, port, chunk, spoolDir, listen, readyTimeoutMs = 30_000 }) {
  const listenPort = port ?? (await freePort());
  const listenArgument = (listen ?? "127.0.0.1:{port}").replace("{port}", String(listenPort));
  const args = [join(ROOT, "scripts", "relay.mjs"), "--to", to, "--listen", listenArgument];
  if (chunk !== undefined) args.push("--chunk", String(chunk));
  if (spoolDir !== undefined) args.push("--spool-dir", spoolDir);
  const child = spawn(process.execPath, args, { cwd: ROOT, detached: true, stdio: ["ignore", "ignore", "pipe"] });
  if (child.pid === undefined) throw new Error("could not start the relay");
  const pgid = child.pid;
  keeper.track(pgid, `relay :${listenPort}`);
  let output = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (text) => {
    if (output.length < 1_000_000) output += text;
  });
  let exited = null;
  child.once("exit", (code, signal) => {
    exited = { code, signal };
  });
  const deadline = Date.now() + readyTimeoutMs;
  while (!/relay ready/.test(output)) {
    if (exited || Date.now() > deadline) {
      await stopGroup(pgid);
      throw new Error(`the relay did not start (${JSON.stringify(exited)}):\n${output}`);
    }
    await delay(50);
  }
  const host = `127.0.0.1:${listenPort}`;
  return {
    port: listenPort,
    host,
    url: `http://${host}`,
    output: () => output,
    /** Kills it at once (SIGKILL: as a crash or a pulled plug would) and waits until it is gone. */
    kill: async () => {
      keeper.kill(pgid, "SIGKILL");
      await stopGroup(pgid);
    },
    stop: () => stopGroup(pgid),
  };
}

// ---------------------------------------------------------------------------------------
// Client sandbox: private config, storage, caches; only 127.0.0.1:PORT is a registry.

/**
 * Creates the client sandbox for a registry whose clients use `registry.clientHost` (127.0.0.1:PORT).
 * Returns { dir, env, policy, isolated, run(cmd, args, opts), skopeo(...), podman(...), buildah(...), umoci(...), dispose() }.
 */
export async function createClients(registry) {
  const dir = await makeTempDir("clients");
  for (const bad of ["/var/lib", "/run"]) {
    if (dir === bad || dir.startsWith(`${bad}/`)) throw new Error(`temp dir ${dir} must not live under ${bad}`);
  }
  const paths = {
    policy: join(dir, "policy.json"),
    registries: join(dir, "registries.conf"),
    storage: join(dir, "storage.conf"),
    containers: join(dir, "containers.conf"),
    auth: join(dir, "auth.json"),
    varLib: join(dir, "var-lib"),
    run: join(dir, "run"),
    home: join(dir, "home"),
    tmp: join(dir, "tmp"),
    graphroot: join(dir, "graph"),
    // podman refuses a runroot longer than 50 characters.
    runroot: join(dir, "rr"),
    podmanTmp: join(dir, "podman-tmp"),
    network: join(dir, "network"),
  };
  for (const key of ["varLib", "run", "home", "tmp", "graphroot", "runroot", "podmanTmp", "network"]) {
    await mkdir(paths[key], { recursive: true });
  }
  await writeFile(paths.policy, JSON.stringify({ default: [{ type: "insecureAcceptAnything" }] }));
  await writeFile(
    paths.registries,
    [
      "unqualified-search-registries = []",
      'short-name-mode = "disabled"',
      "",
      "[[registry]]",
      `location = "${registry.clientHost}"`,
      "insecure = true",
      "",
    ].join("\n"),
  );
  await writeFile(
    paths.storage,
    ["[storage]", 'driver = "vfs"', `graphroot = "${paths.graphroot}"`, `runroot = "${paths.runroot}"`, ""].join("\n"),
  );
  await writeFile(
    paths.containers,
    [
      "[engine]",
      'events_logger = "none"',
      'cgroup_manager = "cgroupfs"',
      `tmp_dir = "${paths.podmanTmp}"`,
      `image_copy_tmp_dir = "${paths.tmp}"`,
      "",
      "[network]",
      `network_config_dir = "${paths.network}"`,
      "",
    ].join("\n"),
  );
  await writeFile(paths.auth, JSON.stringify({ auths: {} }));

  // No proxies: everything goes to 127.0.0.1 (scripts/lib/client-sandbox.mjs clientEnv).
  const env = clientEnv(paths, {
    XDG_DATA_HOME: join(paths.home, ".local", "share"),
    CONTAINERS_CONF: paths.containers,
    CONTAINERS_STORAGE_CONF: paths.storage,
    BUILDAH_ISOLATION: "chroot",
  });
  await mkdir(env.XDG_RUNTIME_DIR, { recursive: true, mode: 0o700 });

  const isolated = probeIsolation(paths.varLib, paths.run);
  if (!isolated) {
    console.error(
      "# warning: cannot create a private mount namespace (unshare -m); clients run unisolated " +
        "(their blob-info cache lives under the temp HOME only when not root)",
    );
  }

  const runClient = (command, args, options = {}) => {
    const opts = { env, cwd: dir, context: () => registry.logTail(), ...options };
    if (!isolated) return run(command, args, opts);
    return run("unshare", isolatedArgs(paths.varLib, paths.run, command, args), opts);
  };

  // Per-tool wrappers; the last argument may be an options object for run().
  const tool =
    (command, leading = []) =>
    (...args) => {
      const options = typeof args[args.length - 1] === "object" ? args.pop() : {};
      return runClient(command, [...leading, ...args], options);
    };

  return {
    dir,
    env,
    paths,
    isolated,
    run: runClient,
    skopeo: tool("skopeo", ["--policy", paths.policy]),
    podman: tool("podman", [
      "--root",
      paths.graphroot,
      "--runroot",
      paths.runroot,
      "--storage-driver",
      "vfs",
      "--events-backend",
      "none",
      "--cgroup-manager",
      "cgroupfs",
      "--tmpdir",
      paths.podmanTmp,
    ]),
    buildah: tool("buildah", ["--root", paths.graphroot, "--runroot", paths.runroot, "--storage-driver", "vfs"]),
    umoci: tool("umoci"),
    dispose: () => removeTempDir(dir),
  };
}

// ---------------------------------------------------------------------------------------
// containerd, for its own registry client (ctr): a private daemon (root, state and socket
// in a temp dir, CRI off), as root only.

/** Starts containerd and returns { ctr(...args), stop() }, or null where it cannot run here. */
export async function startContainerd({ readyTimeoutMs = 30_000 } = {}) {
  if (!haveCommand("containerd") || !haveCommand("ctr") || process.getuid?.() !== 0) return null;
  const dir = await makeTempDir("containerd");
  const socket = join(dir, "containerd.sock");
  const config = join(dir, "config.toml");
  await writeFile(
    config,
    [
      "version = 2",
      `root = "${join(dir, "root")}"`,
      `state = "${join(dir, "state")}"`,
      "[grpc]",
      `  address = "${socket}"`,
      '[plugins."io.containerd.grpc.v1.cri"]',
      "  disable = true",
      "",
    ].join("\n"),
  );
  const logFd = openSync(join(dir, "containerd.log"), "a");
  const child = spawn("containerd", ["--config", config], { detached: true, stdio: ["ignore", logFd, logFd] });
  closeSync(logFd);
  if (child.pid === undefined) throw new Error("could not start containerd");
  const pgid = child.pid;
  keeper.track(pgid, "containerd");
  const stop = async () => {
    await stopGroup(pgid);
    await removeTempDir(dir);
  };
  const ctr = (...args) => {
    const options = typeof args[args.length - 1] === "object" ? args.pop() : {};
    return run("ctr", ["--address", socket, ...args], options);
  };
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    const probe = await run("ctr", ["--address", socket, "version"], { check: false, timeoutMs: 5000 });
    if (probe.code === 0) return { ctr, stop };
    if (Date.now() > deadline) {
      const log = tailFile(join(dir, "containerd.log"));
      await stop();
      throw new Error(`containerd did not start in ${readyTimeoutMs} ms\n${log}`);
    }
    await delay(200);
  }
}

// ---------------------------------------------------------------------------------------
// The Docker engine (dockerd), as root only: a private daemon with no network setup.

/** Pids of processes (other than this one) whose command line mentions `text`, from /proc. */
function processesMentioning(text) {
  const found = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, "utf8").includes(text)) found.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** GET `path` on the unix socket `socketPath` (bounded); resolves its status, or null when unreachable. */
function socketStatus(socketPath, path, timeoutMs = 2000) {
  return new Promise((resolveStatus) => {
    const request = httpGet({ socketPath, path, timeout: timeoutMs }, (response) => {
      response.resume();
      resolveStatus(response.statusCode ?? null);
    });
    request.once("timeout", () => request.destroy());
    request.once("error", () => resolveStatus(null));
  });
}

/**
 * Starts dockerd with everything in a temp dir T: its daemon.json (`vfs` storage, no
 * iptables and no bridge, so it makes no network; 127.0.0.0/8 insecure; `mirrors` as its
 * `registry-mirrors`), data-root, exec-root (the containerd it starts keeps its state and
 * socket there), pidfile and API socket (unix://T/docker.sock). It runs in a private mount
 * namespace (unshare -m), so the bind mount it makes over its data-root dies with it and
 * never shows in this one. Only loopback is reachable: any other address goes to a proxy
 * on 127.0.0.1 that refuses connections, so a pull that would fall back to Docker Hub fails
 * at once instead of going out. `docker(...args, options)` runs the CLI against it
 * (DOCKER_CONFIG: T/cli, or `options.configDir`; the classic builder, DOCKER_BUILDKIT=0).
 * `stop()` kills it by its pidfile (its group, then its containerd's), checks that no
 * process mentioning T is left and removes T.
 * Returns { dir, host, docker(...args), logTail(), stop() }.
 */
export async function startDockerd({ mirrors = [], readyTimeoutMs = 60_000 } = {}) {
  const dir = await makeTempDir("dockerd");
  const socket = join(dir, "docker.sock");
  const pidfile = join(dir, "docker.pid");
  const logFile = join(dir, "dockerd.log");
  const config = join(dir, "daemon.json");
  await mkdir(join(dir, "cli"));
  await writeFile(
    config,
    JSON.stringify({
      "storage-driver": "vfs",
      iptables: false,
      ip6tables: false,
      bridge: "none",
      "insecure-registries": ["127.0.0.0/8"],
      "registry-mirrors": mirrors,
      "data-root": join(dir, "root"),
      "exec-root": join(dir, "exec"),
      pidfile,
      hosts: [`unix://${socket}`],
    }),
  );
  // Go sends nothing for loopback addresses through a proxy; port 1 has no listener.
  const deadProxy = "http://127.0.0.1:1";
  const env = {
    PATH: process.env.PATH ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    HOME: dir,
    HTTP_PROXY: deadProxy,
    HTTPS_PROXY: deadProxy,
    NO_PROXY: "127.0.0.1,localhost",
  };
  const logFd = openSync(logFile, "a");
  // unshare execs dockerd: the child's pid is dockerd's, and its group is dockerd's group.
  const child = spawn("unshare", ["-m", "--propagation", "private", "--", "dockerd", "--config-file", config], {
    env,
    detached: true,
    stdio: ["ignore", logFd, logFd],
  });
  closeSync(logFd);
  if (child.pid === undefined) throw new Error("could not start dockerd");
  keeper.track(child.pid, "dockerd");
  let exited = null;
  child.once("exit", (code, signal) => {
    exited = { code, signal };
  });
  const logTail = (lines = 40) => `--- dockerd log (${logFile}), last ${lines} lines:\n${tailFile(logFile, lines)}`;
  const readPid = (path) => {
    try {
      return Number(readFileSync(path, "utf8").trim()) || null;
    } catch {
      return null;
    }
  };
  const containerdPidfile = join(dir, "exec", "containerd", "containerd.pid");
  let containerdPid = null;
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    // SIGTERM stops dockerd and the containerd it started (a few seconds); containerd runs
    // in a session of its own, so it is killed by its own pidfile if it outlives dockerd.
    containerdPid ??= readPid(containerdPidfile);
    await stopGroup(readPid(pidfile) ?? child.pid, 15_000);
    await stopGroup(child.pid, 1000);
    // (Only while that pid is still its containerd: a pid is reused once its process is gone.)
    if (containerdPid !== null) {
      if (processesMentioning(dir).includes(containerdPid)) await stopGroup(containerdPid, 5000);
      else keeper.forget(containerdPid);
    }
    const left = processesMentioning(dir);
    for (const pid of left) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
    await removeTempDir(dir);
    if (left.length > 0) throw new Error(`dockerd left processes behind (killed): ${left.join(", ")}`);
  };
  const deadline = Date.now() + readyTimeoutMs;
  while ((await socketStatus(socket, "/_ping")) !== 200) {
    if (exited || Date.now() > deadline) {
      const tail = logTail();
      await stop();
      throw new Error(`dockerd did not start in ${readyTimeoutMs} ms (${JSON.stringify(exited)})\n${tail}`);
    }
    await delay(100);
  }
  containerdPid = readPid(containerdPidfile);
  if (containerdPid !== null) keeper.track(containerdPid, "dockerd's containerd");
  const host = `unix://${socket}`;
  const docker = (...args) => {
    const { configDir = join(dir, "cli"), ...options } = typeof args[args.length - 1] === "object" ? args.pop() : {};
    const cliEnv = {
      ...env,
      HOME: join(dir, "cli"),
      DOCKER_HOST: host,
      DOCKER_CONFIG: configDir,
      DOCKER_BUILDKIT: "0",
    };
    return run("docker", args, { env: cliEnv, context: () => logTail(), ...options });
  };
  return { dir, host, docker, logTail, stop };
}

// ---------------------------------------------------------------------------------------
// OCI image layouts.

/** Parsed index.json of an OCI layout. */
/** Adds a layer of `size` random bytes (written to `file`) to an image of a layout with umoci. */
export async function insertRandomLayer(clients, image, file, size, { createdBy, path }) {
  await writeRandomFile(file, size);
  await clients.umoci("insert", "--image", image, "--history.created_by", createdBy, file, path, {
    timeoutMs: 300_000,
  });
}

/** Runs skopeo copy with plain HTTP on both sides (only 127.0.0.1 is ever a registry), no retries. */
export function skopeoCopy(clients, source, destination, { all = false, creds, timeoutMs = 180_000 } = {}) {
  const args = [
    "copy",
    "--src-tls-verify=false",
    "--dest-tls-verify=false",
    "--preserve-digests",
    "--retry-times",
    "0",
  ];
  if (all) args.push("--all");
  // `creds`: `user:password` for the destination registry.
  if (creds) args.push("--dest-creds", creds);
  return clients.skopeo(...args, source, destination, { timeoutMs });
}

/**
 * Builds a single-manifest OCI layout with umoci: one layer per entry of `layerSizes`,
 * each a file of random bytes (so every layer is distinct), then garbage-collects so the
 * layout holds exactly the image's blobs. Returns { layout, tag, descriptor }.
 */
export async function buildOciImage(
  clients,
  workDir,
  name,
  layerSizes,
  { tag = "latest", arch, layout = join(workDir, name) } = {},
) {
  await clients.umoci("init", "--layout", layout).catch(async (error) => {
    // A second image in an existing layout (multi-arch): init fails because it exists.
    if (!/exist/i.test(error.result?.stderr ?? "")) throw error;
  });
  await clients.umoci("new", "--image", `${layout}:${tag}`);
  if (arch) await clients.umoci("config", "--image", `${layout}:${tag}`, "--architecture", arch, "--os", "linux");
  for (const [index, size] of layerSizes.entries()) {
    const file = join(workDir, `${name}-${tag}-layer${index}.bin`);
    await insertRandomLayer(clients, `${layout}:${tag}`, file, size, {
      createdBy: `e2e layer ${index}`,
      path: `/data/layer${index}.bin`,
    });
    await rm(file);
  }
  await clients.umoci("gc", "--layout", layout);
  return { layout, tag, descriptor: await descriptorFor(layout, tag) };
}

export async function readIndex(layout) {
  return JSON.parse(await readFile(join(layout, "index.json"), "utf8"));
}

/** The index.json descriptor tagged `tag` (org.opencontainers.image.ref.name). */
export async function descriptorFor(layout, tag) {
  const index = await readIndex(layout);
  const found = index.manifests.filter((d) => d.annotations?.["org.opencontainers.image.ref.name"] === tag);
  if (found.length !== 1) throw new Error(`${layout}: expected one descriptor tagged ${tag}, found ${found.length}`);
  return found[0];
}

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER = "application/vnd.oci.image.layer.v1.tar";
const REF_NAME = "org.opencontainers.image.ref.name";
const MiB = 1 << 20;

/** A POSIX ustar header for one regular file of `size` bytes. */
export function tarHeader(name, size) {
  const header = Buffer.alloc(512);
  header.write(name, 0, 100, "utf8");
  header.write("0000644\0", 100);
  header.write("0000000\0", 108);
  header.write("0000000\0", 116);
  header.write(`${size.toString(8).padStart(11, "0")}\0`, 124);
  header.write("00000000000\0", 136);
  header.write("        ", 148);
  header.write("0", 156);
  header.write("ustar\0", 257);
  header.write("00", 263);
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
  return header;
}

/** Writes an uncompressed tar layer (one file of `size` random bytes) into a layout; returns { digest, size }. */
export async function writeLayer(layout, fileName, size) {
  const temporary = join(layout, "blobs", "sha256", `.tmp-${randomUUID()}`);
  const out = createWriteStream(temporary);
  const hash = createHash("sha256");
  let total = 0;
  const write = async (bytes) => {
    hash.update(bytes);
    total += bytes.length;
    if (!out.write(bytes)) await once(out, "drain");
  };
  await write(tarHeader(fileName, size));
  for (let left = size; left > 0; left -= MiB) await write(randomBytes(Math.min(left, MiB)));
  await write(Buffer.alloc(((512 - (size % 512)) % 512) + 1024));
  await new Promise((resolveEnd, rejectEnd) => {
    out.once("error", rejectEnd);
    out.end(resolveEnd);
  });
  const hex = hash.digest("hex");
  await rename(temporary, join(layout, "blobs", "sha256", hex));
  return { digest: `sha256:${hex}`, size: total };
}

export async function initLayout(layout) {
  await mkdir(join(layout, "blobs", "sha256"), { recursive: true });
  await writeFile(join(layout, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
}

/** Tags `descriptor` as `tag` in the layout's index.json (replacing what had that tag). */
export async function addRef(layout, tag, descriptor) {
  let index = { schemaVersion: 2, manifests: [] };
  try {
    index = JSON.parse(await readFile(join(layout, "index.json"), "utf8"));
  } catch {
    // A new layout.
  }
  index.manifests = index.manifests.filter((entry) => entry.annotations?.[REF_NAME] !== tag);
  index.manifests.push({ ...descriptor, annotations: { [REF_NAME]: tag } });
  await writeFile(join(layout, "index.json"), JSON.stringify(index));
}

/**
 * An image with one uncompressed layer of random bytes per entry of `layerSizes`, written
 * by hand into the OCI layout `layout` (no umoci, no gzip: fast for large layers), tagged
 * `tag` unless null. Returns { layout, tag, descriptor, manifest, blobs: Map digest -> size
 * (manifest, config, layers) }.
 */
export async function writeImage(layout, name, layerSizes, { tag = "v1", arch = "amd64" } = {}) {
  await initLayout(layout);
  const layers = [];
  for (const [index, size] of layerSizes.entries()) {
    layers.push(await writeLayer(layout, `data/${name}-${arch}-${index}.bin`, size));
  }
  const config = await writeBlob(
    layout,
    Buffer.from(
      JSON.stringify({
        architecture: arch,
        os: "linux",
        config: { Labels: { "e2e.image": name } },
        rootfs: { type: "layers", diff_ids: layers.map((layer) => layer.digest) },
        history: layers.map((_, index) => ({ created_by: `e2e ${name} layer ${index}` })),
      }),
    ),
  );
  const manifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, ...config },
    layers: layers.map((layer) => ({ mediaType: OCI_LAYER, ...layer })),
  };
  const descriptor = { mediaType: OCI_MANIFEST, ...(await writeBlob(layout, Buffer.from(JSON.stringify(manifest)))) };
  if (tag) await addRef(layout, tag, descriptor);
  const blobs = new Map([[descriptor.digest, descriptor.size]]);
  for (const blob of [config, ...layers]) blobs.set(blob.digest, blob.size);
  return { layout, tag, descriptor, manifest, blobs, arch };
}

export function blobPath(layout, digest) {
  const [algorithm, hex] = digest.split(":");
  return join(layout, "blobs", algorithm, hex);
}

export async function readBlob(layout, digest) {
  return readFile(blobPath(layout, digest));
}

/**
 * Every blob of a layout, each verified (its sha256 is its file name):
 * Map "sha256:<hex>" -> size.
 */
export async function layoutBlobs(layout) {
  const blobs = new Map();
  const dir = join(layout, "blobs", "sha256");
  for (const name of (await readdir(dir)).sort()) {
    const { hex, size } = await hashFile(join(dir, name));
    if (hex !== name) throw new Error(`${layout}: blob ${name} hashes to ${hex}`);
    blobs.set(`sha256:${name}`, size);
  }
  return blobs;
}

/** Writes a blob into a layout; returns its descriptor fields { digest, size }. */
export async function writeBlob(layout, bytes) {
  const digest = `sha256:${sha256(bytes)}`;
  await writeFile(blobPath(layout, digest), bytes);
  return { digest, size: bytes.length };
}

// ---------------------------------------------------------------------------------------
// docker/distribution, as an upstream or a reference, and the registry's stored objects.

/**
 * docker/distribution (`docker-registry serve`, Debian's docker-registry) on a free
 * 127.0.0.1 port with a fresh filesystem root, deletes enabled, logging errors only (its
 * config: scripts/lib/distribution.mjs, as bench/lib.mjs startDistribution's; `notify`: a URL
 * its notifications go to). Stopping it (`stop()`) kills it and removes its storage.
 * Returns { port, host, url, logTail(), stop() }.
 */
export async function startDistribution({ readyTimeoutMs = 60_000, notify } = {}) {
  const dir = await makeTempDir("distribution");
  const port = await freePort();
  const logFile = join(dir, "distribution.log");
  const { command, args, env } = await distributionCommand(dir, port, { notify });
  const logFd = openSync(logFile, "a");
  const child = spawn(command, args, {
    cwd: dir,
    env,
    detached: true,
    stdio: ["ignore", logFd, logFd],
  });
  closeSync(logFd);
  if (child.pid === undefined) throw new Error("could not start docker-registry");
  const pgid = child.pid;
  keeper.track(pgid, `distribution :${port}`);
  let exited = null;
  child.once("exit", (code, signal) => {
    exited = { code, signal };
  });
  child.once("error", (error) => {
    exited = { error: error.message };
  });
  const host = `127.0.0.1:${port}`;
  const url = `http://${host}`;
  const logTail = (lines = 40) =>
    `--- distribution log (${logFile}), last ${lines} lines:\n${tailFile(logFile, lines)}`;
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await stopGroup(pgid);
    await removeTempDir(dir);
  };
  await waitUntilReady({
    name: "docker-registry",
    url,
    readyTimeoutMs,
    intervalMs: 100,
    exited: () => exited,
    stop,
    logTail,
  });
  return { port, host, url, logTail, stop };
}

const LIST_R2_OBJECTS = `
import glob, json, sqlite3, sys
objects = []
for path in glob.glob(sys.argv[1] + "/v3/r2/miniflare-R2BucketObject/*.sqlite"):
    if path.endswith("/metadata.sqlite"):
        continue
    db = sqlite3.connect("file:" + path + "?mode=ro", uri=True)
    try:
        for key, size, metadata in db.execute("SELECT key, size, custom_metadata FROM _mf_objects"):
            objects.append({"key": key, "size": size, "metadata": json.loads(metadata or "{}")})
        uploads = [{"uploadId": u, "key": k, "state": s} for u, k, s in db.execute("SELECT upload_id, key, state FROM _mf_multipart_uploads")]
    finally:
        db.close()
    print(json.dumps({"objects": objects, "multipartUploads": uploads}))
    sys.exit(0)
print(json.dumps({"objects": [], "multipartUploads": []}))
`;

/**
 * What a registry started by startRegistry holds in its R2 bucket, read from Miniflare's
 * SQLite store under its state directory (read-only, while it runs): { objects: [{key,
 * size, metadata (custom metadata)}], multipartUploads: [{uploadId, key, state}] }. Blob
 * bytes are `data/<id>` objects; each stored blob's descriptor is `blobs/<algorithm>/<hex>`
 * (body {digest, size, key}; its custom metadata names its data object: {key, size}).
 */
export async function r2Objects(registry) {
  const { stdout } = await run("python3", ["-c", LIST_R2_OBJECTS, registry.stateDir], { timeoutMs: 30_000 });
  return JSON.parse(stdout.toString("utf8"));
}

// ---------------------------------------------------------------------------------------
// A real browser, for the web pages (test/e2e/ui.test.mjs).

/**
 * The Chromium the web-page tests drive: Debian's `chromium` package (.ci/run installs
 * it), never a browser downloaded by playwright's installer. E2E_CHROMIUM overrides it.
 */
export const CHROMIUM = process.env.E2E_CHROMIUM ?? "/usr/bin/chromium";

/**
 * Launches CHROMIUM headless through playwright-core (no sandbox: the suite runs as root
 * in CI). Close it with `browser.close()`; playwright also kills it when this process exits.
 */
export async function launchChromium({ timeoutMs = 30_000 } = {}) {
  const { chromium } = await import("playwright-core");
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"], timeout: timeoutMs });
}

/**
 * Builds a one-layer OCI image with umoci in `layout` (created if need be), tagged `tag`,
 * its config naming `arch` and holding `labels` (umoci config --config.label), the layer
 * `layerSize` random bytes. Returns { layout, tag, descriptor }.
 */
export async function buildLabelledImage(
  clients,
  workDir,
  layout,
  { tag = "latest", arch = "amd64", labels = {}, layerSize = 4096 } = {},
) {
  await clients.umoci("init", "--layout", layout).catch((error) => {
    if (!/exist/i.test(error.result?.stderr ?? "")) throw error;
  });
  const image = `${layout}:${tag}`;
  await clients.umoci("new", "--image", image);
  const labelArgs = Object.entries(labels).flatMap(([key, value]) => ["--config.label", `${key}=${value}`]);
  await clients.umoci("config", "--image", image, "--os", "linux", "--architecture", arch, ...labelArgs);
  const file = join(workDir, `${tag}-${arch}-${randomFillSync(Buffer.alloc(8)).toString("hex")}.bin`);
  await insertRandomLayer(clients, image, file, layerSize, {
    createdBy: `e2e ${tag} ${arch}`,
    path: "/data/layer.bin",
  });
  await rm(file);
  await clients.umoci("gc", "--layout", layout);
  return { layout, tag, descriptor: await descriptorFor(layout, tag) };
}
