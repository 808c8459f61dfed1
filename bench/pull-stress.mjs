#!/usr/bin/env node
// Pull stress: many GETs of large blobs from edge-registry (as `npm start` runs it) while
// other clients keep the server busy, every byte checked, to catch a blob GET that stalls
// or ends short.
//
//   node bench/pull-stress.mjs                     both scenarios, default sizes (5-10 min on 2 cores)
//   node bench/pull-stress.mjs --quick             small sizes, a quick check that it works
//   node bench/pull-stress.mjs --only r2 --pulls 40 --concurrency 3
//   node bench/pull-stress.mjs > report.md         the report goes to stdout, progress to stderr
//
// Why: blob GETs larger than one 16 MiB R2 read slice are written by JavaScript into a
// FixedLengthStream (BlobStore.open in src/registry/blob-store.ts), and a blob GET that
// also fills the location's cache writes the same chunks into two of them (openTwice). A
// previous version that piped R2 slices natively into a FixedLengthStream stalled (workerd
// spinning) or ended a few KiB short in about 1 of 20 pulls of 1 GiB under load; one pull
// rarely shows it, this runs enough of them, concurrently and under load, that it would.
//
// Scenarios (each on a fresh edge-registry, one after the other):
//   r2    EDGE_CACHE=off. Pushes one blob of --size-mib random bytes (POST ?digest=, the
//         body streamed from a temp file), then runs --pulls GETs of it, --concurrency at
//         a time: every pull goes R2 -> BlobStore.open -> client.
//   fill  The cache on (default settings). Pushes --fill-blobs distinct blobs of
//         --fill-size-mib each (rotations of one random file), pulls each once,
//         --concurrency at a time (misses: BlobStore.openTwice, client + cache.put), waits
//         until a one-byte ranged GET of each is a cache hit, then pulls each once more
//         (hits: served from the cache).
// During the pulls --load-clients loops push fresh 64 KiB blobs (POST ?digest=) and HEAD
// them, so the server is never idle, and a probe GETs /v2/ once a second: its latency
// is how long the server took to answer anything at all (reported, not a failure).
//
// Each pull streams the body through sha256 and checks: status 200, Content-Length equal
// to the size, the bytes received equal to the size, the digest, and the cache outcome in
// Server-Timing (bypass for r2; miss, then hit, for fill). It is classified as
//   ok, stalled (no bytes for 30 s, before or after the headers), short (the connection
//   ended before Content-Length bytes arrived), mismatch (another digest, or too many
//   bytes), or error (a failed check, a network error before the answer, too slow, the
//   run's deadline), or not run (the deadline passed before it started).
// A stalled pull's detail says how much CPU workerd used while no bytes came (spinning?),
// and whether the answer's headers had come ("and no answer" if not: a request queued
// that long, which the probe's latency shows too, rather than a body that stopped).
// The report prints, per scenario: the outcomes, min/median/max seconds per ok pull, MB/s
// (10^6 bytes/s), the server tree's peak RSS (workerd and in all) and CPU seconds, the
// background load's counts, a verdict, and on failure the details and the server log's
// tail. Exit code 1 if any pull was not ok.
//
// Talks only to 127.0.0.1. Every loop and wait is bounded: a per-pull stall watchdog and
// timeout, request timeouts, an operation cap on the load loops, and --deadline-min for
// the whole run.
import { createHash, randomBytes } from "node:crypto";
import http from "node:http";
import { cpus, loadavg, release, totalmem } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import {
  MiB,
  RotatedFile,
  RssSampler,
  commandLine,
  cpuModel,
  expectStatus,
  makeTempDir,
  packageVersion,
  parseCommandLine,
  removeTempDir,
  request,
  startEdgeRegistry,
  treeCpuSeconds,
  writeRandomFile,
} from "./lib.mjs";

