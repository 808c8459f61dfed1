#!/usr/bin/env node
// Garbage collection at scale: a generated registry of --repos repositories and --blobs
// blobs (default 10 000 and 100 000), collected by edge-registry's collector
// (src/gc/collector.ts, a Durable Object stepping through alarms, on Miniflare) and, on an
// equivalent registry on disk, by docker/distribution's offline `garbage-collect`.
//
//   node bench/gc.mjs                               10 000 repositories, 100 000 blobs
//   node bench/gc.mjs --repos 100 --blobs 1000      a quick run
//   node bench/gc.mjs --json                        the figures as JSON on stdout
//   node bench/gc.mjs --only edge                   one side (edge or distribution)
//
// Options: --garbage F (fraction of repositories whose old image was deleted, 0.1),
// --kv (also write the KV copies pushes write: blob descriptors, link copies),
// --settle S (seconds between the last write and the run, default 61: see below),
// --concurrency C (storage writes in flight while generating, 32),
// --timeout-min M (give up on a run after M minutes, 60). BENCH_KEEP_TMP=1 keeps the
// temp dirs (both registries' state, distribution's log).
//
// The registry: every repository holds one image, tagged `latest` (an OCI manifest, a
// config and layers: two from a shared pool of base layers, the rest its own); in a
// --garbage fraction of them an older image (same base layers, its own config and layers)
// was deleted by digest, leaving its layer links behind, as a DELETE does in both
// registries: its manifest, config and own layers are garbage. Blobs are a few bytes.
//
// edge-registry's state is written straight into Miniflare's local R2 (and KV with --kv)
// with the layout of src/registry/paths.ts, through the Worker started as `npm run gc`
// starts it (scripts/lib/local-worker.mjs); every object is written "now", so the run uses
// grace 0. The collector's check phase treats tags and revisions younger than its clock
// margin (60 s) as pushed during the run and re-reads them, so the run starts --settle
// seconds after the last write (distribution's tree is generated meanwhile). The run:
// POST /_admin/gc?grace=0, then GET /_admin/gc every 100 ms until it is done; the time is
// from the POST to the first poll that sees it done. Each poll also reads workerd's CPU
// time (/proc), for the per-phase table and a per-step CPU estimate.
//
// distribution's tree (filesystem driver layout) holds the same blobs, links, tags and
// manifests (the same bytes, so the same digests); `docker-registry garbage-collect
// config.yml` (no --delete-untagged) is timed as a process, its page cache warm.
//
// Both runs are checked: the blobs each removed must be exactly the generated garbage.
// Exit status 1 if a check failed or a run did not finish.
import { createHash, randomUUID } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { startLocalWorker } from "../scripts/lib/local-worker.mjs";
import { commandLine, makeTempDir, removeTempDir, run, treeCpuSeconds } from "./lib.mjs";

const args = process.argv.slice(2);
function option(name, fallback) {
  const index = args.indexOf(name);
  return index >= 0 && args[index + 1] !== undefined ? args[index + 1] : fallback;
}
function fail(message) {
  console.error(`gc bench: ${message}`);
  process.exit(2);
}
const REPOS = Number(option("--repos", "10000"));
const BLOBS = Number(option("--blobs", "100000"));
const GARBAGE_FRACTION = Number(option("--garbage", "0.1"));
const CONCURRENCY = Number(option("--concurrency", "32"));
const SETTLE_SECONDS = Number(option("--settle", "61"));
const TIMEOUT_MS = Number(option("--timeout-min", "60")) * 60_000;
const ONLY = option("--only", "edge,distribution").split(",");
const JSON_OUTPUT = args.includes("--json");
const WITH_KV = args.includes("--kv");
for (const [name, value] of [
  ["--repos", REPOS],
  ["--blobs", BLOBS],
  ["--concurrency", CONCURRENCY],
]) {
  if (!Number.isSafeInteger(value) || value < 1) fail(`${name} takes a positive whole number`);
}
if (!(GARBAGE_FRACTION >= 0 && GARBAGE_FRACTION <= 1)) fail("--garbage takes a fraction between 0 and 1");
if (!(SETTLE_SECONDS >= 0) || !(TIMEOUT_MS > 0)) fail("--settle and --timeout-min take positive numbers");

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
const POLL_MS = 100;
/** Cloudflare's limits a collector step runs under (one alarm invocation each). */
const LIMITS = {
  subrequests: { free: 1_000, paid: 10_000 },
  cpuMs: { free: 10, paid: 30_000 },
};
const PHASES = ["scan", "tags", "manifests", "decide", "prune", "check", "condemn", "confirm", "reclaim", "orphans"];

