#!/usr/bin/env node
// workerd CPU per small request, with authentication on: what one pull-side request costs
// the Worker, per registry checkout, side by side.
//
//   node bench/request-cpu.mjs                                  this checkout, 2 rounds of 3000 requests per kind
//   node bench/request-cpu.mjs --dir ../before --dir .          two checkouts side by side
//   node bench/request-cpu.mjs --peer /tmp/peer-sr              and cloudflare/serverless-registry as a column
//   node bench/request-cpu.mjs --peer /tmp/peer-sr --floor      and the floor: each kind's one storage call, nothing else
//   node bench/request-cpu.mjs --dir . --floor --floor-ours       the floor, and the floor with our wrangler.toml's config
//   node bench/request-cpu.mjs --dir ../before --dir . --profile   and where the CPU goes (top self time)
//
// Each --dir (default: the checkout this file is in) is a registry checkout with its own
// node_modules and `npm run build:wasm` done. A round starts every target (the --dir ones,
// then --peer) at once, each in its own process group, and measures the kinds one after
// the other; within a kind the targets take turns burst by burst (the order reversed each
// burst), so that whatever else runs on a shared machine falls on all of them alike:
//
//  1. Start each as `npm start` runs it: `node <dir>/scripts/dev.mjs --port P --persist-to
//     <fresh temp dir> --quiet` (the Worker bundled by wrangler, served by Miniflare's
//     workerd behind the node front), with AUTH_USERS one user (bcrypt, cost 5) and a
//     random TOKEN_SECRET; ready once GET /v2/ answers the Bearer challenge.
//  2. Push a tiny image through the HTTP API (token with pull,push from /token): a config
//     and a 4 KiB layer (POST, then PUT ?digest= with the bytes), the manifest as
//     `bench/tiny:v1`. The Server-Timing of the layer's POST and PUT and of the manifest
//     PUT are kept.
//  3. Per kind, on each target: a pull token (scope pull, from GET /token with Basic
//     credentials; tokens live 300 s, so each burst gets a fresh one, outside what is
//     measured), one request with node:http (status and answer checked, Server-Timing
//     kept: the first after the push), `hey` --warmup requests (not counted). Then
//     --bursts bursts per target of --requests in all (multiples of --concurrency: hey
//     sends n ÷ c per client), workerd's CPU (utime + stime of the workerd processes of
//     the server's process tree, /proc/<pid>/stat, clock ticks) and the front's read
//     around each `hey -n -c`; every answer must be 200. Last, one more checked request
//     per target (its Server-Timing: warm).
//  4. Stop them all and remove their state.
//
// The kinds: HEAD manifest by tag, GET manifest by digest (both with an OCI Accept),
// HEAD blob (the layer), GET tags/list. Reported per kind, round and target: workerd CPU
// µs per request, requests/s (the requests over hey's time), and the node process's (the
// front's) CPU µs per request; then the median over rounds with the spread of the single
// bursts (min–max µs), the ratio to the first target, and the Server-Timing storage calls
// (`desc` of r2, kv, cache, do, ...) per request and target.
//
// --peer DIR adds cloudflare/serverless-registry (SR): a copy of /work/shared/peer-sr with
// `npm ci` done and wrangler.example.jsonc copied to wrangler.jsonc, started as its
// PEER.md says (`node runner/serve-mf.mjs --port P --persist-to DIR`: one workerd behind a
// copy of our front). SR has no token service: every request carries Basic hello:world
// (its env `dev`), and it sends no Server-Timing.
//
// --profile: per round, target and kind, one more hey run (not counted) with V8's sampling
// profiler on in the Worker's isolate: workerd is started with an inspector port through
// MINIFLARE_WORKERD_PATH (a wrapper that adds `--inspector-addr`; nothing in the checkout
// changes), Profiler.start/stop over the Chrome DevTools Protocol (the `ws` package that
// wrangler and miniflare bring), and the top self-time functions per kind are reported as
// µs per request (summed over rounds), each with the source file the bundle's
// `// src/...` markers name. The counted runs of a profiled server have the inspector
// listening (idle). Only the Worker's isolate is profiled: workerd runs all its isolates on
// one thread and a binding call runs Miniflare's simulator nested in the caller's native
// frame, so profiles of several isolates overlap. --profile-out DIR also writes each
// profile (Chrome DevTools opens them).
//
// --direct sends every request (token, push, hey) to workerd's own port instead of the
// node front: no proxy hop (the front's node process competes for the same cores). It
// does not skip a Worker's local-only check of the front's secret (LOCAL_FRONT_SECRET,
// since 02c4812): Miniflare's entry worker sets CF-Connecting-IP on every request, so
// the Worker still checks each request (and believes no address).
//
// --only KINDS measures a subset (head-manifest, get-manifest, head-blob, tags-list, and
// get-manifest-tag, which runs only when named): more and shorter rounds of one kind
// alternate the targets more finely on a noisy machine.
//
// --variant 'LABEL:NAME=VALUE,…' starts each checkout once per variant, with those settings
// added (a column per checkout and variant), e.g. pull recording off and on:
// --variant 'off:PULL_RECORD_INTERVAL=off' --variant 'on:PULL_RECORD_INTERVAL=1d'. BENCH_AUTHORIZATION
// is the bench's, not a setting: the pulls send it instead of a token, e.g. with no users (an
// open registry) --variant 'short:AUTH_USERS=,BENCH_AUTHORIZATION=Basic Zm9vOmJhcg=='; with
// BENCH_AUTHORIZATION=basic the pulls send the bench user's Basic credentials instead of a
// token (auth on, as SR is pulled): --variant 'basic:BENCH_AUTHORIZATION=basic'.
//
// On a shared machine single bursts of the same code differ by ±10–30 %: compare the
// medians of many bursts (--bursts, --rounds), and the spread the report gives.
//
// Markdown report on stdout, progress on stderr. Needs `hey` (Debian: apt-get install
// hey). Talks only to 127.0.0.1; every wait is bounded and hey runs with a timeout;
// servers and temp dirs are removed at the end (BENCH_KEEP_TMP=1 keeps the dirs).
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  statSync,
  writeFileSync,
  chmodSync,
} from "node:fs";
import { createRequire } from "node:module";
import { loadavg } from "node:os";
import { gzipSync } from "node:zlib";
import { basename, dirname, join, resolve } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import bcrypt from "bcryptjs";
import { freePort } from "../scripts/lib/free-port.mjs";
import { processKeeper } from "../scripts/lib/process-groups.mjs";
import { addSelfTimes, bundleSections, profiled, saveProfile, slug } from "./profiler.mjs";
import {
  ROOT,
  commandLine,
  expectStatus,
  integerOption,
  markdownTable,
  parseCommandLine,
  reportFacts,
  request,
  shortCommit,
  run,
  tailFile,
  treeCpuSeconds,
  treePids,
} from "./lib.mjs";
import {
  REPOSITORY,
  REQUEST_TIMEOUT_MS,
  basic,
  checkedRequest,
  median,
  pairedRatio,
  pairedText,
  pushImage,
  requestKinds,
} from "./small-requests.mjs";