const SCENARIOS = ["r2", "fill"];
/** No byte (nor the answer's headers) for this long: the pull is stalled. */
const STALL_MS = 30_000;
/** The watchdog's period. */
const TICK_MS = 1000;
const LOAD_BLOB_BYTES = 64 * 1024;
/** A cap on the background load's operations per scenario, whatever the speed. */
const LOAD_MAX_OPERATIONS = 1_000_000;
/** How long to wait for the cache puts of the fill scenario's first round to land. */
const CACHE_READY_TIMEOUT_MS = 60_000;
/** One R2 read slice (src/registry/blob-store.ts): smaller blobs take another path. */
const READ_SLICE_BYTES = 16 * MiB;
/** EDGE_CACHE_MAX_BYTES by default (wrangler.toml): larger blobs are never cached. */
const EDGE_CACHE_MAX_BYTES = 512 * MiB;
const REPO_R2 = "stress/r2";
const REPO_FILL = "stress/fill";
const REPO_LOAD = "stress/load";

const QUICK = { "size-mib": 64, pulls: 4, "fill-blobs": 2, "fill-size-mib": 32, "deadline-min": 20 };
const DEFAULTS = { "size-mib": 1024, pulls: 22, "fill-blobs": 6, "fill-size-mib": 128, "deadline-min": 120 };

function usage() {
  return [
    "usage: node bench/pull-stress.mjs [--quick] [--only r2|fill] [--size-mib N] [--pulls N] [--concurrency N]",
    "                                  [--fill-blobs N] [--fill-size-mib N] [--load-clients N] [--deadline-min N]",
    "  --only NAME         run one scenario: r2 (EDGE_CACHE=off, R2 reads) or fill (cache misses, then hits)",
    "  --size-mib N        r2: the blob's size in MiB (default 1024; --quick 64)",
    "  --pulls N           r2: GETs of it (default 22; --quick 4)",
    "  --concurrency N     pulls at a time, in both scenarios (default 2)",
    "  --fill-blobs N      fill: distinct blobs (default 6; --quick 2)",
    "  --fill-size-mib N   fill: each one's size in MiB, at most 512 (default 128; --quick 32)",
    "  --load-clients N    background loops pushing 64 KiB blobs and HEADing them (default 2; 0: none)",
    "  --deadline-min N    the whole run's deadline in minutes (default 120; --quick 20)",
    "  --quick             the small sizes above, for a fast check",
    "  env BENCH_KEEP_TMP=1 keeps the temp dirs (server state and log, the random files)",
  ].join("\n");
}

function parseOptions() {
  const values = parseCommandLine(
    {
      only: { type: "string" },
      "size-mib": { type: "string" },
      pulls: { type: "string" },
      concurrency: { type: "string" },
      "fill-blobs": { type: "string" },
      "fill-size-mib": { type: "string" },
      "load-clients": { type: "string" },
      "deadline-min": { type: "string" },
      quick: { type: "boolean", default: false },
    },
    usage,
  );
  const fallback = values.quick ? QUICK : DEFAULTS;
  const integer = (name, min, max, otherwise) => {
    const text = values[name] ?? String(otherwise);
    const value = Number(text);
    if (!/^\d+$/.test(text) || value < min || value > max) {
      console.error(`--${name} must be an integer from ${min} to ${max}\n${usage()}`);
      process.exit(2);
    }
    return value;
  };
  const only = values.only === undefined ? SCENARIOS : [values.only.trim()];
  if (!SCENARIOS.includes(only[0])) {
    console.error(`--only must be one of ${SCENARIOS.join(", ")}\n${usage()}`);
    process.exit(2);
  }
  return {
    quick: values.quick,
    only: new Set(only),
    sizeMiB: integer("size-mib", 1, 64 * 1024, fallback["size-mib"]),
    pulls: integer("pulls", 1, 10_000, fallback.pulls),
    concurrency: integer("concurrency", 1, 64, 2),
    fillBlobs: integer("fill-blobs", 1, 256, fallback["fill-blobs"]),
    fillSizeMiB: integer("fill-size-mib", 1, EDGE_CACHE_MAX_BYTES / MiB, fallback["fill-size-mib"]),
    loadClients: integer("load-clients", 0, 64, 2),
    deadlineMin: integer("deadline-min", 1, 24 * 60, fallback["deadline-min"]),
  };
}

const progress = (message) => console.error(`# ${message}`);
const sha256 = (bytes) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

// ---------------------------------------------------------------------------------------
// workerd's CPU time, sampled every tick, to tell a stall with workerd spinning from one
// with workerd idle.