const log = (message) => process.stderr.write(`# ${message}\n`);
const seconds = (ms) => (ms / 1000).toFixed(1);

// ---------------------------------------------------------------------------------------
// The registry model: blobs, images, repositories (shared by both registries).

/** Every blob by digest: { digest, hex, bytes, size, mediaType }. */
const blobs = new Map();
function blob(bytes, mediaType) {
  const hex = createHash("sha256").update(bytes).digest("hex");
  const digest = `sha256:${hex}`;
  if (!blobs.has(digest)) blobs.set(digest, { digest, hex, bytes, size: bytes.length, mediaType });
  return blobs.get(digest);
}

function generateModel() {
  const garbageRepos = Math.round(REPOS * GARBAGE_FRACTION);
  const images = REPOS + garbageRepos;
  const pool = Math.max(1, Math.min(Math.round(BLOBS / 100), REPOS));
  const own = BLOBS - pool;
  const perImage = Math.floor(own / images);
  const extra = own - perImage * images;
  if (perImage < 3) {
    fail(`--blobs ${BLOBS} is too few for ${images} images (each needs a manifest, a config and a layer of its own)`);
  }
  const base = Array.from({ length: pool }, (_, index) => blob(Buffer.from(`base layer ${index}\n`), OCI_LAYER));
  const oldOnes = new Set(Array.from({ length: garbageRepos }, (_, j) => Math.floor((j * REPOS) / garbageRepos)));
  const repos = [];
  let imageIndex = 0;
  const image = (repoIndex, kind, bases) => {
    // manifest + config + layers of its own: perImage blobs, one more for the first `extra` images.
    const ownLayers = perImage - 2 + (imageIndex < extra ? 1 : 0);
    imageIndex++;
    const config = blob(
      Buffer.from(
        JSON.stringify({
          architecture: "amd64",
          os: "linux",
          config: { Labels: { repository: String(repoIndex), image: kind } },
          rootfs: { type: "layers", diff_ids: [] },
        }),
      ),
      OCI_CONFIG,
    );
    const layers = [...bases];
    for (let k = 0; k < ownLayers; k++) {
      layers.push(blob(Buffer.from(`layer ${repoIndex} ${kind} ${k}\n`), OCI_LAYER));
    }
    const manifest = blob(
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: OCI_MANIFEST,
          config: { mediaType: OCI_CONFIG, digest: config.digest, size: config.size },
          layers: layers.map((layer) => ({ mediaType: OCI_LAYER, digest: layer.digest, size: layer.size })),
        }),
      ),
      OCI_MANIFEST,
    );
    return { manifest, config, layers };
  };
  for (let index = 0; index < REPOS; index++) {
    const name = `gcbench/r${String(index).padStart(6, "0")}`;
    const bases = [...new Set([base[index % pool], base[(index * 7 + 3) % pool]])];
    const live = image(index, "live", bases);
    const old = oldOnes.has(index) ? image(index, "old", bases) : null;
    const layerLinks = new Map();
    for (const img of [live, old]) {
      if (!img) continue;
      for (const b of [img.config, ...img.layers]) layerLinks.set(b.digest, b);
    }
    repos.push({ name, live, old, layerLinks: [...layerLinks.values()] });
  }
  if (blobs.size !== BLOBS) throw new Error(`generated ${blobs.size} blobs, meant ${BLOBS}`);
  // What nothing alive references: the garbage both collectors must remove, and no more.
  const alive = new Set();
  for (const repo of repos) {
    for (const b of [repo.live.manifest, repo.live.config, ...repo.live.layers]) alive.add(b.digest);
  }
  const garbage = [...blobs.values()].filter((b) => !alive.has(b.digest));
  const garbageLinks = repos.reduce(
    (sum, repo) => sum + repo.layerLinks.filter((b) => !usedBy(repo.live, b)).length,
    0,
  );
  return {
    repos,
    garbageRepos,
    pool,
    perImage,
    garbage,
    garbageBytes: garbage.reduce((sum, b) => sum + b.size, 0),
    garbageLinks,
    links: repos.reduce((sum, repo) => sum + repo.layerLinks.length, 0),
  };
}