const READY_TIMEOUT_MS = 120_000;
/** hey's own per-request timeout, seconds. */
const HEY_REQUEST_TIMEOUT_S = 30;
/** Profiler sampling interval, µs (V8's default is 1000). */
const SAMPLING_INTERVAL_US = 200;
const PROFILE_TOP = 15;
/** The request kinds, as --only names them (requestKinds below, in this order). */
const KIND_KEYS = ["head-manifest", "get-manifest", "get-manifest-tag", "head-blob", "tags-list"];
/** Those measured without --only (the ones earlier figures have). */
const DEFAULT_KINDS = ["head-manifest", "get-manifest", "head-blob", "tags-list"];
/** Settings in this process's environment that scripts/dev.mjs would pass on to the Worker and the bench does not want. */
const IGNORED_SETTINGS = new Set([
  "AUTH_ACCESS",
  "AUTH_MODE",
  "AUTH_SERVICE",
  "AUTH_REALM",
  "ADMIN_TOKEN",
  "UPSTREAMS",
]);

function usage() {
  return [
    "usage: node bench/request-cpu.mjs [--dir DIR]... [--peer DIR] [--floor] [--floor-ours] [--rounds N] [--bursts B] [--requests N] [--concurrency C] [--warmup N] [--profile] [--profile-out DIR] [--direct] [--only KINDS] [--variant LABEL:NAME=VALUE,…]...",
    "  --dir DIR        a registry checkout to start (node_modules and `npm run build:wasm` done there); repeat for",
    "                   columns side by side, rounds alternate between them (default: the checkout this file is in)",
    "  --floor          also bench/floor/worker.js: each kind's one storage call and nothing else",
    "  --floor-ours     also the floor with our wrangler.toml's bindings, compatibility date and flags",
    "  --peer DIR       also cloudflare/serverless-registry from DIR (a copy of /work/shared/peer-sr, npm ci done,",
    "                   wrangler.example.jsonc copied to wrangler.jsonc)",
    "  --rounds N       rounds (default 2): each starts every target afresh and measures every kind",
    "  --requests N     requests per kind, round and target, counted (default 3000)",
    "  --bursts B       the counted requests in B bursts, the targets taking turns (default 6)",
    "  --concurrency C  hey's concurrent clients (default 10)",
    "  --warmup N       requests per kind before the counted ones (default 200)",
    "  --profile        per round, target and kind, one more run with V8's sampling profiler on: top self time",
    "  --profile-out D  --profile, and the Worker's profiles saved in D (.cpuprofile, for Chrome DevTools)",
    "  --perf DIR       per round, target and kind, one more run with `perf record -e cpu-clock` on the target's",
    "                   workerd (all of it: the Worker, Miniflare's entry Worker and simulators, the runtime): top",
    "                   self time by library and symbol; the data kept in DIR (`perf report -i` reads it)",
    "  --direct         every request to workerd's own port, not through the node front",
    `  --only KINDS     comma-separated subset of ${KIND_KEYS.join(", ")} (default: ${DEFAULT_KINDS.join(", ")})`,
    "  --variant LABEL:NAME=VALUE,…  each checkout once more with these settings (repeat: one column per variant)",
    "  env BENCH_KEEP_TMP=1 keeps the temp dirs",
  ].join("\n");
}

/** --only's list of kind keys (KIND_KEYS), or all of them. */
function onlyKinds(text) {
  if (text === undefined) return new Set(DEFAULT_KINDS);
  const keys = text.split(",").map((key) => key.trim());
  const unknown = keys.filter((key) => !KIND_KEYS.includes(key));
  if (unknown.length > 0 || keys.length === 0) {
    console.error(`--only: unknown ${unknown.join(", ")}; the kinds are ${KIND_KEYS.join(", ")}\n${usage()}`);
    process.exit(2);
  }
  return new Set(keys);
}

/** `LABEL:NAME=VALUE,…` (--variant): a label and settings; "" is the checkout as it is. */
function parseVariant(text) {
  if (text === "") return { label: "", settings: {} };
  const match = /^([^:]+):(.*)$/.exec(text);
  const pairs = match ? match[2].split(",").map((pair) => /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(pair.trim())) : [null];
  if (!match || pairs.some((pair) => pair === null)) {
    console.error(`--variant: "${text}" is not LABEL:NAME=VALUE[,NAME=VALUE…]\n${usage()}`);
    process.exit(2);
  }
  return { label: match[1], settings: Object.fromEntries(pairs.map((pair) => [pair[1], pair[2]])) };
}