/** User + system CPU seconds of the workerd processes under `rootPid`. */
function workerdCpuSeconds(rootPid) {
  return treeCpuSeconds(rootPid, "workerd");
}

/** The last two minutes of workerd CPU samples: { at (performance.now()), cpu }. */
class CpuHistory {
  constructor(rootPid) {
    this.rootPid = rootPid;
    this.samples = [];
  }

  sample() {
    this.samples.push({ at: performance.now(), cpu: workerdCpuSeconds(this.rootPid) });
    if (this.samples.length > 120) this.samples.shift();
  }

  /** "workerd used X CPU s in the last Y s" since `since`, or '' without samples. */
  since(since) {
    const now = { at: performance.now(), cpu: workerdCpuSeconds(this.rootPid) };
    const from = this.samples.find((entry) => entry.at >= since) ?? this.samples[0];
    if (!from || now.at - from.at < 1) return "";
    const seconds = (now.at - from.at) / 1000;
    const used = now.cpu - from.cpu;
    return `workerd used ${used.toFixed(1)} CPU s in the last ${seconds.toFixed(0)} s (${((100 * used) / seconds).toFixed(0)}% of a core; other pulls and the load share it)`;
  }
}

// ---------------------------------------------------------------------------------------
// One pull, with its watchdog.

/** Generous but bounded: 5 minutes plus 1 MB/s. */
function pullTimeoutMs(size) {
  return 300_000 + Math.ceil(size / 1000);
}

/**
 * GETs `blob` from `repo` and classifies the pull (see the header). `expectCache`: the
 * cache outcome Server-Timing must report (bypass, miss or hit). Never rejects.
 */
function pullBlob(server, repo, blob, { expectCache, deadlineAt, cpuHistory }) {
  const url = new URL(`/v2/${repo}/blobs/${blob.digest}`, server.url);
  if (url.hostname !== "127.0.0.1") throw new Error(`refusing non-loopback URL ${url}`);
  const timeoutMs = pullTimeoutMs(blob.size);
  return new Promise((resolvePull) => {
    const started = performance.now();
    let lastByteAt = started;
    let firstByteSeconds;
    let bytes = 0;
    let response;
    let errorBody = "";
    let settled = false;
    const hash = createHash("sha256");
    const req = http.request({
      host: "127.0.0.1",
      port: Number(url.port),
      path: url.pathname,
      method: "GET",
      agent: false,
    });
    const finish = (outcome, detail = "") => {
      if (settled) return;
      settled = true;
      clearInterval(watchdog);
      req.destroy();
      resolvePull({
        outcome,
        detail,
        status: response?.statusCode,
        contentLength: response?.headers["content-length"],
        serverTiming: response?.headers["server-timing"] ?? "",
        bytes,
        seconds: (performance.now() - started) / 1000,
        firstByteSeconds,
      });
    };
    const watchdog = setInterval(() => {
      const now = performance.now();
      if (now - lastByteAt >= STALL_MS) {
        const cpu = cpuHistory?.since(lastByteAt) ?? "";
        finish(
          "stalled",
          `no bytes for ${((now - lastByteAt) / 1000).toFixed(0)} s ${response ? `after ${bytes} of ${blob.size} body bytes` : "and no answer"}` +
            (cpu ? `; ${cpu}` : ""),
        );
      } else if (now - started > timeoutMs) {
        finish("error", `still running after ${timeoutMs / 1000} s (${bytes} of ${blob.size} bytes)`);
      } else if (Date.now() > deadlineAt) {
        finish("error", `the run's deadline passed (${bytes} of ${blob.size} bytes)`);
      }
    }, TICK_MS);
    /** The connection ended (or broke) before the answer did. */
    const cut = (why) => {
      if (!response) finish("error", why);
      else if (bytes < blob.size) finish("short", `the connection ended after ${bytes} of ${blob.size} bytes (${why})`);
      else finish("error", `${why} after ${bytes} bytes`);
    };
    req.on("error", (error) => cut(error.message));
    req.on("response", (res) => {
      response = res;
      lastByteAt = performance.now();
      res.on("data", (chunk) => {
        if (bytes === 0) firstByteSeconds = (performance.now() - started) / 1000;
        bytes += chunk.length;
        lastByteAt = performance.now();
        hash.update(chunk);
        if (res.statusCode !== 200 && errorBody.length < 1000) errorBody += chunk.toString("utf8");
      });
      res.on("error", (error) => cut(error.message));
      res.on("close", () => {
        if (!res.complete) cut("connection closed");
      });
      res.on("end", () => {
        const digest = `sha256:${hash.digest("hex")}`;
        const cache = /(?:^|,)\s*cache;[^,]*desc="([^"]*)"/.exec(res.headers["server-timing"] ?? "")?.[1];
        if (res.statusCode !== 200) finish("error", `HTTP ${res.statusCode}: ${errorBody.slice(0, 300)}`);
        else if (bytes < blob.size) finish("short", `the body ended after ${bytes} of ${blob.size} bytes`);
        else if (bytes > blob.size) finish("mismatch", `${bytes} bytes, expected ${blob.size}`);
        else if (digest !== blob.digest) finish("mismatch", `digest ${digest}, expected ${blob.digest}`);
        else if (res.headers["content-length"] !== String(blob.size))
          finish("error", `Content-Length ${res.headers["content-length"]}, expected ${blob.size}`);
        else if (expectCache && cache !== expectCache)
          finish("error", `Server-Timing cache ${cache ?? "(none)"}, expected ${expectCache}`);
        else finish("ok");
      });
    });
    req.end();
  });
}

