// Helpers for the benchmarks in this directory: child processes in their own process
// groups (always killed at exit), temp dirs, a small HTTP/1.1 client for 127.0.0.1, the two
// registries under test (edge-registry as `npm start` runs it, docker/distribution), and an
// RSS sampler for a server's process tree read from /proc.
//
// Every child is started detached (its own process group) and killed as a group on success,
// on failure, on timeout, and when this process exits or is signalled. Every wait loop has
// a deadline and every request a timeout.
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomFillSync } from "node:crypto";
import {
  closeSync,
  createReadStream,
  createWriteStream,
  openSync,
  readFileSync,
  readdirSync,
  readlinkSync,
} from "node:fs";
import { mkdir, stat, writeFile } from "node:fs/promises";
import http from "node:http";
import { basename, join, resolve } from "node:path";
import { clearInterval, setInterval } from "node:timers";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { cpus, loadavg, release, totalmem } from "node:os";
import { parseArgs } from "node:util";
import { freePort } from "../scripts/lib/free-port.mjs";
import { processKeeper } from "../scripts/lib/process-groups.mjs";
import { startFront } from "../scripts/lib/front.mjs";
import { distributionCommand } from "../scripts/lib/distribution.mjs";
import { clientEnv, isolatedArgs, probeIsolation } from "../scripts/lib/client-sandbox.mjs";

/** The repository root (where wrangler.toml lives). */
export const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));

export const MiB = 1 << 20;

const keeper = processKeeper({ tempPrefix: "edge-bench", keepTmpVariable: "BENCH_KEEP_TMP" });
export const { stopGroup, makeTempDir, removeTempDir } = keeper;

export function tailFile(path, lines = 40) {
  try {
    return readFileSync(path, "utf8").split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  }
}

// ---------------------------------------------------------------------------------------
// Commands.

const MAX_CAPTURE = 16 << 20;

function printable(command, args) {
  return [command, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(" ");
}

/**
 * Runs a command in its own process group with a timeout (the whole group is killed when it
 * expires, and whatever the command left in its group is killed when it exits). Resolves
 * { code, signal, stdout, stderr } (strings); rejects with the output on timeout or, unless
 * `check: false`, on a non-zero exit.
 */
export function run(command, args, { env = process.env, cwd = ROOT, timeoutMs = 120_000, check = true } = {}) {
  const line = printable(command, args);
  return new Promise((resolvePromise, rejectPromise) => {
    const child = spawn(command, args, { env, cwd, detached: true, stdio: ["ignore", "pipe", "pipe"] });
    let timedOut = false;
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    child.stdout.on("data", (chunk) => {
      if (stdout.length < MAX_CAPTURE) stdout += chunk;
    });
    child.stderr.on("data", (chunk) => {
      if (stderr.length < MAX_CAPTURE) stderr += chunk;
    });
    if (child.pid !== undefined) keeper.track(child.pid, line);
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid !== undefined) keeper.kill(child.pid, "SIGKILL");
    }, timeoutMs);
    let finished = false;
    const finish = (error, code, signal) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      if (child.pid !== undefined) {
        keeper.kill(child.pid, "SIGKILL");
        keeper.forget(child.pid);
      }
      const result = { command: line, code, signal, stdout, stderr };
      const details = `\n$ ${line}\n--- exit ${code ?? signal}\n--- stderr:\n${stderr.slice(-6000)}\n--- stdout:\n${stdout.slice(-3000)}`;
      if (error) rejectPromise(new Error(`failed to run ${line}: ${error.message}${details}`));
      else if (timedOut) rejectPromise(new Error(`timed out after ${timeoutMs} ms: ${line}${details}`));
      else if (check && code !== 0) rejectPromise(new Error(`command failed: ${line}${details}`));
      else resolvePromise(result);
    };
    child.once("error", (error) => finish(error, null, null));
    child.once("close", (code, signal) => finish(null, code, signal));
  });
}

/**
 * This process's command line parsed by node:util parseArgs (strict) with `options` and
 * -h/--help added; returns the values. A bad option prints its error and `usage()` to
 * stderr and exits 2; --help prints `usage()` to stdout and exits 0.
 */