function usedBy(image, b) {
  return image.config.digest === b.digest || image.layers.some((layer) => layer.digest === b.digest);
}

/** Runs `work` over `items` (an iterable), at most `limit` at a time. */
async function inPool(items, limit, work) {
  const iterator = items[Symbol.iterator]();
  let failed = null;
  const worker = async () => {
    for (;;) {
      if (failed) return;
      const next = iterator.next();
      if (next.done) return;
      try {
        await work(next.value);
      } catch (error) {
        failed ??= error;
      }
    }
  };
  await Promise.all(Array.from({ length: limit }, worker));
  if (failed) throw failed;
}

// ---------------------------------------------------------------------------------------
// edge-registry: the state, written through Miniflare's R2 and KV.

function* edgeWrites(model, descriptors) {
  const json = { httpMetadata: { contentType: "application/json" } };
  // Blobs as BlobStore.publish leaves them: the bytes, then the descriptor record.
  for (const b of blobs.values()) {
    const key = `data/${randomUUID()}`;
    const descriptor = { digest: b.digest, size: b.size, key };
    descriptors.set(b.digest, descriptor);
    yield { r2: [key, new Uint8Array(b.bytes)] }; // its own ArrayBuffer: Miniflare's proxy rejects pooled Buffers
    yield {
      r2: [
        `blobs/sha256/${b.hex}`,
        JSON.stringify(descriptor),
        { ...json, customMetadata: { key, size: String(b.size) } },
      ],
      kv: WITH_KV ? [`blob:${b.digest}`, JSON.stringify(descriptor)] : undefined,
    };
  }
  const expirationTtl = 30 * 24 * 60 * 60;
  for (const repo of model.repos) {
    const { name, live } = repo;
    yield { r2: [`catalog/${name}`, ""] };
    for (const b of repo.layerLinks) {
      yield {
        r2: [`repositories/${name}/_layers/sha256/${b.hex}`, "{}"],
        kv: WITH_KV
          ? [
              `link:${name}/_layers/${b.digest}`,
              JSON.stringify({ link: {}, descriptor: descriptors.get(b.digest) }),
              { expirationTtl },
            ]
          : undefined,
      };
    }
    const m = live.manifest;
    const content = m.bytes.toString("base64");
    yield {
      r2: [`repositories/${name}/_manifests/revisions/sha256/${m.hex}`, JSON.stringify({ mediaType: OCI_MANIFEST })],
      kv: WITH_KV
        ? [
            `link:${name}/_manifests/${m.digest}`,
            JSON.stringify({ link: { mediaType: OCI_MANIFEST }, descriptor: descriptors.get(m.digest), content }),
            { expirationTtl },
          ]
        : undefined,
    };
    yield {
      r2: [
        `repositories/${name}/_manifests/tags/latest`,
        JSON.stringify({ digest: m.digest, mediaType: OCI_MANIFEST, size: m.size, content }),
        { customMetadata: { digest: m.digest } },
      ],
    };
  }
}

async function generateEdge(model, bucket, kv) {
  const started = performance.now();
  let done = 0;
  let r2Puts = 0;
  let kvPuts = 0;
  const total = 2 * BLOBS + model.repos.length * 3 + model.links;
  const progress = setInterval(() => log(`edge: ${done}/${total} objects written`), 10_000);
  try {
    await inPool(edgeWrites(model, new Map()), CONCURRENCY, async (write) => {
      await bucket.put(...write.r2);
      r2Puts++;
      if (write.kv) {
        await kv.put(...write.kv);
        kvPuts++;
      }
      done++;
    });
  } finally {
    clearInterval(progress);
  }
  return { ms: performance.now() - started, r2Puts, kvPuts };
}

/** Counts the keys under `prefix` (paging the listing), by their `gc` custom metadata ("live": none). */
async function countKeys(bucket, prefix, { metadata = false } = {}) {
  const counts = { all: 0, live: 0 };
  let cursor;
  for (let page = 0; page < 1_000_000; page++) {
    // (Miniflare returns at most 100 objects a page with metadata, 1000 without.)
    const listing = await bucket.list({
      prefix,
      ...(metadata ? { include: ["customMetadata"] } : {}),
      ...(cursor ? { cursor } : {}),
    });
    for (const object of listing.objects) {
      const mark = object.customMetadata?.gc;
      const kind = mark === undefined ? "live" : `${mark}${object.customMetadata.reclaimed ? " (reclaimed)" : ""}`;
      counts.all++;
      counts[kind] = (counts[kind] ?? 0) + 1;
    }
    if (!listing.truncated) return counts;
    cursor = listing.cursor;
  }
  throw new Error(`listing ${prefix} did not end`);
}