/**
 * Runs `jobs` (each { label, blob }) `concurrency` at a time; a job not started by the
 * deadline is "not run". Returns the results in job order.
 */
async function runPulls(server, repo, jobs, { concurrency, expectCache, deadlineAt, cpuHistory }) {
  const results = new Array(jobs.length);
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const index = next++;
      const job = jobs[index];
      if (Date.now() > deadlineAt) {
        results[index] = { label: job.label, outcome: "not run", detail: "the run's deadline passed", seconds: NaN };
        continue;
      }
      const result = {
        label: job.label,
        ...(await pullBlob(server, repo, job.blob, { expectCache, deadlineAt, cpuHistory })),
      };
      results[index] = result;
      done++;
      const rate = result.outcome === "ok" ? `, ${(job.blob.size / 1e6 / result.seconds).toFixed(0)} MB/s` : "";
      progress(
        `  ${job.label} (${done}/${jobs.length}): ${result.outcome}, ${result.bytes} bytes in ${result.seconds.toFixed(1)} s${rate}` +
          (result.detail ? `: ${result.detail}` : ""),
      );
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, jobs.length) }, worker));
  return results;
}

// ---------------------------------------------------------------------------------------
// Pushes and the background load.

/** Monolithic push (POST ?digest=), the body streamed from the file, then a HEAD check. */
async function pushBlob(server, repo, blob) {
  const what = `POST /v2/${repo}/blobs/uploads/?digest=${blob.digest}`;
  const response = await request(`${server.url}/v2/${repo}/blobs/uploads/?digest=${encodeURIComponent(blob.digest)}`, {
    method: "POST",
    headers: { "Content-Type": "application/octet-stream", "Content-Length": String(blob.size) },
    body: blob.read(),
    timeoutMs: 120_000 + Math.ceil(blob.size / 2000),
  });
  expectStatus(what, response, 201);
  if (response.headers["docker-content-digest"] !== blob.digest)
    throw new Error(`${what}: Docker-Content-Digest ${response.headers["docker-content-digest"]}`);
  const head = await request(`${server.url}/v2/${repo}/blobs/${blob.digest}`, { method: "HEAD" });
  expectStatus(`HEAD /v2/${repo}/blobs/${blob.digest}`, head, 200);
  if (head.headers["content-length"] !== String(blob.size))
    throw new Error(`HEAD ${blob.digest}: Content-Length ${head.headers["content-length"]}, expected ${blob.size}`);
}

/**
 * `clients` loops pushing fresh 64 KiB blobs and HEADing them, and (with any clients) one
 * probe, GET /v2/ once a second (no storage call: how long the server takes to answer at
 * all), until stop(), the deadline or the operation cap. stop() resolves { operations,
 * errors, firstError, push, head, probe }: the last three are latencies in ms of what
 * succeeded.
 */