export function parseCommandLine(options, usage) {
  let parsed;
  try {
    parsed = parseArgs({ options: { ...options, help: { type: "boolean", short: "h" } }, strict: true });
  } catch (error) {
    console.error(`${error.message}\n${usage()}`);
    process.exit(2);
  }
  if (parsed.values.help) {
    console.log(usage());
    process.exit(0);
  }
  return parsed.values;
}

/**
 * An integer option of `values` (parseCommandLine's), `fallback` when absent; anything but an
 * integer from `min` to `max` prints the usage to stderr and exits 2.
 */
export function integerOption(values, usage, name, fallback, min, max) {
  const value = Number(values[name] ?? fallback);
  if (!Number.isInteger(value) || value < min || value > max) {
    console.error(`--${name} must be an integer from ${min} to ${max}\n${usage()}`);
    process.exit(2);
  }
  return value;
}

/** First line of a short command's output ('' if it fails). */
export function commandLine(command, args) {
  const result = spawnSync(command, args, { encoding: "utf8", timeout: 10_000 });
  if (result.status !== 0) return "";
  return `${result.stdout}${result.stderr}`.trim().split("\n")[0] ?? "";
}

/** A checkout's short commit, "+dirty" when its src/ has changes ("?" for a tree that is no repository of its own). */
export function shortCommit(dir) {
  // A checkout that is not a repository of its own (an exported tree inside another): no commit.
  const top = commandLine("git", ["-C", dir, "rev-parse", "--show-toplevel"]);
  if (!top || resolve(top) !== resolve(dir)) return "?";
  const commit = commandLine("git", ["-C", dir, "rev-parse", "--short", "HEAD"]) || "?";
  const dirty = commandLine("git", ["-C", dir, "status", "--porcelain", "--", "src"]);
  return `${commit}${dirty ? "+dirty" : ""}`;
}

/** The CPU's model name from /proc/cpuinfo ('' where there is none). */
export function cpuModel() {
  try {
    return /^model name\s*:\s*(.*)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "";
  } catch {
    return ""; // no /proc/cpuinfo
  }
}

/** The version of an installed npm package (node_modules/<name>/package.json), or "?". */
export function packageVersion(name) {
  try {
    return JSON.parse(readFileSync(join(ROOT, "node_modules", name, "package.json"), "utf8")).version;
  } catch {
    return "?";
  }
}

// ---------------------------------------------------------------------------------------
// Files and hashing.

/** Writes `size` bytes of random (incompressible) data to `path`, in 1 MiB chunks. */
export async function writeRandomFile(path, size) {
  const out = createWriteStream(path);
  const chunk = Buffer.alloc(MiB);
  let left = size;
  try {
    while (left > 0) {
      const n = Math.min(left, chunk.length);
      randomFillSync(chunk, 0, n);
      // A copy per write: the stream may still hold the previous buffer.
      if (!out.write(Buffer.from(chunk.subarray(0, n)))) {
        await new Promise((resolveDrain, rejectDrain) => {
          const onDrain = () => {
            out.off("error", onError);
            resolveDrain();
          };
          const onError = (error) => {
            out.off("drain", onDrain);
            rejectDrain(error);
          };
          out.once("drain", onDrain);
          out.once("error", onError);
        });
      }
      left -= n;
    }
  } finally {
    await new Promise((resolveEnd, rejectEnd) => {
      out.once("error", rejectEnd);
      out.end(resolveEnd);
    });
  }
}

/**
 * A blob that is a rotation of the bytes of a file: view byte p is file byte (p + rotation)
 * mod size. One random file thus yields several distinct blobs of the same size without
 * writing more files (distinct, so no registry can deduplicate one against another).
 */
export class RotatedFile {
  constructor(path, size, rotation) {
    this.path = path;
    this.size = size;
    this.rotation = rotation % size;
    this.digest = undefined;
  }