/** User + system CPU milliseconds of this process's workerd descendants. */
function workerdCpuMs() {
  return treeCpuSeconds(process.pid, "workerd") * 1000;
}

async function runEdge(model) {
  const dir = await makeTempDir("gc-edge");
  const token = randomUUID();
  log("edge: starting the Worker (bundling with wrangler)");
  const { miniflare, stop } = await startLocalWorker({
    persistTo: join(dir, "state"),
    quiet: true,
    bindings: { ADMIN_TOKEN: token },
  });
  try {
    const bucket = await miniflare.getR2Bucket("BLOBS");
    const kv = await miniflare.getKVNamespace("META");
    log(`edge: writing ${BLOBS} blobs in ${REPOS} repositories${WITH_KV ? " (and KV copies)" : ""}`);
    const generation = await generateEdge(model, bucket, kv);
    log(`edge: generated in ${seconds(generation.ms)} s (${generation.r2Puts} R2 puts, ${generation.kvPuts} KV puts)`);
    const settleUntil = Date.now() + SETTLE_SECONDS * 1000;
    let distribution = null;
    if (ONLY.includes("distribution")) distribution = await prepareDistribution(model);
    const wait = settleUntil - Date.now();
    if (wait > 0) {
      log(`edge: waiting ${seconds(wait)} s (the collector's clock margin; --settle)`);
      await delay(wait);
    }

    const call = async (method, path) => {
      const response = await miniflare.dispatchFetch(new URL(path, "http://gc.local").toString(), {
        method,
        headers: { Authorization: `Bearer ${token}` },
      });
      return { status: response.status, body: await response.text() };
    };
    const cpuAtStart = workerdCpuMs();
    if (cpuAtStart === 0) log("edge: workerd not found under this process: no CPU figures");
    log("edge: collecting (POST /_admin/gc?grace=0)");
    const started = performance.now();
    const answer = await call("POST", "/_admin/gc?grace=0");
    if (answer.status !== 202) throw new Error(`POST /_admin/gc answered ${answer.status}: ${answer.body}`);
    /** Per phase as polls saw it: when first seen, steps and workerd CPU then. */
    const seen = [];
    let report = JSON.parse(answer.body);
    let maxStepCpu = { ms: 0, phase: "", steps: 0 };
    let previous = { steps: 0, cpu: cpuAtStart, phase: "scan" };
    let lastLog = performance.now();
    const deadline = performance.now() + TIMEOUT_MS;
    seen.push({ phase: "scan", at: 0, steps: 0, cpu: 0 });
    for (let poll = 0; report.status === "running"; poll++) {
      if (performance.now() > deadline) break;
      await delay(POLL_MS);
      const got = await call("GET", "/_admin/gc");
      if (got.status !== 200) throw new Error(`GET /_admin/gc answered ${got.status}: ${got.body}`);
      report = JSON.parse(got.body);
      const now = performance.now();
      const cpu = workerdCpuMs();
      const stepsDone = report.steps - previous.steps;
      if (stepsDone > 0) {
        const perStep = (cpu - previous.cpu) / stepsDone;
        if (perStep > maxStepCpu.ms) maxStepCpu = { ms: perStep, phase: previous.phase, steps: stepsDone };
      }
      if (report.phase !== seen.at(-1).phase) {
        seen.push({ phase: report.phase, at: now - started, steps: report.steps, cpu: cpu - cpuAtStart });
      }
      previous = { steps: report.steps, cpu, phase: report.phase };
      if (now - lastLog > 10_000) {
        lastLog = now;
        log(`edge: ${seconds(now - started)} s: ${report.phase} (${report.phaseDone} done), step ${report.steps}`);
      }
    }
    const ms = performance.now() - started;
    const cpuTotal = workerdCpuMs() - cpuAtStart;
    const phases = seen.map((entry, index) => {
      const next = seen[index + 1] ?? { at: ms, steps: report.steps, cpu: cpuTotal };
      return {
        phase: entry.phase,
        seconds: (next.at - entry.at) / 1000,
        steps: next.steps - entry.steps,
        cpuSeconds: (next.cpu - entry.cpu) / 1000,
      };
    });
    const skipped = PHASES.filter((phase) => !seen.some((entry) => entry.phase === phase));
    if (report.status === "running") {
      log(`edge: gave up after ${seconds(ms)} s in phase ${report.phase} (${report.phaseDone} done)`);
    }
    log("edge: counting what is left");
    const remaining = {
      blobs: await countKeys(bucket, "blobs/", { metadata: true }),
      data: await countKeys(bucket, "data/"),
    };
    return {
      generation,
      ms,
      report,
      phases,
      skippedPhases: skipped,
      workerdCpuSeconds: cpuTotal / 1000,
      maxStepCpu,
      remaining,
      distribution,
      dir,
    };
  } finally {
    await stop();
    await removeTempDir(dir);
  }
}