function startLoad(server, clients, deadlineAt) {
  const stats = { operations: 0, errors: 0, firstError: "", push: [], head: [], probe: [] };
  let stopping = false;
  const loop = async () => {
    while (!stopping && Date.now() < deadlineAt && stats.operations < LOAD_MAX_OPERATIONS) {
      stats.operations++;
      const body = randomBytes(LOAD_BLOB_BYTES);
      const digest = sha256(body);
      const started = performance.now();
      try {
        const pushed = await request(`${server.url}/v2/${REPO_LOAD}/blobs/uploads/?digest=${digest}`, {
          method: "POST",
          headers: { "Content-Type": "application/octet-stream", "Content-Length": String(body.length) },
          body,
          timeoutMs: 60_000,
        });
        expectStatus("load: POST ?digest=", pushed, 201);
        const pushedAt = performance.now();
        const head = await request(`${server.url}/v2/${REPO_LOAD}/blobs/${digest}`, {
          method: "HEAD",
          timeoutMs: 60_000,
        });
        expectStatus("load: HEAD", head, 200);
        if (head.headers["content-length"] !== String(LOAD_BLOB_BYTES))
          throw new Error(`load: HEAD Content-Length ${head.headers["content-length"]}`);
        stats.push.push(pushedAt - started);
        stats.head.push(performance.now() - pushedAt);
      } catch (error) {
        stats.errors++;
        stats.firstError ||= String(error.message ?? error).slice(0, 300);
        await delay(200); // a failing server is not hammered
      }
    }
  };
  const probe = async () => {
    while (!stopping && Date.now() < deadlineAt && stats.probe.length < LOAD_MAX_OPERATIONS) {
      const started = performance.now();
      try {
        const response = await request(`${server.url}/v2/`, { timeoutMs: 120_000 });
        expectStatus("probe: GET /v2/", response, 200);
        stats.probe.push(performance.now() - started);
      } catch (error) {
        stats.errors++;
        stats.firstError ||= String(error.message ?? error).slice(0, 300);
      }
      await delay(1000);
    }
  };
  const loops = clients > 0 ? [...Array.from({ length: clients }, loop), probe()] : [];
  return {
    async stop() {
      stopping = true;
      await Promise.all(loops);
      return stats;
    },
  };
}

/** Until a one-byte ranged GET of each blob is a cache hit (or the timeout). Returns { ready, seconds }. */
async function waitForCache(server, repo, blobs, deadlineAt) {
  const started = performance.now();
  const until = Math.min(Date.now() + CACHE_READY_TIMEOUT_MS, deadlineAt);
  const pending = new Set(blobs);
  while (pending.size > 0 && Date.now() < until) {
    for (const blob of [...pending]) {
      try {
        const response = await request(`${server.url}/v2/${repo}/blobs/${blob.digest}`, {
          headers: { Range: "bytes=0-0" },
          timeoutMs: 30_000,
        });
        if (response.status === 206 && /cache;[^,]*desc="hit"/.test(response.headers["server-timing"] ?? ""))
          pending.delete(blob);
      } catch {
        // try again next round
      }
    }
    if (pending.size > 0) await delay(250);
  }
  return { ready: blobs.length - pending.size, seconds: (performance.now() - started) / 1000 };
}

// ---------------------------------------------------------------------------------------
// Scenarios. Each returns { rows: [{ name, blobSize, results, elapsed, resources }], load, logTail, notes }.