  /** File ranges [start, end) making up view bytes [start, end). */
  segments(start = 0, end = this.size) {
    const out = [];
    let p = start;
    // At most two segments: one wrap-around.
    for (let i = 0; i < 3 && p < end; i++) {
      const f = (p + this.rotation) % this.size;
      const n = Math.min(end - p, this.size - f);
      out.push([f, f + n]);
      p += n;
    }
    if (p !== end) throw new Error(`internal: rotated range ${start}-${end} not covered`);
    return out;
  }

  /** Async iterable of the view bytes [start, end), read in 1 MiB chunks. */
  async *read(start = 0, end = this.size) {
    for (const [a, b] of this.segments(start, end)) {
      if (b <= a) continue;
      yield* createReadStream(this.path, { start: a, end: b - 1, highWaterMark: MiB });
    }
  }

  /** Computes (once) and returns "sha256:<hex>" of the view. */
  async sha256() {
    if (!this.digest) {
      const hash = createHash("sha256");
      let n = 0;
      for await (const chunk of this.read()) {
        hash.update(chunk);
        n += chunk.length;
      }
      if (n !== this.size) throw new Error(`${this.path}: read ${n} bytes, expected ${this.size}`);
      this.digest = `sha256:${hash.digest("hex")}`;
    }
    return this.digest;
  }
}

/** sha256 ("sha256:<hex>") and size of a file. */
export async function hashFile(path) {
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: MiB })) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { digest: `sha256:${hash.digest("hex")}`, size };
}

/** Writes JSON as a blob into an OCI layout's blobs/sha256; returns { digest, size }. */
export async function writeJsonBlob(layout, value) {
  const bytes = Buffer.from(JSON.stringify(value));
  const hex = createHash("sha256").update(bytes).digest("hex");
  await writeFile(join(layout, "blobs", "sha256", hex), bytes);
  return { digest: `sha256:${hex}`, size: bytes.length };
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 client for 127.0.0.1 (node:http, one connection per request).

function waitDrainOrClose(req) {
  return new Promise((resolveWait) => {
    const done = () => {
      req.off("drain", done);
      req.off("close", done);
      resolveWait();
    };
    req.on("drain", done);
    req.on("close", done);
  });
}

/**
 * One HTTP request. `body`: undefined, a Buffer/string, or an async iterable of Buffers
 * (streamed with backpressure; sent with Transfer-Encoding: chunked unless `headers` has a
 * Content-Length). `onData(chunk)` consumes the response body (else up to 1 MiB is kept).
 * Resolves { status, headers, body: Buffer, bytes } once the response has ended and the
 * request body was sent (or the server answered an error early). Rejects on a network
 * error or after `timeoutMs`.
 */
export function request(url, { method = "GET", headers = {}, body, onData, timeoutMs = 60_000 } = {}) {
  const target = new URL(url);
  if (target.hostname !== "127.0.0.1") return Promise.reject(new Error(`refusing non-loopback URL ${url}`));
  return new Promise((resolvePromise, rejectPromise) => {
    let settled = false;
    let response;
    let bodySent = body === undefined || typeof body === "string" || Buffer.isBuffer(body);
    const req = http.request({
      host: "127.0.0.1",
      port: Number(target.port),
      path: `${target.pathname}${target.search}`,
      method,
      headers,
      agent: false,
    });
    const timer = setTimeout(() => {
      fail(new Error(`timed out after ${timeoutMs} ms: ${method} ${url}`));
    }, timeoutMs);
    function fail(error) {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      rejectPromise(error);
    }
    function maybeFinish() {
      if (settled || !response) return;
      // An early error response ends the exchange even if the body is not all sent.
      if (!bodySent && response.status < 400) return;
      settled = true;
      clearTimeout(timer);
      if (!bodySent) req.destroy();
      resolvePromise(response);
    }
    req.on("error", (error) => fail(new Error(`${method} ${url}: ${error.message}`)));
    req.on("response", (res) => {
      const chunks = [];
      let kept = 0;
      let bytes = 0;
      res.on("data", (chunk) => {
        bytes += chunk.length;
        if (onData) onData(chunk);
        else if (kept < MiB) {
          chunks.push(chunk);
          kept += chunk.length;
        }
      });
      res.on("error", (error) => fail(new Error(`${method} ${url}: response: ${error.message}`)));
      res.on("aborted", () => fail(new Error(`${method} ${url}: response aborted`)));
      res.on("end", () => {
        response = { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), bytes };
        maybeFinish();
      });
    });
    if (body === undefined) req.end();
    else if (bodySent) req.end(body);
    else {
      (async () => {
        for await (const chunk of body) {
          if (settled || req.destroyed) return;
          if (!req.write(chunk)) await waitDrainOrClose(req);
        }
        if (settled || req.destroyed) return;
        await new Promise((resolveEnd) => req.end(resolveEnd));
        bodySent = true;
        maybeFinish();
      })().catch((error) => fail(error));
    }
  });
}