function parseOptions() {
  const v = parseCommandLine(
    {
      dir: { type: "string", multiple: true },
      peer: { type: "string" },
      floor: { type: "boolean", default: false },
      "floor-ours": { type: "boolean", default: false },
      rounds: { type: "string" },
      bursts: { type: "string" },
      requests: { type: "string" },
      concurrency: { type: "string" },
      warmup: { type: "string" },
      profile: { type: "boolean", default: false },
      "profile-out": { type: "string" },
      perf: { type: "string" },
      direct: { type: "boolean", default: false },
      only: { type: "string" },
      variant: { type: "string", multiple: true },
    },
    usage,
  );
  const number = (name, fallback, min, max) => integerOption(v, usage, name, fallback, min, max);
  // hey sends n ÷ c requests per client (rounded down): counts are multiples of c.
  const concurrency = number("concurrency", 10, 1, 256);
  const multiple = (value) => Math.max(concurrency, Math.round(value / concurrency) * concurrency);
  const warmup = number("warmup", 200, 0, 100_000);
  return {
    dirs: (v.dir ?? [ROOT]).map((dir) => resolve(dir)),
    peer: v.peer === undefined ? undefined : resolve(v.peer),
    floor: v.floor,
    floorOurs: v["floor-ours"],
    rounds: number("rounds", 2, 1, 20),
    bursts: number("bursts", 6, 1, 100),
    requests: multiple(number("requests", 3000, 10, 1_000_000)),
    concurrency,
    warmup: warmup === 0 ? 0 : multiple(warmup),
    profile: v.profile || v["profile-out"] !== undefined,
    profileOut: v["profile-out"] === undefined ? undefined : resolve(v["profile-out"]),
    perf: v.perf === undefined ? undefined : resolve(v.perf),
    direct: v.direct,
    only: onlyKinds(v.only),
    variants: (v.variant ?? [""]).map(parseVariant),
  };
}

const progress = (message) => process.stderr.write(`# ${message}\n`);

// Servers get a keeper of their own: lib.mjs's starts only servers that answer GET /v2/
// with 200, and with authentication on ours answers 401.
const keeper = processKeeper({ tempPrefix: "edge-bench-cpu", keepTmpVariable: "BENCH_KEEP_TMP" });

// ---------------------------------------------------------------------------------------
// Targets: a registry to start, how to authenticate to it, where its bundle is.

/**
 * Spawns a server in its own process group, logging to <dir>/server.log, and waits until
 * `ready(url)` says so. Returns { url, port, pid, dir, startedAt, logTail, stop() }.
 */
async function startServer({ name, command, args, env, cwd, ready }) {
  const dir = await keeper.makeTempDir(name.replace(/[^a-z0-9]+/gi, "-").toLowerCase());
  const port = await freePort();
  const logFile = join(dir, "server.log");
  const startedAt = Date.now();
  const logFd = openSync(logFile, "a");
  const child = spawn(command, args(dir, port), {
    cwd,
    env: env(dir),
    detached: true,
    stdio: ["ignore", logFd, logFd],
  });
  closeSync(logFd);
  if (child.pid === undefined) throw new Error(`could not start ${name}`);
  keeper.track(child.pid, `${name} :${port}`);
  let exited = null;
  child.once("exit", (code, signal) => (exited = { code, signal }));
  child.once("error", (error) => (exited = { error: error.message }));
  const url = `http://127.0.0.1:${port}`;
  const logTail = () => `--- ${name} log (${logFile}):\n${tailFile(logFile, 40)}`;
  let stopped = false;
  const server = {
    url,
    port,
    pid: child.pid,
    dir,
    startedAt,
    logTail,
    async stop() {
      if (stopped) return;
      stopped = true;
      await keeper.stopGroup(child.pid);
      await keeper.removeTempDir(dir);
    },
  };
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let lastError = "";
  for (;;) {
    if (exited || Date.now() > deadline) {
      const tail = logTail();
      await server.stop();
      throw new Error(
        `${name} ${exited ? `exited: ${JSON.stringify(exited)}` : `not ready within ${READY_TIMEOUT_MS} ms (${lastError})`}\n${tail}`,
      );
    }
    try {
      const started = performance.now();
      const answer = await ready(url);
      // The first request the server answered at all: what its first request costs after a start.
      server.firstRequestMs ??= performance.now() - started;
      if (answer === true) break;
      lastError = answer;
    } catch (error) {
      lastError = error.message;
    }
    await delay(250);
  }
  const started = performance.now();
  await ready(url);
  server.nextRequestMs = performance.now() - started;
  return server;
}

/** A script that runs the real workerd with an inspector port added (MINIFLARE_WORKERD_PATH). */
function workerdWithInspector(checkout, dir, inspectorPort) {
  const fromMiniflare = createRequire(join(checkout, "node_modules", "miniflare", "package.json"));
  const workerd = fromMiniflare("workerd");
  const binary = typeof workerd === "string" ? workerd : workerd.default;
  if (typeof binary !== "string" || binary.includes("'")) throw new Error(`cannot find workerd from ${checkout}`);
  const wrapper = join(dir, "workerd-with-inspector");
  writeFileSync(wrapper, `#!/bin/sh\nexec '${binary}' "$@" --inspector-addr=127.0.0.1:${inspectorPort}\n`);
  chmodSync(wrapper, 0o755);
  return wrapper;
}

/**
 * The URL of workerd's own HTTP socket in the server's process group (Miniflare passes it
 * as `--socket-addr=entry=HOST:PORT`), to reach the Worker without the node front.
 */
function workerdEntryUrl(server) {
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "latin1");
      const command = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const group = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]);
      if (command !== "workerd" || group !== server.pid) continue;
      const args = readFileSync(`/proc/${name}/cmdline`, "latin1").split("\0");
      const entry = args.find((arg) => arg.startsWith("--socket-addr=entry="))?.slice("--socket-addr=entry=".length);
      if (entry) return `http://${entry}`;
    } catch {
      // The process ended meanwhile.
    }
  }
  throw new Error(`no workerd with an entry socket in process group ${server.pid}`);
}

function checkCheckout(dir, needs) {
  for (const [path, hint] of needs)
    if (!existsSync(join(dir, path))) throw new Error(`${join(dir, path)} is missing: ${hint}`);
}