// ---------------------------------------------------------------------------------------
// docker/distribution: the same registry in its filesystem driver's layout.

function writeFile(path, content) {
  mkdirSync(join(path, ".."), { recursive: true });
  writeFileSync(path, content);
}

async function prepareDistribution(model) {
  const dir = await makeTempDir("gc-distribution");
  const started = performance.now();
  const root = join(dir, "root");
  const v2 = join(root, "docker", "registry", "v2");
  log(`distribution: writing ${BLOBS} blobs in ${REPOS} repositories under ${v2}`);
  for (const b of blobs.values()) writeFile(join(v2, "blobs", "sha256", b.hex.slice(0, 2), b.hex, "data"), b.bytes);
  for (const repo of model.repos) {
    const base = join(v2, "repositories", ...repo.name.split("/"));
    for (const b of repo.layerLinks) writeFile(join(base, "_layers", "sha256", b.hex, "link"), b.digest);
    const m = repo.live.manifest;
    writeFile(join(base, "_manifests", "revisions", "sha256", m.hex, "link"), m.digest);
    writeFile(join(base, "_manifests", "tags", "latest", "current", "link"), m.digest);
    writeFile(join(base, "_manifests", "tags", "latest", "index", "sha256", m.hex, "link"), m.digest);
  }
  const config = join(dir, "config.yml");
  writeFileSync(
    config,
    [
      "version: 0.1",
      "log:",
      "  level: error",
      "storage:",
      "  filesystem:",
      `    rootdirectory: ${root}`,
      "  delete:",
      "    enabled: true",
      "",
    ].join("\n"),
  );
  const ms = performance.now() - started;
  log(`distribution: generated in ${seconds(ms)} s`);
  return { dir, v2, config, generationMs: ms };
}

function countDistributionBlobs(v2) {
  let count = 0;
  const sha = join(v2, "blobs", "sha256");
  for (const prefix of readdirSync(sha)) {
    for (const hex of readdirSync(join(sha, prefix))) {
      try {
        if (statSync(join(sha, prefix, hex, "data")).isFile()) count++;
      } catch {
        // a directory without data: not a blob
      }
    }
  }
  return count;
}

async function runDistribution(prepared) {
  const { dir, v2, config } = prepared;
  try {
    const before = countDistributionBlobs(v2);
    const logFile = join(dir, "garbage-collect.log");
    // No REGISTRY_* variables from the caller's environment: they override the config file.
    const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith("REGISTRY_")));
    log("distribution: docker-registry garbage-collect");
    const started = performance.now();
    const result = await run("sh", ["-c", 'exec docker-registry garbage-collect "$0" >"$1" 2>&1', config, logFile], {
      env,
      cwd: dir,
      timeoutMs: TIMEOUT_MS,
      check: false,
    });
    const ms = performance.now() - started;
    const output = readFileSync(logFile, "utf8");
    if (result.code !== 0) {
      throw new Error(`docker-registry garbage-collect exited ${result.code}:\n${output.slice(-3000)}`);
    }
    const summary = /(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion/.exec(output);
    const after = countDistributionBlobs(v2);
    return {
      ms,
      before,
      after,
      removed: before - after,
      marked: summary ? Number(summary[1]) : null,
      eligible: summary ? Number(summary[2]) : null,
      version: commandLine("docker-registry", ["--version"]),
    };
  } finally {
    await removeTempDir(dir);
  }
}

// ---------------------------------------------------------------------------------------