/** Throws a readable error unless `response.status` is `expected`. */
export function expectStatus(what, response, expected) {
  if (response.status !== expected) {
    const text = response.body.toString("utf8").slice(0, 2000);
    throw new Error(`${what}: expected HTTP ${expected}, got ${response.status}: ${text}`);
  }
}

// ---------------------------------------------------------------------------------------
// The two registries.

/** Spawns a long-running server in its own group and waits until GET /v2/ answers 200. */
async function startServer({ name, command, args, env, cwd, dir, port, readyTimeoutMs }) {
  const logFile = join(dir, "server.log");
  const logFd = openSync(logFile, "a");
  const child = spawn(command, args, { cwd, env, detached: true, stdio: ["ignore", logFd, logFd] });
  closeSync(logFd);
  if (child.pid === undefined) throw new Error(`could not start ${name} (${command})`);
  const pgid = child.pid;
  keeper.track(pgid, `${name} :${port}`);
  let exited = null;
  child.once("exit", (code, signal) => {
    exited = { code, signal };
  });
  child.once("error", (error) => {
    exited = { error: error.message };
  });
  const url = `http://127.0.0.1:${port}`;
  const logTail = (lines = 40) => `--- ${name} log (${logFile}), last ${lines} lines:\n${tailFile(logFile, lines)}`;
  let stopped = false;
  const server = {
    name,
    url,
    port,
    pid: child.pid,
    dir,
    logFile,
    logTail,
    alive: () => exited === null,
    async stop() {
      if (stopped) return;
      stopped = true;
      await stopGroup(pgid);
      await removeTempDir(dir);
    },
  };
  const deadline = Date.now() + readyTimeoutMs;
  let lastError = "";
  for (;;) {
    if (exited) {
      const tail = logTail();
      await server.stop();
      throw new Error(`${name} exited before it was ready: ${JSON.stringify(exited)}\n${tail}`);
    }
    if (Date.now() > deadline) {
      const tail = logTail();
      await server.stop();
      throw new Error(`${name} not ready within ${readyTimeoutMs} ms (${lastError})\n${tail}`);
    }
    try {
      const response = await request(`${url}/v2/`, { timeoutMs: 2000 });
      if (response.status === 200) break;
      lastError = `GET /v2/ answered ${response.status}`;
    } catch (error) {
      lastError = error.message;
    }
    await delay(250);
  }
  return server;
}

/**
 * edge-registry as `npm start` runs it, with a fresh --persist-to dir, logging errors only.
 * `settings`: Worker settings passed through the environment (EDGE_CACHE=off, …);
 * `root`: another checkout to run (a worktree of an older commit, for before/after
 * figures), by default this one; `accessLog`: a file for the front's access log; `args`:
 * more options for scripts/dev.mjs (`--header-timeout 10`, …).
 */