/** edge-registry from checkout `dir`, as `npm start` runs it, with one user. */
function edgeTarget(dir, variant = { label: "", settings: {} }) {
  checkCheckout(dir, [
    ["scripts/dev.mjs", "not an edge-registry checkout"],
    ["node_modules/miniflare", "run `npm ci` there (or copy node_modules)"],
    ["build/sha256.wasm", "run `npm run build:wasm` there"],
  ]);
  if (existsSync(join(dir, ".dev.vars"))) progress(`note: ${dir}/.dev.vars exists; its settings apply too`);
  const user = "bench";
  const password = randomBytes(12).toString("hex");
  const users = `${user}:${bcrypt.hashSync(password, 5)}`;
  // BENCH_AUTHORIZATION (a variant's, not a setting): the Authorization every pull sends
  // instead of a token (with AUTH_USERS=, to size what the token's length costs); `basic`:
  // the bench user's own Basic credentials, as SR is pulled (auth on, no token).
  const { BENCH_AUTHORIZATION: fixedAuthorization, ...settings } = variant.settings;
  return {
    label: `${basename(dir)}@${shortCommit(dir)}${variant.label ? ` ${variant.label}` : ""}`,
    dir,
    sendsServerTiming: true,
    async start({ inspectorPort }) {
      const server = await startServer({
        name: "edge-registry",
        command: process.execPath,
        cwd: dir,
        args: (state, port) => [
          join(dir, "scripts", "dev.mjs"),
          "--port",
          String(port),
          "--persist-to",
          join(state, "state"),
          "--quiet",
        ],
        env: (state) => {
          // Only the one user and its token key: no access rules, upstreams or other auth
          // settings from this environment.
          mkdirSync(join(state, "config"), { recursive: true });
          const inherited = Object.entries(process.env).filter(([name]) => !IGNORED_SETTINGS.has(name));
          const env = {
            ...Object.fromEntries(inherited),
            CLOUDFLARE_CF_FETCH_ENABLED: "false",
            WRANGLER_SEND_METRICS: "false",
            WRANGLER_SEND_ERROR_REPORTS: "false",
            WRANGLER_HIDE_BANNER: "true",
            WRANGLER_LOG_PATH: join(state, "wrangler-logs"),
            XDG_CONFIG_HOME: join(state, "config"),
            NO_COLOR: "1",
            FORCE_COLOR: "0",
            AUTH_USERS: users,
            TOKEN_SECRET: randomBytes(32).toString("hex"),
            // A variant's settings win: AUTH_USERS= (none) runs the registry open, as `npm start` does.
            ...settings,
          };
          if (inspectorPort) env.MINIFLARE_WORKERD_PATH = workerdWithInspector(dir, state, inspectorPort);
          return env;
        },
        ready: async (url) => {
          const answer = await request(`${url}/v2/`, { timeoutMs: 2000 });
          if (answer.status === 401 && /^Bearer /.test(answer.headers["www-authenticate"] ?? "")) return true;
          if (answer.status === 200 && settings.AUTH_USERS === "") return true;
          return `GET /v2/ answered ${answer.status} ${answer.headers["www-authenticate"] ?? ""}`;
        },
      });
      return server;
    },
    /** An Authorization header value for `actions` on the bench repository: a token from /token. */
    async authorization(server, actions) {
      if (fixedAuthorization === "basic" && actions === "pull") return basic(user, password);
      if (fixedAuthorization !== undefined && actions === "pull") return fixedAuthorization;
      // No users: an open registry, which issues no tokens for the bench's user and needs none.
      if (settings.AUTH_USERS === "") return fixedAuthorization ?? basic("bench", "open");
      const service = new URL(server.url).host;
      const scope = `repository:${REPOSITORY}:${actions}`;
      const answer = await request(
        `${server.url}/token?service=${encodeURIComponent(service)}&scope=${encodeURIComponent(scope)}`,
        { headers: { Authorization: basic(user, password) }, timeoutMs: REQUEST_TIMEOUT_MS },
      );
      expectStatus("GET /token", answer, 200);
      const { token } = JSON.parse(answer.body.toString("utf8"));
      if (typeof token !== "string") throw new Error("GET /token: no token in the answer");
      return `Bearer ${token}`;
    },
    /** The bundle workerd runs (for the profile's source files): the newest build/worker-* since the start. */
    bundle(server) {
      const build = join(dir, "build");
      const candidates = readdirSync(build)
        .filter((name) => name.startsWith("worker-"))
        .map((name) => ({ path: join(build, name, "index.js"), time: statSync(join(build, name)).mtimeMs }))
        .filter((entry) => entry.time >= server.startedAt - 1000 && existsSync(entry.path))
        .sort((a, b) => b.time - a.time);
      return candidates[0]?.path;
    },
  };
}

/** cloudflare/serverless-registry from a prepared copy (PEER.md): Basic hello:world on every request. */
function peerTarget(dir) {
  checkCheckout(dir, [
    ["runner/serve-mf.mjs", "not a copy of /work/shared/peer-sr"],
    ["node_modules/miniflare", "run `npm ci` there"],
    ["wrangler.jsonc", "copy wrangler.example.jsonc to wrangler.jsonc there"],
  ]);
  const authorization = basic("hello", "world");
  return {
    label: "serverless-registry",
    dir,
    sendsServerTiming: false,
    async start({ inspectorPort }) {
      return startServer({
        name: "serverless-registry",
        command: process.execPath,
        cwd: dir,
        args: (state, port) => [join(dir, "runner", "serve-mf.mjs"), "--port", String(port), "--persist-to", state],
        env: (state) => {
          mkdirSync(join(state, "config"), { recursive: true });
          const env = { ...process.env, WRANGLER_SEND_METRICS: "false", XDG_CONFIG_HOME: join(state, "config") };
          if (inspectorPort) env.MINIFLARE_WORKERD_PATH = workerdWithInspector(dir, state, inspectorPort);
          return env;
        },
        ready: async (url) => {
          const answer = await request(`${url}/v2/`, { headers: { Authorization: authorization }, timeoutMs: 2000 });
          return answer.status === 200 || `GET /v2/ answered ${answer.status}`;
        },
      });
    },
    async authorization() {
      return authorization;
    },
    bundle() {
      return join(dir, "build-mf", "index.js");
    },
  };
}

/**
 * The floor (--floor): bench/floor/worker.js, a stand-in that answers each kind with the one
 * storage call ours makes for it and nothing else, on this checkout's Miniflare behind the
 * same front. What a registry spends beyond it is its own work.
 */