const model = generateModel();
log(
  `model: ${REPOS} repositories, ${BLOBS} blobs (${model.pool} shared base layers, ${model.perImage} own blobs per image), ` +
    `${model.garbageRepos} with a deleted image: ${model.garbage.length} garbage blobs, ${model.garbageLinks} layer links to prune`,
);
let edge = null;
let distributionPrepared = null;
if (ONLY.includes("edge")) {
  edge = await runEdge(model);
  distributionPrepared = edge.distribution;
} else if (ONLY.includes("distribution")) {
  distributionPrepared = await prepareDistribution(model);
}
const distribution = distributionPrepared ? await runDistribution(distributionPrepared) : null;

const checks = [];
if (edge) {
  const r = edge.report;
  checks.push(
    { what: "edge: the run finished", ok: r.status === "done", detail: `${r.status} ${r.lastError ?? ""}`.trim() },
    {
      what: "edge: blobsRemoved = garbage blobs",
      ok: r.blobsRemoved === model.garbage.length,
      detail: `${r.blobsRemoved} / ${model.garbage.length}`,
    },
    {
      what: "edge: bytesReclaimed = garbage bytes",
      ok: r.bytesReclaimed === model.garbageBytes,
      detail: `${r.bytesReclaimed} / ${model.garbageBytes}`,
    },
    {
      what: "edge: layer links pruned",
      ok: r.removed.links === model.garbageLinks,
      detail: `${r.removed.links} / ${model.garbageLinks}`,
    },
    {
      // Reclaimed descriptors may stay as tombstones (absent to every reader); no other mark may.
      what: "edge: live descriptors and data objects left = blobs - garbage",
      ok:
        edge.remaining.blobs.live === BLOBS - model.garbage.length &&
        edge.remaining.blobs.all === edge.remaining.blobs.live + (edge.remaining.blobs["tombstone (reclaimed)"] ?? 0) &&
        edge.remaining.data.all === BLOBS - model.garbage.length,
      detail:
        `${JSON.stringify(edge.remaining.blobs)} descriptors, ${edge.remaining.data.all} data objects; ` +
        `expected ${BLOBS - model.garbage.length} live`,
    },
  );
}
if (distribution) {
  checks.push({
    what: "distribution: blobs deleted = garbage blobs",
    ok: distribution.removed === model.garbage.length && distribution.before === BLOBS,
    detail: `${distribution.removed} / ${model.garbage.length} (${distribution.before} before)`,
  });
}

const result = {
  repositories: REPOS,
  blobs: BLOBS,
  garbageRepositories: model.garbageRepos,
  garbageBlobs: model.garbage.length,
  garbageBytes: model.garbageBytes,
  garbageLinks: model.garbageLinks,
  layerLinks: model.links,
  kvCopies: WITH_KV,
  limits: LIMITS,
  edge: edge && {
    generationSeconds: edge.generation.ms / 1000,
    runSeconds: edge.ms / 1000,
    steps: edge.report.steps,
    operations: edge.report.operations,
    maxStepOperations: edge.report.maxStepOperations,
    maxStepMs: edge.report.maxStepMs,
    maxStepComputeMs: edge.report.maxStepComputeMs,
    workerdCpuSeconds: edge.workerdCpuSeconds,
    maxStepCpuEstimateMs: edge.maxStepCpu.ms,
    maxStepCpuEstimatePhase: edge.maxStepCpu.phase,
    blobsRemoved: edge.report.blobsRemoved,
    bytesReclaimed: edge.report.bytesReclaimed,
    scanned: edge.report.scanned,
    removed: edge.report.removed,
    phases: edge.phases,
    phasesBetweenPolls: edge.skippedPhases,
    status: edge.report.status,
    lastError: edge.report.lastError,
  },
  distribution: distribution && {
    version: distribution.version,
    generationSeconds: distributionPrepared.generationMs / 1000,
    runSeconds: distribution.ms / 1000,
    blobsRemoved: distribution.removed,
    marked: distribution.marked,
    eligible: distribution.eligible,
  },
  ratio: edge && distribution ? edge.ms / distribution.ms : null,
  checks,
};