/** Runs `rounds` (each { name, jobs, expectCache, before? }) on a fresh server with `settings`. */
async function onServer({ settings, repo, blobs, rounds, options, deadlineAt }) {
  progress(`starting edge-registry (scripts/dev.mjs) with ${JSON.stringify(settings)}`);
  const server = await startEdgeRegistry({ settings });
  const rows = [];
  const notes = [];
  let load;
  let logTail = "";
  const ticker = new CpuHistory(server.pid);
  const tick = setInterval(() => ticker.sample(), TICK_MS);
  try {
    progress(`edge-registry at ${server.url} (pid ${server.pid}); pushing ${blobs.length} blob(s)`);
    for (const blob of blobs) await pushBlob(server, repo, blob);
    const background = startLoad(server, options.loadClients, deadlineAt);
    try {
      for (const round of rounds) {
        if (round.before) notes.push(await round.before(server));
        progress(`${round.name}: ${round.jobs.length} pulls, ${options.concurrency} at a time`);
        const sampler = new RssSampler(server.pid);
        sampler.start();
        const started = performance.now();
        const results = await runPulls(server, repo, round.jobs, {
          concurrency: options.concurrency,
          expectCache: round.expectCache,
          deadlineAt,
          cpuHistory: ticker,
        });
        const elapsed = (performance.now() - started) / 1000;
        rows.push({ name: round.name, blobSize: blobs[0].size, results, elapsed, resources: sampler.stop() });
      }
    } finally {
      load = await background.stop();
    }
    if (!server.alive()) notes.push("the server process exited during the run");
    if (rows.some((row) => row.results.some((result) => result.outcome !== "ok"))) logTail = server.logTail(80);
  } finally {
    clearInterval(tick);
    await server.stop();
  }
  return { rows, load, logTail, notes: notes.filter(Boolean) };
}

async function scenarioR2(options, work, deadlineAt) {
  const size = options.sizeMiB * MiB;
  const path = join(work, "r2.bin");
  progress(`r2: writing ${options.sizeMiB} MiB of random bytes`);
  await writeRandomFile(path, size);
  const blob = new RotatedFile(path, size, 0);
  await blob.sha256();
  const jobs = Array.from({ length: options.pulls }, (_, index) => ({ label: `r2 pull ${index + 1}`, blob }));
  return onServer({
    settings: { EDGE_CACHE: "off" },
    repo: REPO_R2,
    blobs: [blob],
    rounds: [{ name: "r2 (EDGE_CACHE=off: R2 → open → client)", jobs, expectCache: "bypass" }],
    options,
    deadlineAt,
  });
}

async function scenarioFill(options, work, deadlineAt) {
  const size = options.fillSizeMiB * MiB;
  const path = join(work, "fill.bin");
  progress(`fill: writing ${options.fillSizeMiB} MiB of random bytes`);
  await writeRandomFile(path, size);
  const step = Math.floor(size / options.fillBlobs);
  const blobs = Array.from({ length: options.fillBlobs }, (_, index) => new RotatedFile(path, size, index * step));
  for (const blob of blobs) await blob.sha256();
  if (new Set(blobs.map((blob) => blob.digest)).size !== blobs.length)
    throw new Error("fill: the rotated blobs are not distinct (too many blobs for the size?)");
  const jobs = (round) => blobs.map((blob, index) => ({ label: `fill ${round} ${index + 1}`, blob }));
  let cacheWait;
  const result = await onServer({
    settings: {},
    repo: REPO_FILL,
    blobs,
    rounds: [
      { name: "fill, 1st pulls (misses: openTwice → client + cache.put)", jobs: jobs("miss"), expectCache: "miss" },
      {
        name: "fill, 2nd pulls (cache hits)",
        jobs: jobs("hit"),
        expectCache: "hit",
        before: async (server) => {
          progress("fill: waiting until every blob is a cache hit (one-byte ranged GETs)");
          cacheWait = await waitForCache(server, REPO_FILL, blobs, deadlineAt);
          return (
            `fill: ${cacheWait.ready} of ${blobs.length} blobs answered a one-byte ranged GET from the cache ` +
            `${cacheWait.seconds.toFixed(1)} s after the 1st pulls ended`
          );
        },
      },
    ],
    options,
    deadlineAt,
  });
  return { ...result, cacheWait, blobCount: blobs.length };
}

// ---------------------------------------------------------------------------------------
// The report.

const OUTCOMES = ["ok", "stalled", "short", "mismatch", "error", "not run"];
const fmt = (value, digits = 1) => (Number.isFinite(value) ? value.toFixed(digits) : "–");
const mib = (bytes) => (Number.isFinite(bytes) ? (bytes / MiB).toFixed(0) : "–");

function percentile(sorted, fraction) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))];
}