function floorTarget(config = "minimal") {
  return {
    label: config === "ours" ? "floor, our config" : "floor (one storage call)",
    dir: ROOT,
    sendsServerTiming: false,
    async start({ inspectorPort }) {
      return startServer({
        name: "floor",
        command: process.execPath,
        cwd: ROOT,
        args: (state, port) => [
          join(ROOT, "bench", "floor", "serve.mjs"),
          "--port",
          String(port),
          "--persist-to",
          state,
          "--config",
          config,
        ],
        env: (state) => {
          const env = { ...process.env };
          if (inspectorPort) env.MINIFLARE_WORKERD_PATH = workerdWithInspector(ROOT, state, inspectorPort);
          return env;
        },
        ready: async (url) => {
          const answer = await request(`${url}/v2/`, { timeoutMs: 2000 });
          return answer.status === 200 || `GET /v2/ answered ${answer.status}`;
        },
      });
    },
    async authorization() {
      return "Basic Zmxvb3I6Zmxvb3I=";
    },
    bundle() {
      return undefined;
    },
  };
}

// ---------------------------------------------------------------------------------------
// The image and the request kinds.

/** `hey` against one kind; resolves its requests/s, or throws unless every answer was 200. */
async function hey(server, kind, authorization, count, concurrency) {
  const args = ["-n", String(count), "-c", String(Math.min(concurrency, count)), "-t", String(HEY_REQUEST_TIMEOUT_S)];
  args.push("-H", `Authorization: ${authorization}`);
  for (const [name, value] of Object.entries(kind.headers)) args.push("-H", `${name}: ${value}`);
  if (kind.method !== "GET") args.push("-m", kind.method);
  args.push(`${server.url}${kind.path}`);
  // hey's requests time out after HEY_REQUEST_TIMEOUT_S; the whole run after 10 minutes or 20 ms a request.
  const result = await run("hey", args, { timeoutMs: Math.max(600_000, count * 20) });
  const rate = Number(/Requests\/sec:\s+([\d.]+)/.exec(result.stdout)?.[1]);
  const statuses = [...result.stdout.matchAll(/\[(\d{3})\]\s+(\d+) responses/g)].map(([, status, n]) => [
    status,
    Number(n),
  ]);
  const ok = statuses.length === 1 && statuses[0][0] === "200" && statuses[0][1] === count;
  if (!ok || !Number.isFinite(rate) || /Error distribution/.test(result.stdout))
    throw new Error(
      `${kind.name}: hey did not get ${count} × 200:\n${result.stdout.slice(-3000)}\n${server.logTail()}`,
    );
  return rate;
}

// ---------------------------------------------------------------------------------------
// perf: where workerd as a whole spends its CPU, the runtime's C++ and the simulators
// included (V8's profiler sees only the Worker's JavaScript). `perf record -e cpu-clock`
// (a software clock: this VM has no hardware counters) on every thread of the target's
// workerd processes; symbols from workerd's own symbol table (its binary is not
// stripped); JIT-compiled JavaScript shows as addresses in no library ("[unknown]").

/** Samples per second of each thread (cpu-clock): a sample stands for 1/PERF_HZ s of CPU. */
const PERF_HZ = 4000;
const PERF_TOP = 25;