export async function startEdgeRegistry({
  readyTimeoutMs = 120_000,
  settings = {},
  root = ROOT,
  accessLog,
  args: extraArgs = [],
} = {}) {
  try {
    await stat(join(root, "build", "sha256.wasm"));
  } catch {
    throw new Error(`${join(root, "build", "sha256.wasm")} is missing: run \`npm run build:wasm\` there first`);
  }
  const dir = await makeTempDir("edge");
  const port = await freePort();
  await mkdir(join(dir, "config"), { recursive: true });
  // As `npm start` runs it: scripts/dev.mjs (the Worker bundled by `wrangler deploy
  // --dry-run`, served by Miniflare, behind a front that answers TLS handshakes at once).
  const args = [
    join(root, "scripts", "dev.mjs"),
    "--port",
    String(port),
    "--persist-to",
    join(dir, "state"),
    "--quiet",
    ...(accessLog ? ["--access-log", accessLog] : []),
    ...extraArgs,
  ];
  const env = {
    ...process.env,
    CLOUDFLARE_CF_FETCH_ENABLED: "false",
    WRANGLER_SEND_METRICS: "false",
    WRANGLER_SEND_ERROR_REPORTS: "false",
    WRANGLER_HIDE_BANNER: "true",
    WRANGLER_LOG_PATH: join(dir, "wrangler-logs"),
    XDG_CONFIG_HOME: join(dir, "config"),
    NO_COLOR: "1",
    FORCE_COLOR: "0",
    ...settings,
  };
  return startServer({
    name: "edge-registry",
    command: process.execPath,
    args,
    env,
    cwd: root,
    dir,
    port,
    readyTimeoutMs,
  });
}

/**
 * docker/distribution (`docker-registry serve`) on a fresh filesystem root, logging errors
 * only (its config: scripts/lib/distribution.mjs).
 */
export async function startDistribution({ readyTimeoutMs = 60_000 } = {}) {
  const dir = await makeTempDir("distribution");
  const port = await freePort();
  const { command, args, env } = await distributionCommand(dir, port);
  return startServer({ name: "distribution", command, args, env, cwd: dir, dir, port, readyTimeoutMs });
}

/**
 * A proxy on a free 127.0.0.1 port to `targetPort` that answers, at once, any connection
 * opening with a TLS handshake record (first byte 0x16), and proxies everything else: the
 * same front as npm start's (scripts/lib/front.mjs).
 *
 * Why: containers/image (skopeo) always tries HTTPS first, even with --tls-verify=false, and
 * falls back to HTTP when that fails. docker/distribution answers a TLS ClientHello on its
 * plain-HTTP port with an HTTP 400 at once, but workerd answers nothing, so skopeo would
 * wait for its 10 s TLS handshake timeout on every invocation. scripts/dev.mjs's own front
 * already answers such connections at once; the same relay in front of both servers keeps the
 * comparison symmetric (each pays the same extra hop).
 * Returns { port, connections(), rejected(), close() }.
 */
export async function startTlsRejectingRelay(targetPort) {
  return startFront({ targetPort });
}

/** `r2;dur=1;desc="2", cache;desc="hit"` → { r2: 2, cache: "hit", … }; {} without a header. */
export function parseTiming(header) {
  const timing = {};
  for (const metric of (header ?? "").split(",")) {
    const [name, ...parameters] = metric.trim().split(";");
    const desc = parameters.find((parameter) => parameter.startsWith("desc="))?.slice(6, -1);
    if (name && desc !== undefined) timing[name] = /^\d+$/.test(desc) ? Number(desc) : desc;
  }
  return timing;
}

// ---------------------------------------------------------------------------------------
// skopeo with a private policy, HOME and blob-info cache.

/**
 * A temp dir with skopeo's own policy (accept anything), registries.conf, auth file, HOME
 * and TMPDIR; as root, skopeo runs in a private mount namespace (scripts/lib/client-sandbox.mjs)
 * so that its blob-info cache is this run's own. Returns { dir, skopeo(args, timeoutMs),
 * isolated }; the caller removes `dir` (removeTempDir).
 */