if (JSON_OUTPUT) {
  console.log(JSON.stringify(result, null, 2));
} else {
  const out = [];
  out.push(
    `Garbage collection: ${REPOS} repositories, ${BLOBS} blobs; ${model.garbageRepos} repositories with a deleted ` +
      `image: ${model.garbage.length} garbage blobs (${model.garbageBytes} bytes), ${model.garbageLinks} of ` +
      `${model.links} layer links unused${WITH_KV ? "; KV copies written" : ""}.`,
    "",
  );
  const e = result.edge;
  const d = result.distribution;
  out.push("| | edge-registry collector (Miniflare) | distribution garbage-collect |", "|---|---|---|");
  out.push(`| run time | ${e ? `${e.runSeconds.toFixed(1)} s` : "–"} | ${d ? `${d.runSeconds.toFixed(1)} s` : "–"} |`);
  out.push(`| blobs removed | ${e ? e.blobsRemoved : "–"} | ${d ? d.blobsRemoved : "–"} |`);
  if (e && d) out.push(`| ratio edge / distribution | ${result.ratio.toFixed(1)}× | |`);
  if (e) {
    out.push(
      `| steps (alarm invocations) | ${e.steps} | (one process) |`,
      `| storage calls | ${e.operations.r2} R2 (${e.operations.r2ClassA} class A), ${e.operations.kv} KV (${e.operations.kvWrites} writes) | files |`,
      `| bytes reclaimed | ${e.bytesReclaimed} | |`,
      `| state generated in | ${e.generationSeconds.toFixed(1)} s | ${d ? `${d.generationSeconds.toFixed(1)} s` : "–"} |`,
    );
    out.push("", "Per step (one alarm invocation) against the limits:", "");
    out.push("| figure | most in one step | Free | Paid |", "|---|---|---|---|");
    const pct = (value, limit) => `${((value / limit) * 100).toFixed(value / limit < 0.01 ? 2 : 0)}%`;
    out.push(
      `| storage calls (subrequests) | ${e.maxStepOperations} | ${LIMITS.subrequests.free} (${pct(e.maxStepOperations, LIMITS.subrequests.free)}) | ${LIMITS.subrequests.paid} (${pct(e.maxStepOperations, LIMITS.subrequests.paid)}) |`,
      `| wall time, storage simulator included (maxStepMs) | ${e.maxStepMs.toFixed(0)} ms | ${LIMITS.cpuMs.free} ms CPU | ${LIMITS.cpuMs.paid / 1000} s CPU (${pct(e.maxStepMs, LIMITS.cpuMs.paid)}) |`,
      `| time outside storage calls (maxStepComputeMs) | ${e.maxStepComputeMs.toFixed(0)} ms | ${LIMITS.cpuMs.free} ms | ${LIMITS.cpuMs.paid / 1000} s |`,
      `| workerd CPU per step, worst ${POLL_MS} ms poll window (${e.maxStepCpuEstimatePhase}) | ${e.maxStepCpuEstimateMs.toFixed(0)} ms | ${LIMITS.cpuMs.free} ms | ${LIMITS.cpuMs.paid / 1000} s |`,
    );
    out.push(
      "",
      "Per phase (as the polls saw it; a phase that began and ended between two polls is counted in the one before):",
      "",
    );
    out.push("| phase | wall s | steps | workerd CPU s | CPU ms / step |", "|---|---|---|---|---|");
    for (const p of e.phases) {
      out.push(
        `| ${p.phase} | ${p.seconds.toFixed(1)} | ${p.steps} | ${p.cpuSeconds.toFixed(1)} | ${p.steps ? ((p.cpuSeconds * 1000) / p.steps).toFixed(0) : "–"} |`,
      );
    }
    out.push(
      `| total | ${e.runSeconds.toFixed(1)} | ${e.steps} | ${e.workerdCpuSeconds.toFixed(1)} | ${((e.workerdCpuSeconds * 1000) / e.steps).toFixed(0)} |`,
    );
    if (e.phasesBetweenPolls.length) out.push("", `Phases between two polls: ${e.phasesBetweenPolls.join(", ")}.`);
    const { scanned, removed } = e;
    out.push(
      "",
      `The collector scanned ${scanned.repositories} repositories, ${scanned.tags} tags, ${scanned.manifests} manifests, ` +
        `${scanned.links} links, ${scanned.blobs} blobs, ${scanned.dataObjects} data objects; removed ${removed.tags} tags, ` +
        `${removed.manifests} manifests, ${removed.links} links, ${removed.blobs} blobs, ${removed.orphans} orphans.`,
    );
  }
  out.push("", "Checks:", "");
  for (const check of checks) out.push(`- ${check.ok ? "ok" : "FAILED"}: ${check.what} (${check.detail})`);
  console.log(out.join("\n"));
}
process.exit(checks.every((check) => check.ok) ? 0 : 1);