/** Runs `work` with `perf record` on the server's workerd processes, writing `file`. */
async function perfRecorded(server, file, work) {
  mkdirSync(dirname(file), { recursive: true });
  const pids = treePids(server.pid, "workerd");
  if (pids.length === 0) throw new Error("--perf: no workerd process found");
  const recorder = spawn(
    "perf",
    [
      "record",
      "-q",
      "-e",
      "cpu-clock",
      "-F",
      String(PERF_HZ),
      // BENCH_PERF_CALLS=1: call chains too (frame pointers), for `perf report -G` by hand.
      ...(process.env.BENCH_PERF_CALLS === "1" ? ["-g"] : []),
      "-o",
      file,
      "-p",
      pids.join(","),
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let errors = "";
  recorder.stderr.on("data", (chunk) => (errors = (errors + chunk).slice(-2000)));
  const exited = new Promise((resolveExit) => recorder.once("close", (code) => resolveExit(code)));
  // perf attaches to the threads within a few ms; what it misses of the first requests is noise.
  await delay(300);
  try {
    await work();
  } finally {
    recorder.kill("SIGINT");
    const code = await Promise.race([exited, delay(30_000).then(() => "timeout")]);
    if (code === "timeout") recorder.kill("SIGKILL");
    if (code !== 0 && code !== null) errors = `perf record ended with ${code}: ${errors}`;
    else errors = "";
  }
  if (errors) throw new Error(errors);
}

/** The top self time of a perf recording: [{ where: "library: symbol", samples }], most first, and the total. */
function perfTop(file) {
  const report = spawnSync(
    "perf",
    ["report", "-i", file, "--stdio", "--no-children", "-n", "-q", "--sort", "dso,sym", "--percent-limit", "0.05"],
    { encoding: "utf8", timeout: 120_000, maxBuffer: 64 << 20 },
  );
  if (report.status !== 0) throw new Error(`perf report failed: ${report.stderr}`);
  const rows = [];
  for (const line of report.stdout.split("\n")) {
    // "    12.34%          1234  workerd  [.] kj::foo(...)"
    const match = /^\s*[\d.]+%\s+(\d+)\s+(\S+)\s+\[[^\]]*\]\s+(.*)$/.exec(line);
    if (!match) continue;
    const symbol = match[3].trim().replace(/\(.*$/, "").slice(0, 70);
    rows.push({ where: `${match[2]}: ${symbol}`, samples: Number(match[1]) });
  }
  const totals = spawnSync("perf", ["report", "-i", file, "--stdio", "-q", "--no-children", "--sort", "pid", "-n"], {
    encoding: "utf8",
    timeout: 120_000,
    maxBuffer: 64 << 20,
  });
  const total = [...(totals.stdout ?? "").matchAll(/^\s*[\d.]+%\s+(\d+)/gm)].reduce((sum, m) => sum + Number(m[1]), 0);
  return { rows, total };
}

// ---------------------------------------------------------------------------------------
// A round: every target started, seeded and measured in turn.

/**
 * The bundle workerd runs (`path`, the script; its folder holds the modules beside it, the
 * Wasm ones too) in bytes and gzipped (level 9, as an upload is measured), or undefined.
 */
function bundleSizes(path) {
  if (!path || !existsSync(path)) return undefined;
  const folder = dirname(path);
  const files = readdirSync(folder).filter((name) => /\.(m?js|wasm)$/.test(name));
  let bytes = 0;
  let gzipped = 0;
  for (const name of files) {
    const content = readFileSync(join(folder, name));
    bytes += content.length;
    gzipped += gzipSync(content, { level: 9 }).length;
  }
  return { bytes, gzipped, files: files.length };
}

/** Starts a target and pushes the bench image: { target, server, image, sections, inspectorPort }. */
async function prepare(target, options, results) {
  const inspectorPort = options.profile ? await freePort() : undefined;
  progress(`${target.label}: starting`);
  const server = await target.start({ inspectorPort });
  try {
    // Past the front: no proxy hop (see --direct above).
    if (options.direct) server.url = workerdEntryUrl(server);
    const pushAuthorization = await target.authorization(server, "pull,push");
    const image = await pushImage(server, pushAuthorization);
    for (const [name, timing] of Object.entries(image.timings)) results.timing(target, name, timing);
    const bundle = target.bundle(server);
    results.start(target, {
      firstMs: server.firstRequestMs,
      nextMs: server.nextRequestMs,
      bundle: bundleSizes(bundle),
    });
    const sections = options.profile ? bundleSections(bundle) : [];
    return { target, server, image, sections, inspectorPort };
  } catch (error) {
    await server.stop();
    throw error;
  }
}

/** One burst of `count` requests of `kind` against a started target: workerd and front CPU seconds, requests/s. */
async function burst(started, kind, options, count) {
  const { target, server } = started;
  const authorization = await target.authorization(server, "pull");
  const workerdBefore = treeCpuSeconds(server.pid, "workerd");
  const nodeBefore = treeCpuSeconds(server.pid, "node");
  const rate = await hey(server, kind, authorization, count, options.concurrency);
  return {
    workerd: treeCpuSeconds(server.pid, "workerd") - workerdBefore,
    node: treeCpuSeconds(server.pid, "node") - nodeBefore,
    seconds: count / rate,
  };
}

/**
 * The counted requests of a kind as bursts: each a multiple of the concurrency (hey sends
 * n ÷ c requests per client, rounded down), together as near --requests as that allows.
 */
function burstCounts({ requests, bursts, concurrency }) {
  const chunks = Math.max(1, Math.round(requests / concurrency));
  const turns = Math.min(bursts, chunks);
  return Array.from(
    { length: turns },
    (_, turn) => (Math.floor(chunks / turns) + (turn < chunks % turns ? 1 : 0)) * concurrency,
  );
}

/**
 * A round: every target started (at once) and seeded; then per kind, the counted requests
 * in --bursts bursts, the targets taking turns (the order reversed each burst), so that
 * what else runs on the machine falls on all of them alike; then stopped.
 */
async function measureRound(targets, options, results, round) {
  const started = [];
  try {
    for (const target of targets) started.push(await prepare(target, options, results));
    const kinds = (image) => requestKinds(image).filter((candidate) => options.only.has(candidate.key));
    const kindCount = kinds(started[0].image).length;
    for (let index = 0; index < kindCount; index++) {
      const kindOf = (entry) => kinds(entry.image)[index];
      for (const entry of started) {
        const kind = kindOf(entry);
        const authorization = await entry.target.authorization(entry.server, "pull");
        results.timing(entry.target, `${kind.name} (first)`, await checkedRequest(entry.server, kind, authorization));
        if (options.warmup > 0) await hey(entry.server, kind, authorization, options.warmup, options.concurrency);
      }
      const counts = burstCounts(options);
      const counted = counts.reduce((sum, count) => sum + count, 0);
      progress(
        `round ${round + 1}: ${kindOf(started[0]).name}, ${counted} requests per target in ${counts.length} bursts`,
      );
      const totals = new Map(
        started.map((entry) => [entry, { workerd: 0, node: 0, seconds: 0, bursts: [], burstRates: [] }]),
      );
      for (const [turn, count] of counts.entries()) {
        for (const entry of turn % 2 === 0 ? started : [...started].reverse()) {
          const figures = await burst(entry, kindOf(entry), options, count);
          const total = totals.get(entry);
          total.workerd += figures.workerd;
          total.node += figures.node;
          total.seconds += figures.seconds;
          total.bursts.push((figures.workerd / count) * 1e6);
          total.burstRates.push(count / figures.seconds);
        }
      }
      for (const entry of started) {
        const total = totals.get(entry);
        results.run(entry.target, kindOf(entry).name, {
          workerdUs: (total.workerd / counted) * 1e6,
          nodeUs: (total.node / counted) * 1e6,
          rate: counted / total.seconds,
          burstUs: total.bursts,
          burstRates: total.burstRates,
        });
      }
      for (const entry of started) {
        const kind = kindOf(entry);
        const authorization = await entry.target.authorization(entry.server, "pull");
        if (options.profile) {
          progress(`${entry.target.label}: ${kind.name}, profiled`);
          const profile = await profiled(
            entry.inspectorPort,
            () => hey(entry.server, kind, authorization, options.requests, options.concurrency),
            SAMPLING_INTERVAL_US,
          );
          results.profile(entry.target, kind.name, profile, entry.sections, options.requests);
          if (options.profileOut) saveProfile(options.profileOut, entry.target, kind, round, profile);
        }
        if (options.perf) {
          progress(`${entry.target.label}: ${kind.name}, under perf`);
          const file = join(options.perf, `${slug(entry.target.label)}.${kind.key}.r${round + 1}.perf.data`);
          await perfRecorded(entry.server, file, () =>
            hey(entry.server, kind, authorization, options.requests, options.concurrency),
          );
          results.perf(entry.target, kind.name, perfTop(file), options.requests);
        }
        results.timing(entry.target, `${kind.name} (warm)`, await checkedRequest(entry.server, kind, authorization));
      }
    }
  } finally {
    for (const entry of started) await entry.server.stop();
  }
}

function collector(targets) {
  const runs = new Map(); // target label -> kind -> [{ workerdUs, nodeUs, rate }]
  const timings = new Map(); // request -> target label -> Set of Server-Timing texts
  const profiles = new Map(); // target label -> kind -> { self: Map, busy, requests }
  const perfs = new Map(); // target label -> kind -> { self: Map, total, requests }
  const starts = new Map(); // target label -> [{ firstMs, nextMs, bundle }]
  const order = [];
  return {
    targets,
    runs,
    timings,
    profiles,
    perfs,
    timingOrder: order,
    starts,
    start(target, figures) {
      if (!starts.has(target.label)) starts.set(target.label, []);
      starts.get(target.label).push(figures);
    },
    run(target, kind, figures) {
      if (!runs.has(target.label)) runs.set(target.label, new Map());
      const byKind = runs.get(target.label);
      if (!byKind.has(kind)) byKind.set(kind, []);
      byKind.get(kind).push(figures);
    },
    timing(target, name, text) {
      if (!timings.has(name)) {
        timings.set(name, new Map());
        order.push(name);
      }
      const byTarget = timings.get(name);
      if (!byTarget.has(target.label)) byTarget.set(target.label, new Set());
      byTarget.get(target.label).add(text);
    },
    perf(target, kind, top, requests) {
      if (!perfs.has(target.label)) perfs.set(target.label, new Map());
      const byKind = perfs.get(target.label);
      if (!byKind.has(kind)) byKind.set(kind, { self: new Map(), total: 0, requests: 0 });
      const entry = byKind.get(kind);
      entry.total += top.total;
      entry.requests += requests;
      for (const { where, samples } of top.rows) entry.self.set(where, (entry.self.get(where) ?? 0) + samples);
    },
    profile(target, kind, profile, sections, requests) {
      if (!profiles.has(target.label)) profiles.set(target.label, new Map());
      const byKind = profiles.get(target.label);
      if (!byKind.has(kind)) byKind.set(kind, { self: new Map(), busy: 0, requests: 0 });
      const entry = byKind.get(kind);
      entry.busy += addSelfTimes(profile, sections, entry.self);
      entry.requests += requests;
    },
  };
}

// ---------------------------------------------------------------------------------------
// The report.

function report(results, options, kinds) {
  const { targets, runs } = results;
  const lines = [];
  lines.push(
    `### workerd CPU per request (µs), requests/s; hey -n ${options.requests} -c ${options.concurrency} after ${options.warmup} warm-up requests, ${options.direct ? "to workerd's own port (--direct)" : "through the node front"}\n`,
  );
  const header = ["request", "round"];
  for (const target of targets) header.push(`${target.label} µs`, `${target.label} req/s`, `${target.label} front µs`);
  const rows = [];
  for (const kind of kinds)
    for (let round = 0; round < options.rounds; round++) {
      const row = [kind, String(round + 1)];
      for (const target of targets) {
        const figures = runs.get(target.label)?.get(kind)?.[round];
        row.push(
          figures ? figures.workerdUs.toFixed(0) : "–",
          figures ? figures.rate.toFixed(0) : "–",
          figures ? figures.nodeUs.toFixed(0) : "–",
        );
      }
      rows.push(row);
    }
  lines.push(markdownTable(header, rows));

  lines.push(`\n### Median over ${options.rounds} round(s); ratio to ${targets[0].label}\n`);
  const summaryHeader = ["request"];
  for (const [index, target] of targets.entries()) {
    summaryHeader.push(`${target.label} µs`, "bursts µs (min–max)", `${target.label} req/s`);
    if (index > 0) summaryHeader.push(`${target.label} µs ÷ first`, `${target.label} req/s ÷ first`);
  }
  const summaryRows = kinds.map((kind) => {
    const row = [kind];
    const first = runs.get(targets[0].label)?.get(kind) ?? [];
    const firstUs = median(first.map((figures) => figures.workerdUs));
    const firstRate = median(first.map((figures) => figures.rate));
    for (const [index, target] of targets.entries()) {
      const all = runs.get(target.label)?.get(kind) ?? [];
      const us = median(all.map((figures) => figures.workerdUs));
      const rate = median(all.map((figures) => figures.rate));
      const bursts = all.flatMap((figures) => figures.burstUs);
      const spread = bursts.length > 0 ? `${Math.min(...bursts).toFixed(0)}–${Math.max(...bursts).toFixed(0)}` : "–";
      row.push(us.toFixed(0), spread, rate.toFixed(0));
      if (index > 0) row.push((us / firstUs).toFixed(2), (rate / firstRate).toFixed(2));
    }
    return row;
  });
  lines.push(markdownTable(summaryHeader, summaryRows));

  if (targets.length > 1) {
    lines.push(
      `\n### Burst by burst: each target against ${targets[0].label}, paired by turn (median of the ratios, 95 % bootstrap interval)\n`,
      "A burst and its pair ran back to back, so the machine's drift between rounds falls on both;",
      "an interval that holds 1.00 is no difference this run could tell.\n",
    );
    const pairedHeader = ["request"];
    for (const target of targets.slice(1))
      pairedHeader.push(`${target.label} µs ÷ first`, `${target.label} req/s ÷ first`);
    const pairedRows = kinds.map((kind) => {
      const row = [kind];
      const first = runs.get(targets[0].label)?.get(kind) ?? [];
      for (const target of targets.slice(1)) {
        const all = runs.get(target.label)?.get(kind) ?? [];
        const text = (pick) => {
          return pairedText(
            pairedRatio(
              first.flatMap((figures) => figures[pick]),
              all.flatMap((figures) => figures[pick]),
            ),
          );
        };
        row.push(text("burstUs"), text("burstRates"));
      }
      return row;
    });
    lines.push(markdownTable(pairedHeader, pairedRows));
  }

  lines.push(
    "\n### After a start: the first request the server answers (the readiness probe: ours `GET /v2/` without credentials, 401; SR's with them, 200) and the next, ms; the bundle workerd runs\n",
  );
  const startRows = targets.map((target) => {
    const all = results.starts.get(target.label) ?? [];
    const bundle = all.find((figures) => figures.bundle)?.bundle;
    const kib = (bytes) => (bytes / 1024).toFixed(1);
    return [
      target.label,
      all.map((figures) => figures.firstMs?.toFixed(1) ?? "–").join(" / "),
      all.map((figures) => figures.nextMs?.toFixed(1) ?? "–").join(" / "),
      bundle ? `${kib(bundle.bytes)} KiB in ${bundle.files} files` : "–",
      bundle ? `${kib(bundle.gzipped)} KiB` : "–",
    ];
  });
  lines.push(
    markdownTable(
      ["target", "first request ms (each round)", "next request ms", "bundle", "bundle gzipped"],
      startRows,
    ),
  );

  lines.push("\n### Server-Timing per request (storage calls: `desc` of each metric; every round's, if they differ)\n");
  const timed = targets.filter((target) => target.sendsServerTiming);
  const timingRows = results.timingOrder.map((name) => [
    name,
    ...timed.map((target) => [...(results.timings.get(name).get(target.label) ?? [])].join(" / ") || "–"),
  ]);
  lines.push(markdownTable(["request", ...timed.map((target) => target.label)], timingRows));
  if (timed.length > 1) {
    const differing = timingRows.filter((row) => new Set(row.slice(1)).size > 1);
    lines.push(
      differing.length === 0
        ? `\nServer-Timing: identical for all ${timed.length} checkouts.`
        : `\nServer-Timing differs for: ${differing.map((row) => row[0]).join("; ")}.`,
    );
  }

  if (results.perfs.size > 0) {
    const us = (samples, requests) => ((samples * 1e6) / PERF_HZ / requests).toFixed(1);
    const cell = (where) => where.replaceAll("|", "\\|");
    lines.push(
      `\n### Top self time in workerd as a whole, µs per request (perf record -e cpu-clock at ${PERF_HZ} Hz, summed over rounds; "[unknown]": JIT-compiled JavaScript)\n`,
    );
    for (const kind of kinds) {
      const entries = targets
        .map((target) => ({ target, entry: results.perfs.get(target.label)?.get(kind) }))
        .filter(({ entry }) => entry !== undefined);
      if (entries.length === 0) continue;
      lines.push(`#### ${kind}\n`);
      const header = [];
      const columns = [];
      for (const { target, entry } of entries) {
        header.push(`${target.label} (${us(entry.total, entry.requests)} µs in all)`, "µs");
        columns.push(
          [...entry.self]
            .sort((a, b) => b[1] - a[1])
            .slice(0, PERF_TOP)
            .map(([where, samples]) => [cell(where), us(samples, entry.requests)]),
        );
      }
      const depth = Math.max(0, ...columns.map((column) => column.length));
      const perfRows = Array.from({ length: depth }, (_, i) => columns.flatMap((column) => column[i] ?? ["", ""]));
      lines.push(markdownTable(header, perfRows), "");
      // Where the first target spends more than each other one, and less: symbol by symbol.
      const [first, ...others] = entries;
      for (const other of others) {
        const perRequest = (entry, where) => ((entry.self.get(where) ?? 0) * 1e6) / PERF_HZ / entry.requests;
        const names = new Set([...first.entry.self.keys(), ...other.entry.self.keys()]);
        const differences = [...names]
          .map((where) => {
            const mine = perRequest(first.entry, where);
            const theirs = perRequest(other.entry, where);
            return { where, mine, theirs, difference: mine - theirs };
          })
          .sort((a, b) => b.difference - a.difference);
        const shown = [...differences.slice(0, PERF_TOP / 5), ...differences.slice(-PERF_TOP / 5).reverse()];
        lines.push(
          `${first.target.label} against ${other.target.label}: the ${PERF_TOP / 5} symbols where it spends most more, and most less, µs per request\n`,
          markdownTable(
            ["symbol", first.target.label, other.target.label, "difference"],
            shown.map(({ where, mine, theirs, difference }) => [
              cell(where),
              mine.toFixed(1),
              theirs.toFixed(1),
              (difference > 0 ? "+" : "") + difference.toFixed(1),
            ]),
          ),
          "",
        );
      }
    }
  }

  if (results.profiles.size > 0) {
    lines.push(
      `\n### Top self time in the Worker's isolate, µs per request (V8 sampling profiler every ${SAMPLING_INTERVAL_US} µs, idle left out, summed over rounds)\n`,
    );
    for (const kind of kinds) {
      lines.push(`#### ${kind}\n`);
      const header = [];
      const columns = [];
      for (const target of targets) {
        const entry = results.profiles.get(target.label)?.get(kind);
        if (!entry) continue;
        header.push(`${target.label} (${((entry.busy / entry.requests) | 0).toString()} µs busy)`, "µs");
        columns.push(
          [...entry.self]
            .sort((a, b) => b[1] - a[1])
            .slice(0, PROFILE_TOP)
            .map(([name, us]) => [name, (us / entry.requests).toFixed(1)]),
        );
      }
      const depth = Math.max(0, ...columns.map((column) => column.length));
      const profileRows = Array.from({ length: depth }, (_, i) => columns.flatMap((column) => column[i] ?? ["", ""]));
      lines.push(markdownTable(header, profileRows), "");
    }
  }
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------

const options = parseOptions();
if (spawnSync("hey", ["-h"]).error) {
  console.error("needs `hey` (Debian: apt-get install -y hey)");
  process.exit(2);
}

const targets = [];
try {
  for (const dir of options.dirs) for (const variant of options.variants) targets.push(edgeTarget(dir, variant));
  if (options.peer) targets.push(peerTarget(options.peer));
  if (options.floor) targets.push(floorTarget());
  if (options.floorOurs) targets.push(floorTarget("ours"));
} catch (error) {
  console.error(error.message);
  process.exit(2);
}
for (const [index, target] of targets.entries())
  if (targets.findIndex((other) => other.label === target.label) !== index) target.label += ` #${index + 1}`;

const facts = reportFacts([
  `- hey ${commandLine("dpkg-query", ["-W", "-f=${Version}", "hey"]) || "?"}; targets (the commit above is the bench script's): ${targets.map((target) => `${target.label} (${target.dir})`).join(", ")}`,
]);
const results = collector(targets);
let kinds = [];
let failed = false;
try {
  for (let round = 0; round < options.rounds; round++) {
    progress(`round ${round + 1}/${options.rounds}`);
    await measureRound(targets, options, results, round);
  }
  kinds = [...(results.runs.get(targets[0].label)?.keys() ?? [])];
} catch (error) {
  console.error(error.stack ?? error.message);
  failed = true;
}
if (!failed) {
  const [one, five, fifteen] = loadavg().map((x) => x.toFixed(2));
  console.log(
    [
      "## Request CPU, authentication on",
      "",
      ...facts,
      `- load average at end ${one} ${five} ${fifteen}`,
      "",
      report(results, options, kinds),
    ].join("\n"),
  );
}
process.exit(failed ? 1 : 0);