export async function createSkopeo() {
  const dir = await makeTempDir("skopeo");
  const paths = {
    policy: join(dir, "policy.json"),
    registries: join(dir, "registries.conf"),
    auth: join(dir, "auth.json"),
    home: join(dir, "home"),
    tmp: join(dir, "tmp"),
    varLib: join(dir, "var-lib"),
    run: join(dir, "run"),
  };
  for (const key of ["home", "tmp", "varLib", "run"]) await mkdir(paths[key], { recursive: true });
  await writeFile(paths.policy, JSON.stringify({ default: [{ type: "insecureAcceptAnything" }] }));
  await writeFile(paths.registries, 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n');
  await writeFile(paths.auth, JSON.stringify({ auths: {} }));
  const env = clientEnv(paths);
  await mkdir(env.XDG_RUNTIME_DIR, { recursive: true, mode: 0o700 });
  // As root, skopeo keeps its blob-info cache in /var/lib/containers/cache, shared across
  // runs: a private mount namespace with temp dirs over /var/lib and /run makes it private.
  const isolated = probeIsolation(paths.varLib, paths.run);
  if (!isolated && process.getuid?.() === 0) {
    throw new Error(
      "cannot run skopeo in a private mount namespace (unshare -m): its shared blob-info cache would skew results",
    );
  }
  const skopeo = (args, timeoutMs) => {
    const full = ["--policy", paths.policy, ...args];
    if (!isolated) return run("skopeo", full, { env, cwd: dir, timeoutMs });
    return run("unshare", isolatedArgs(paths.varLib, paths.run, "skopeo", full), { env, cwd: dir, timeoutMs });
  };
  return { dir, skopeo, isolated };
}

// ---------------------------------------------------------------------------------------
// RSS of a server's process tree, from /proc.

const PAGE_SIZE = Number(commandLine("getconf", ["PAGESIZE"])) || 4096;
const CLOCK_TICKS = Number(commandLine("getconf", ["CLK_TCK"])) || 100;

/** pid -> { ppid } for every process, from /proc/<pid>/stat. */
function processTable() {
  const table = new Map();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    let text;
    try {
      text = readFileSync(`/proc/${name}/stat`, "latin1");
    } catch {
      continue; // gone
    }
    const close = text.lastIndexOf(")");
    const fields = text.slice(close + 2).split(" ");
    table.set(Number(name), { ppid: Number(fields[1]) });
  }
  return table;
}

/** The root pid and all its descendants, each with a kind (its executable's base name). */
function processTree(rootPid) {
  const table = processTable();
  const children = new Map();
  for (const [pid, { ppid }] of table) {
    if (!children.has(ppid)) children.set(ppid, []);
    children.get(ppid).push(pid);
  }
  const out = [];
  const queue = table.has(rootPid) ? [rootPid] : [];
  for (let i = 0; i < queue.length && i < 10_000; i++) {
    const pid = queue[i];
    let kind = "?";
    try {
      kind = basename(readlinkSync(`/proc/${pid}/exe`));
    } catch {
      // gone or not readable
    }
    out.push({ pid, kind });
    for (const child of children.get(pid) ?? []) queue.push(child);
  }
  return out;
}

function rssOf(pid) {
  try {
    const fields = readFileSync(`/proc/${pid}/statm`, "latin1").split(" ");
    return Number(fields[1]) * PAGE_SIZE;
  } catch {
    return 0; // gone
  }
}

/** The pids of the processes of a tree whose executable is `kind`. */
export function treePids(rootPid, kind) {
  return processTree(rootPid)
    .filter((entry) => entry.kind === kind)
    .map((entry) => entry.pid);
}

/** User + system CPU seconds the processes of a tree whose executable is `kind` have used so far. */
export function treeCpuSeconds(rootPid, kind) {
  let total = 0;
  for (const entry of processTree(rootPid)) if (entry.kind === kind) total += cpuSecondsOf(entry.pid) ?? 0;
  return total;
}

const CPU_PART = process.env.BENCH_CPU ?? "all";

/** User + system CPU seconds a process has used so far (undefined if it is gone). */
function cpuSecondsOf(pid) {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, "latin1");
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
    const user = Number(fields[11]);
    const system = Number(fields[12]);
    // BENCH_CPU=user or =system counts only that part (where a difference lies: code or the kernel).
    const counted = CPU_PART === "user" ? user : CPU_PART === "system" ? system : user + system;
    return counted / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}