function median(sorted) {
  if (sorted.length === 0) return NaN;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

function machineFacts() {
  return [
    `- date: ${new Date().toISOString()}; nproc ${commandLine("nproc", []) || cpus().length}; CPU ${cpuModel() || cpus()[0]?.model || "?"}`,
    `- memory ${(totalmem() / 2 ** 30).toFixed(1)} GiB, kernel ${release()}; node ${process.versions.node}, ` +
      `wrangler ${packageVersion("wrangler")}, miniflare ${packageVersion("miniflare")}, workerd ${packageVersion("@cloudflare/workerd-linux-64")}`,
  ];
}

function counts(results) {
  const out = Object.fromEntries(OUTCOMES.map((outcome) => [outcome, 0]));
  for (const result of results) out[result.outcome]++;
  return out;
}

function tableRow(row) {
  const c = counts(row.results);
  const okSeconds = row.results
    .filter((result) => result.outcome === "ok")
    .map((result) => result.seconds)
    .sort((a, b) => a - b);
  const okBytes = okSeconds.length * row.blobSize;
  const firstByte = row.results
    .filter((result) => result.outcome === "ok")
    .map((result) => result.firstByteSeconds)
    .sort((a, b) => a - b);
  const cells = [
    row.name,
    `${row.results.length} × ${mib(row.blobSize)} MiB`,
    ...OUTCOMES.map((outcome) => c[outcome]),
    fmt(okSeconds[0]),
    fmt(median(okSeconds)),
    fmt(okSeconds[okSeconds.length - 1]),
    `${fmt(median(firstByte))} / ${fmt(firstByte[firstByte.length - 1])}`,
    fmt(row.blobSize / 1e6 / median(okSeconds), 0),
    fmt(okBytes / 1e6 / row.elapsed, 0),
    `${mib(row.resources.byKind.workerd ?? NaN)} / ${mib(row.resources.total)}`,
    fmt(row.resources.cpu.total),
  ];
  return `| ${cells.join(" | ")} |`;
}

function loadLines(name, load) {
  const latency = (values) => {
    const sorted = [...values].sort((a, b) => a - b);
    return `p50 ${fmt(percentile(sorted, 0.5), 0)} ms, max ${fmt(sorted[sorted.length - 1], 0)} ms`;
  };
  const lines = [
    `- ${name}: background load ${load.operations} operations (push a 64 KiB blob, then HEAD it), ` +
      `${load.errors} errors; push ${latency(load.push)}; HEAD ${latency(load.head)}; ` +
      `probe GET /v2/ (${load.probe.length}) ${latency(load.probe)}` +
      (load.firstError ? ` (first error: ${load.firstError})` : ""),
  ];
  const slowest = Math.max(0, ...load.probe);
  if (slowest > 5000)
    lines.push(
      `- ${name}: note: GET /v2/, which calls no storage, once took ${fmt(slowest / 1000)} s: the server ` +
        "answered nothing else for that long while pulls ran (a request waits; not counted as a failure)",
    );
  return lines;
}

function verdict(name, rows) {
  const results = rows.flatMap((row) => row.results);
  const c = counts(results);
  const bad = results.length - c.ok;
  const size = `${mib(rows[0].blobSize)} MiB`;
  if (bad === 0)
    return `**${name}: PASS**: all ${results.length} pulls of ${size} complete and correct; none stalled, ended short or mismatched.`;
  const parts = OUTCOMES.filter((outcome) => outcome !== "ok" && c[outcome] > 0).map(
    (outcome) => `${c[outcome]} ${outcome}`,
  );
  return `**${name}: FAIL**: ${bad} of ${results.length} pulls of ${size} not ok (${parts.join(", ")}).`;
}

function report(options, scenarios, loadAtStart) {
  const [one, five, fifteen] = loadavg().map((x) => x.toFixed(2));
  const lines = [
    "### Pull stress: edge-registry (scripts/dev.mjs, Miniflare), large blob GETs under load",
    "",
    ...machineFacts(),
    `- load average at start ${loadAtStart}, at end ${one} ${five} ${fifteen} (other work on the machine counts)`,
    `- ${options.concurrency} pulls at a time; background load: ${options.loadClients} loops pushing 64 KiB blobs ` +
      "(POST ?digest=) and HEADing them, plus a GET /v2/ probe once a second; stalled = no bytes for " +
      `${STALL_MS / 1000} s`,
  ];
  if (scenarios.r2)
    lines.push(`- r2: EDGE_CACHE=off, one blob of ${options.sizeMiB} MiB pulled ${options.pulls} times`);
  if (scenarios.fill)
    lines.push(
      `- fill: cache on (default settings), ${options.fillBlobs} distinct blobs of ${options.fillSizeMiB} MiB, ` +
        "each pulled once (cache miss), then once more (cache hit)",
    );
  lines.push(
    "",
    "| scenario | pulls | ok | stalled | short | mismatch | error | not run | min s | median s | max s | first byte s, median / max | MB/s (median pull) | MB/s (all ok pulls) | peak RSS MiB workerd / total | server CPU s |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  );
  for (const scenario of Object.values(scenarios)) for (const row of scenario.rows) lines.push(tableRow(row));
  lines.push(
    "",
    "Seconds per pull: ok pulls only, from the request to the last byte (first byte: to the first body byte). MB/s = 10^6 bytes/s; " +
      "'all ok pulls' = their bytes over the round's wall-clock time (concurrent pulls add up). " +
      "Peak RSS of the server's process tree (scripts/dev.mjs's node + workerd) and its CPU time, sampled from /proc during the round.",
    "",
  );
  for (const [name, scenario] of Object.entries(scenarios)) {
    lines.push(...loadLines(name, scenario.load));
    for (const note of scenario.notes) lines.push(`- ${note}`);
  }
  lines.push("");
  for (const [name, scenario] of Object.entries(scenarios)) lines.push(`- ${verdict(name, scenario.rows)}`);
  for (const [name, scenario] of Object.entries(scenarios)) {
    const failed = scenario.rows.flatMap((row) => row.results).filter((result) => result.outcome !== "ok");
    if (failed.length === 0) continue;
    lines.push("", `#### ${name}: pulls not ok`, "");
    for (const result of failed) {
      lines.push(
        `- ${result.label}: **${result.outcome}** after ${fmt(result.seconds)} s, ${result.bytes ?? 0} bytes, ` +
          `status ${result.status ?? "–"}, Content-Length ${result.contentLength ?? "–"}, ` +
          `first byte at ${fmt(result.firstByteSeconds, 2)} s, Server-Timing \`${result.serverTiming ?? ""}\`: ${result.detail}`,
      );
    }
    if (scenario.logTail.trim())
      lines.push("", `Server log (errors only), last 80 lines:`, "", "```", scenario.logTail.trimEnd(), "```");
    else lines.push("", "The server log (errors only) was empty.");
  }
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------

async function main() {
  const options = parseOptions();
  const deadlineAt = Date.now() + options.deadlineMin * 60_000;
  if (options.only.has("r2") && options.sizeMiB * MiB <= READ_SLICE_BYTES)
    progress(`warning: r2 blob of ${options.sizeMiB} MiB fits one 16 MiB R2 slice: served natively, not by pump()`);
  if (options.only.has("fill") && options.fillSizeMiB * MiB <= READ_SLICE_BYTES)
    progress(`warning: fill blobs of ${options.fillSizeMiB} MiB fit one R2 slice: teed natively, not by pump()`);
  const loadAtStart = loadavg()
    .map((x) => x.toFixed(2))
    .join(" ");
  const scenarios = {};
  for (const [name, run] of [
    ["r2", scenarioR2],
    ["fill", scenarioFill],
  ]) {
    if (!options.only.has(name)) continue;
    // The random file, removed as soon as its scenario is over.
    const work = await makeTempDir(name);
    try {
      scenarios[name] = await run(options, work, deadlineAt);
    } finally {
      await removeTempDir(work);
    }
  }
  console.log(report(options, scenarios, loadAtStart));
  const allOk = Object.values(scenarios).every((scenario) =>
    scenario.rows.every((row) => row.results.every((result) => result.outcome === "ok")),
  );
  process.exitCode = allOk ? 0 : 1;
}

main().catch((error) => {
  console.error(`\nbench/pull-stress.mjs FAILED: ${error.stack ?? error}`);
  process.exitCode = 1;
});