/**
 * Samples the summed RSS of a process tree every `intervalMs` between start() and stop();
 * stop() returns { total, byKind: { workerd, node, ... }, cpu: { total, byKind } }: RSS
 * peaks in bytes (each kind's peak is the peak of that kind's sum, so they need not add
 * up to the total's peak) and the CPU seconds (user + system) the tree used meanwhile
 * (a process that exits between two samples loses its last < 100 ms).
 */
export class RssSampler {
  constructor(rootPid, intervalMs = 100) {
    this.rootPid = rootPid;
    this.intervalMs = intervalMs;
    this.timer = undefined;
  }

  refreshTree() {
    this.tree = processTree(this.rootPid);
    this.treeAt = Date.now();
  }

  sample() {
    if (!this.tree || Date.now() - this.treeAt > 1000) this.refreshTree();
    let total = 0;
    const byKind = {};
    for (const { pid, kind } of this.tree) {
      const rss = rssOf(pid);
      total += rss;
      byKind[kind] = (byKind[kind] ?? 0) + rss;
      const cpu = cpuSecondsOf(pid);
      if (cpu !== undefined) {
        if (!this.cpuStart.has(pid)) this.cpuStart.set(pid, this.started ? 0 : cpu);
        this.cpuLast.set(pid, { kind, cpu });
      }
    }
    this.peak.total = Math.max(this.peak.total, total);
    for (const [kind, rss] of Object.entries(byKind))
      this.peak.byKind[kind] = Math.max(this.peak.byKind[kind] ?? 0, rss);
    this.samples++;
  }

  start() {
    this.peak = { total: 0, byKind: {} };
    this.samples = 0;
    this.cpuStart = new Map();
    this.cpuLast = new Map();
    this.started = false;
    this.refreshTree();
    this.sample();
    // Processes first seen after this point started during the measurement: from 0.
    this.started = true;
    this.timer = setInterval(() => this.sample(), this.intervalMs);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = undefined;
    this.refreshTree();
    this.sample();
    const cpu = { total: 0, byKind: {} };
    for (const [pid, { kind, cpu: last }] of this.cpuLast) {
      const used = Math.max(0, last - (this.cpuStart.get(pid) ?? 0));
      cpu.total += used;
      cpu.byKind[kind] = (cpu.byKind[kind] ?? 0) + used;
    }
    return { ...this.peak, cpu, samples: this.samples };
  }
}

/** A Markdown table of `rows` under `header`, columns padded to their widest cell. */
export function markdownTable(header, rows) {
  const widths = header.map((cell, i) => Math.max(cell.length, ...rows.map((row) => String(row[i]).length), 3));
  const line = (cells) => `| ${cells.map((cell, i) => String(cell).padEnd(widths[i])).join(" | ")} |`;
  return [line(header), `| ${widths.map((w) => "-".repeat(w)).join(" | ")} |`, ...rows.map(line)].join("\n");
}

/**
 * The lines a report starts with: date and commit (and whether src/ has uncommitted
 * changes), the machine, its load, node, wrangler and workerd; `extra`: the bench's own tools.
 */
export function reportFacts(extra = []) {
  const commit = commandLine("git", ["-C", ROOT, "rev-parse", "--short", "HEAD"]);
  const dirty = spawnSync("git", ["-C", ROOT, "status", "--porcelain", "--", "src"], {
    encoding: "utf8",
  }).stdout?.trim();
  const [one, five, fifteen] = loadavg().map((x) => x.toFixed(2));
  return [
    `- date: ${new Date().toISOString()}; commit ${commit || "?"}${dirty ? " (src/ has uncommitted changes)" : ""}`,
    `- nproc: ${commandLine("nproc", []) || cpus().length}; CPU: ${cpuModel() || cpus()[0]?.model || "?"}`,
    `- memory: ${(totalmem() / 2 ** 30).toFixed(1)} GiB, kernel ${release()}, load average at start ${one} ${five} ${fifteen}`,
    `- node ${process.versions.node}, wrangler ${packageVersion("wrangler")}, workerd ${packageVersion("@cloudflare/workerd-linux-64")}`,
    ...extra,
  ];
}
