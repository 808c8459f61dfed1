#!/usr/bin/env node
// Pull-through mirror: a cold pull through the mirror against the same pull straight from
// the upstream, a warm pull, and the registry's own pull, side by side in one run.
//
//   node bench/mirror.mjs                  128 MiB image (4 layers) and 5 MiB image (3 layers), 10 runs
//   node bench/mirror.mjs --quick          small sizes, 2 runs: does it work
//   node bench/mirror.mjs --runs 7 --large-mib 256 --large-layers 6
//
// The upstream is docker/distribution (`docker-registry`, bench/lib.mjs startDistribution);
// edge-registry runs as `npm start` runs it (bench/lib.mjs startEdgeRegistry) with
// UPSTREAMS=[{"prefix":"up","url":"<distribution>","tagTtlSeconds":300}] and the front's
// access log on. Both on 127.0.0.1.
//
// Setup (untimed): for each image kind (large, small) and each run i, two distinct images
// of random layers are built as OCI layouts and pushed with skopeo: the "mirrored" one to
// distribution as <kind>/img-i (and again as <kind>/alias-i: same blobs, another name),
// the "native" one straight into edge-registry as <kind>/native-i. Distinct images per run,
// because edge-registry stores a blob once per digest: pulling the same image under a
// second name through the mirror finds its blobs stored (only links are made), which is
// row 5, not a cold pull.
//
// Timed, in each run, for each kind, one after another, with skopeo (wall time of
// `skopeo copy docker://… oci:<fresh dir>`, process start-up included; every pulled layout
// checked: the manifest's digest, every blob's sha256):
//   1. direct:  from distribution                       <kind>/img-i
//   2. cold:    through the mirror, nothing stored       up/<kind>/img-i
//   3. warm:    the same again, all stored               up/<kind>/img-i
//   4. native:  edge-registry's own pull of its own image <kind>/native-i
//   5. stored blobs, new name: through the mirror        up/<kind>/alias-i
// After a cold pull the bench waits until every blob is linked under the mirrored name
// (a HEAD whose Server-Timing shows no upstream request): the fill publishes just after
// the last byte went out; that wait is reported, not timed into the pull.
//
// Storage calls per pull: the Server-Timing of every request of that pull, summed, read
// from the front's access log (a marker request before and after each pull delimits it).
// CPU seconds per pull (from /proc, bench/lib.mjs treeCpuSeconds): workerd, the front's
// node process, and distribution, from before the pull until it settled.
//
// Markdown report on stdout, progress on stderr. Talks only to 127.0.0.1; every wait is
// bounded; temp dirs and processes are removed at the end (BENCH_KEEP_TMP=1 keeps dirs).
import { readFileSync } from "node:fs";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { loadavg } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as delay } from "node:timers/promises";
import {
  MiB,
  ROOT,
  commandLine,
  createSkopeo,
  expectStatus,
  hashFile,
  makeTempDir,
  parseCommandLine,
  parseTiming,
  removeTempDir,
  request,
  run,
  startDistribution,
  startEdgeRegistry,
  treeCpuSeconds,
  writeJsonBlob,
  writeRandomFile,
  markdownTable,
  reportFacts,
} from "./lib.mjs";

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const LAYER = "application/vnd.oci.image.layer.v1.tar";
const CONFIG = "application/vnd.oci.image.config.v1+json";
const PREFIX = "up";
const TAG = "v1";
const SETTLE_TIMEOUT_MS = 60_000;
const MARKER_TIMEOUT_MS = 10_000;

function usage() {
  return [
    "usage: node bench/mirror.mjs [--quick] [--runs N] [--large-mib N] [--large-layers K] [--small-mib N] [--small-layers K]",
    "  --runs N          runs (distinct images each) per pull kind (default 10; --quick 2)",
    "  --large-mib N     total layer bytes of the large image, MiB (default 128; --quick 16)",
    "  --large-layers K  its layers, sizes halving from the largest (default 4; --quick 3)",
    "  --small-mib N     total layer bytes of the small image, MiB, decimals allowed (default 5; --quick 2)",
    "  --small-layers K  its layers (default 3; --quick 2)",
    "  --quick           the smaller defaults above: a quick check that it all works",
    "  env BENCH_KEEP_TMP=1 keeps the temp dirs",
  ].join("\n");
}

function parseOptions() {
  const v = parseCommandLine(
    {
      quick: { type: "boolean", default: false },
      runs: { type: "string" },
      "large-mib": { type: "string" },
      "large-layers": { type: "string" },
      "small-mib": { type: "string" },
      "small-layers": { type: "string" },
    },
    usage,
  );
  const number = (name, fallback, { min, max, integer }) => {
    const value = Number(v[name] ?? fallback);
    if (!Number.isFinite(value) || value < min || value > max || (integer && !Number.isInteger(value))) {
      console.error(`--${name} must be ${integer ? "an integer" : "a number"} from ${min} to ${max}\n${usage()}`);
      process.exit(2);
    }
    return value;
  };
  const q = v.quick;
  return {
    quick: q,
    runs: number("runs", q ? 2 : 10, { min: 1, max: 50, integer: true }),
    kinds: [
      {
        name: "small",
        mib: number("small-mib", q ? 2 : 5, { min: 0.01, max: 4096, integer: false }),
        layers: number("small-layers", q ? 2 : 3, { min: 1, max: 16, integer: true }),
      },
      {
        name: "large",
        mib: number("large-mib", q ? 16 : 128, { min: 0.01, max: 4096, integer: false }),
        layers: number("large-layers", q ? 3 : 4, { min: 1, max: 16, integer: true }),
      },
    ],
  };
}

const progress = (message) => process.stderr.write(`# ${message}\n`);

/** Layer sizes in bytes: `count` layers halving from the largest, summing to `total`. */
function layerSizes(total, count) {
  const weights = Array.from({ length: count }, (_, j) => 2 ** j);
  const sum = weights.reduce((a, b) => a + b, 0);
  const sizes = weights.slice(0, -1).map((w) => Math.max(1, Math.floor((total * w) / sum)));
  sizes.push(total - sizes.reduce((a, b) => a + b, 0));
  if (sizes.some((n) => n < 1)) throw new Error(`cannot cut ${total} bytes into ${count} layers`);
  return sizes;
}

// ---------------------------------------------------------------------------------------
// Images: OCI layouts of random layers.

/** An OCI layout at `layout` with one image of random layers of `sizes`, tagged TAG. */
async function buildImage(layout, sizes) {
  const blobsDir = join(layout, "blobs", "sha256");
  await mkdir(blobsDir, { recursive: true });
  await writeFile(join(layout, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  const layers = [];
  for (const [index, size] of sizes.entries()) {
    const path = join(layout, `layer-${index}.tmp`);
    await writeRandomFile(path, size);
    const { digest } = await hashFile(path);
    await rename(path, join(blobsDir, digest.slice("sha256:".length)));
    layers.push({ mediaType: LAYER, digest, size });
  }
  const config = await writeJsonBlob(layout, {
    architecture: "amd64",
    os: "linux",
    config: {},
    rootfs: { type: "layers", diff_ids: layers.map((layer) => layer.digest) },
  });
  const manifest = await writeJsonBlob(layout, {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: CONFIG, ...config },
    layers,
  });
  await writeFile(
    join(layout, "index.json"),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [{ mediaType: OCI_MANIFEST, ...manifest, annotations: { "org.opencontainers.image.ref.name": TAG } }],
    }),
  );
  const blobs = [config, ...layers];
  return { layout, manifest, blobs, bytes: blobs.reduce((total, blob) => total + blob.size, 0) };
}

// ---------------------------------------------------------------------------------------
// Push and pull with skopeo (a private policy, HOME and blob-info cache: bench/lib.mjs createSkopeo).

/** Generous but bounded: 2 minutes plus 1 MB/s. */
const skopeoTimeout = (bytes) => 120_000 + Math.ceil(bytes / 1000);

async function push(tools, host, image, repo) {
  await tools.skopeo(
    [
      "copy",
      "--preserve-digests",
      "--dest-tls-verify=false",
      `oci:${image.layout}:${TAG}`,
      `docker://${host}/${repo}:${TAG}`,
    ],
    skopeoTimeout(image.bytes),
  );
}

let pulls = 0;

/** skopeo copy docker://host/repo:TAG → a fresh oci: dir; checked, then removed. Returns seconds. */
async function pull(tools, host, repo, image) {
  const target = join(tools.dir, `pulled-${++pulls}`);
  const started = performance.now();
  await tools.skopeo(
    ["copy", "--preserve-digests", "--src-tls-verify=false", `docker://${host}/${repo}:${TAG}`, `oci:${target}:${TAG}`],
    skopeoTimeout(image.bytes),
  );
  const seconds = (performance.now() - started) / 1000;
  const index = JSON.parse(await readFile(join(target, "index.json"), "utf8"));
  const found = index.manifests?.filter((d) => d.annotations?.["org.opencontainers.image.ref.name"] === TAG) ?? [];
  if (found.length !== 1 || found[0].digest !== image.manifest.digest) {
    throw new Error(
      `pull of ${host}/${repo}: index.json has ${JSON.stringify(found)}, expected ${image.manifest.digest}`,
    );
  }
  for (const blob of [image.manifest, ...image.blobs]) {
    const got = await hashFile(join(target, "blobs", "sha256", blob.digest.slice("sha256:".length)));
    if (got.digest !== blob.digest || got.size !== blob.size) {
      throw new Error(`pull of ${host}/${repo}: ${blob.digest} is ${got.size} bytes with ${got.digest}`);
    }
  }
  await rm(target, { recursive: true, force: true });
  return seconds;
}

// ---------------------------------------------------------------------------------------
// Server-Timing from the front's access log.

let marks = 0;

/** Sends a marker request and waits until the access log has its line; returns the marker's path. */
async function mark(edge, logFile) {
  const path = `/v2/?bench-mark=${++marks}`;
  expectStatus("marker", await request(`${edge.url}${path}`), 200);
  const deadline = Date.now() + MARKER_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (readLog(logFile).some((entry) => entry.path === path)) return path;
    await delay(20);
  }
  throw new Error(`the access log (${logFile}) has no line for ${path} after ${MARKER_TIMEOUT_MS} ms`);
}

function readLog(logFile) {
  let text;
  try {
    text = readFileSync(logFile, "utf8");
  } catch {
    return [];
  }
  // Only whole lines: the front may be writing the last one.
  return text
    .slice(0, text.lastIndexOf("\n") + 1)
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => JSON.parse(line));
}

/** The access log's entries between two marker lines. */
function entriesBetween(logFile, from, to) {
  const entries = readLog(logFile);
  const start = entries.findIndex((entry) => entry.path === from);
  const end = entries.findIndex((entry) => entry.path === to);
  if (start < 0 || end < start) throw new Error(`markers ${from} / ${to} not found in order in ${logFile}`);
  return entries.slice(start + 1, end);
}

/**
 * Sums of one pull's Server-Timing counts. `requests` leaves out skopeo's `GET /v2/` ping
 * (no storage calls): the front's access log misses it about half the time (skopeo closes
 * that connection before the front has finished writing the answer, and the front logs
 * an answer only once it finished).
 */
function storageCalls(entries) {
  const sums = {
    requests: entries.filter((entry) => entry.path !== "/v2/").length,
    upstream: 0,
    r2: 0,
    r2A: 0,
    kv: 0,
    kvWrites: 0,
    do: 0,
    cacheHits: 0,
  };
  const statuses = {};
  for (const entry of entries) {
    statuses[entry.status] = (statuses[entry.status] ?? 0) + 1;
    const timing = parseTiming(entry.serverTiming);
    sums.upstream += timing.upstream ?? 0;
    sums.r2 += timing.r2 ?? 0;
    sums.r2A += timing["r2-class-a"] ?? 0;
    sums.kv += timing.kv ?? 0;
    sums.kvWrites += timing["kv-write"] ?? 0;
    sums.do += timing.do ?? 0;
    if (timing.cache === "hit") sums.cacheHits++;
  }
  sums.statuses = statuses;
  sums.lines = entries.map((entry) => `${entry.method} ${entry.path} ${entry.status} ${entry.serverTiming ?? ""}`);
  return sums;
}

// ---------------------------------------------------------------------------------------
// Settling: every blob linked under the mirrored name, and workerd idle.

/** Waits until a HEAD of every blob under `repo` is answered without asking the upstream. */
async function waitLinked(edge, repo, image) {
  const started = performance.now();
  const deadline = Date.now() + SETTLE_TIMEOUT_MS;
  const pending = new Set(image.blobs.map((blob) => blob.digest));
  while (pending.size > 0) {
    if (Date.now() > deadline) {
      throw new Error(`${repo}: ${pending.size} blob(s) still not stored ${SETTLE_TIMEOUT_MS} ms after the cold pull`);
    }
    for (const digest of [...pending]) {
      const head = await request(`${edge.url}/v2/${repo}/blobs/${digest}`, { method: "HEAD" });
      expectStatus(`HEAD ${repo}@${digest}`, head, 200);
      if (parseTiming(head.headers["server-timing"]).upstream === undefined) pending.delete(digest);
    }
    if (pending.size > 0) await delay(50);
  }
  return (performance.now() - started) / 1000;
}

/** Waits (at most 5 s) until workerd's CPU time stops moving: background work (waitUntil) done. */
async function waitIdle(edge) {
  const deadline = Date.now() + 5_000;
  let last = treeCpuSeconds(edge.pid, "workerd");
  while (Date.now() < deadline) {
    await delay(200);
    const now = treeCpuSeconds(edge.pid, "workerd");
    if (now - last < 0.015) return;
    last = now;
  }
}

function cpuNow(edge, dist) {
  return {
    workerd: treeCpuSeconds(edge.pid, "workerd"),
    front: treeCpuSeconds(edge.pid, "node"),
    distribution: treeCpuSeconds(dist.pid, "docker-registry"),
  };
}

// ---------------------------------------------------------------------------------------
// Report.

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};
/** Nearest-rank percentile (with fewer than 10 values, p90 is the largest). */
const percentile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
};
/** One value when all runs agree, else min–max. */
const spread = (values) => {
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  return lo === hi ? String(lo) : `${lo}–${hi}`;
};

const machineFacts = () =>
  reportFacts([
    `- ${commandLine("docker-registry", ["--version"]) || "docker-registry ?"}; ${commandLine("skopeo", ["--version"]) || "skopeo ?"}`,
  ]);

// ---------------------------------------------------------------------------------------

const SCENARIOS = [
  { key: "direct", label: "1. direct from distribution" },
  { key: "cold", label: "2. cold via mirror" },
  { key: "warm", label: "3. warm via mirror" },
  { key: "native", label: "4. native (pushed to us)" },
  { key: "alias", label: "5. via mirror, new name, blobs stored" },
];

async function main() {
  const options = parseOptions();
  const facts = machineFacts();
  progress("building build/*.wasm (npm run build:wasm)");
  await run(process.execPath, [join(ROOT, "scripts", "build-wasm.mjs")], { timeoutMs: 60_000 });

  const work = await makeTempDir("mirror");
  const accessLog = join(work, "access.log");
  const servers = [];
  let tools;
  try {
    tools = await createSkopeo();
    if (!tools.isolated) progress("warning: skopeo runs without a private mount namespace (not root?)");

    progress("starting docker/distribution (the upstream)");
    const dist = await startDistribution();
    servers.push(dist);
    const upstreams = JSON.stringify([{ prefix: PREFIX, url: dist.url, tagTtlSeconds: 300 }]);
    progress(`starting edge-registry with UPSTREAMS=${upstreams}`);
    const edge = await startEdgeRegistry({ settings: { UPSTREAMS: upstreams }, accessLog });
    servers.push(edge);
    const distHost = new URL(dist.url).host;
    const edgeHost = new URL(edge.url).host;
    progress(`distribution at ${dist.url} (pid ${dist.pid}), edge-registry at ${edge.url} (pid ${edge.pid})`);

    // Setup: images, pushed (untimed).
    const images = new Map(); // `${kind}/${role}-${i}` → image
    for (const kind of options.kinds) {
      const sizes = layerSizes(Math.round(kind.mib * MiB), kind.layers);
      kind.sizes = sizes;
      for (let i = 1; i <= options.runs; i++) {
        for (const role of ["img", "native"]) {
          progress(`setup: ${kind.name} ${role}-${i} (${sizes.length} layers, ${kind.mib.toFixed(2)} MiB)`);
          const image = await buildImage(join(work, `${kind.name}-${role}-${i}`), sizes);
          if (role === "img") {
            await push(tools, distHost, image, `${kind.name}/img-${i}`);
            await push(tools, distHost, image, `${kind.name}/alias-${i}`);
          } else {
            await push(tools, edgeHost, image, `${kind.name}/native-${i}`);
          }
          await rm(image.layout, { recursive: true, force: true });
          images.set(`${kind.name}/${role}-${i}`, image);
          kind.bytes = image.bytes;
        }
      }
    }
    await waitIdle(edge);

    // The timed pulls.
    const results = []; // { kind, scenario, run, seconds, calls, cpu, settle }
    for (let i = 1; i <= options.runs; i++) {
      for (const kind of options.kinds) {
        const mirrored = images.get(`${kind.name}/img-${i}`);
        const native = images.get(`${kind.name}/native-${i}`);
        const plan = {
          direct: { host: distHost, repo: `${kind.name}/img-${i}`, image: mirrored },
          cold: { host: edgeHost, repo: `${PREFIX}/${kind.name}/img-${i}`, image: mirrored },
          warm: { host: edgeHost, repo: `${PREFIX}/${kind.name}/img-${i}`, image: mirrored },
          native: { host: edgeHost, repo: `${kind.name}/native-${i}`, image: native },
          alias: { host: edgeHost, repo: `${PREFIX}/${kind.name}/alias-${i}`, image: mirrored },
        };
        for (const { key } of SCENARIOS) {
          const { host, repo, image } = plan[key];
          progress(`run ${i}/${options.runs}, ${kind.name}: ${key} (${host}/${repo})`);
          const cpu0 = cpuNow(edge, dist);
          const from = await mark(edge, accessLog);
          const seconds = await pull(tools, host, repo, image);
          const to = await mark(edge, accessLog);
          let settle = null;
          if (key === "cold" || key === "alias") settle = await waitLinked(edge, repo, image);
          await waitIdle(edge);
          const cpu1 = cpuNow(edge, dist);
          const calls = storageCalls(entriesBetween(accessLog, from, to));
          const cpu = Object.fromEntries(Object.keys(cpu0).map((name) => [name, cpu1[name] - cpu0[name]]));
          results.push({ kind: kind.name, scenario: key, run: i, seconds, calls, cpu, settle });
          progress(
            `  ${seconds.toFixed(2)} s, ${calls.requests} requests, upstream ${calls.upstream}, r2 ${calls.r2} (A ${calls.r2A}), ` +
              `kv ${calls.kv} (w ${calls.kvWrites}), do ${calls.do}, cache hits ${calls.cacheHits}, workerd ${cpu.workerd.toFixed(2)} CPU-s` +
              (settle !== null ? `, settled ${settle.toFixed(2)} s after` : ""),
          );
        }
      }
    }

    // ---- the report ----
    const [one, five, fifteen] = loadavg().map((x) => x.toFixed(2));
    const of = (kind, scenario) => results.filter((r) => r.kind === kind && r.scenario === scenario);
    const timeRows = [];
    const callRows = [];
    const cpuRows = [];
    const notes = [];
    for (const kind of options.kinds) {
      const direct = median(of(kind.name, "direct").map((r) => r.seconds));
      for (const { key, label } of SCENARIOS) {
        const rs = of(kind.name, key);
        const seconds = rs.map((r) => r.seconds);
        const med = median(seconds);
        timeRows.push([
          kind.name,
          label,
          med.toFixed(2),
          percentile(seconds, 90).toFixed(2),
          (kind.bytes / MiB / med).toFixed(1),
          key === "direct" ? "1.00" : (med / direct).toFixed(2),
        ]);
        const metered = key !== "direct";
        const c = (pick) => (metered ? spread(rs.map((r) => pick(r.calls))) : "–");
        callRows.push([
          kind.name,
          label,
          metered ? spread(rs.map((r) => r.calls.requests)) : "–",
          c((x) => x.upstream),
          metered ? `${c((x) => x.r2A)} / ${c((x) => x.r2 - x.r2A)}` : "–",
          metered ? `${c((x) => x.kv - x.kvWrites)} / ${c((x) => x.kvWrites)}` : "–",
          c((x) => x.do),
          c((x) => x.cacheHits),
        ]);
        const cpuMedian = (name) => median(rs.map((r) => r.cpu[name])).toFixed(2);
        const settles = rs.map((r) => r.settle).filter((s) => s !== null);
        cpuRows.push([
          kind.name,
          label,
          cpuMedian("workerd"),
          cpuMedian("front"),
          cpuMedian("distribution"),
          settles.length > 0 ? `${median(settles).toFixed(2)} / ${Math.max(...settles).toFixed(2)}` : "",
        ]);
        for (const r of rs) {
          const bad = Object.keys(r.calls.statuses).filter((status) => Number(status) >= 300);
          if (bad.length > 0) {
            notes.push(`- anomaly: ${kind.name} ${key} run ${r.run}: answers ${JSON.stringify(r.calls.statuses)}`);
          }
          if ((key === "warm" || key === "native") && r.calls.upstream > 0) {
            notes.push(
              `- anomaly: ${kind.name} ${key} run ${r.run} made ${r.calls.upstream} upstream request(s):\n  ${r.calls.lines.join("\n  ")}`,
            );
          }
        }
      }
    }
    const example = (kind, scenario) => of(kind, scenario)[0]?.calls.lines ?? [];
    const lines = [
      "### Pull-through mirror: cold and warm pulls through edge-registry vs straight from docker/distribution",
      "",
      ...facts,
      `- load average at end ${one} ${five} ${fifteen}`,
      `- ${options.runs} run(s), distinct images in each; ` +
        options.kinds
          .map(
            (kind) =>
              `${kind.name}: ${(kind.bytes / MiB).toFixed(2)} MiB (${kind.bytes} bytes) in ${kind.sizes.length} layers of ${kind.sizes
                .map((size) => (size / MiB).toFixed(2))
                .join(", ")} MiB + config`,
          )
          .join("; "),
      `- skopeo copy docker://… oci:<fresh dir> (wall time, process start-up included); MiB/s of image bytes at the median`,
      "",
      markdownTable(["image", "pull", "median s", "p90 s", "MiB/s", "÷ direct"], timeRows),
      "",
      "Per pull, summed over its requests' Server-Timing (one value when all runs agree, else min–max; requests without skopeo's `GET /v2/`):",
      "",
      markdownTable(
        ["image", "pull", "requests", "upstream requests", "R2 A / B", "KV reads / writes", "DO", "cache hits"],
        callRows,
      ),
      "",
      "CPU seconds per pull (median; from before the pull until it settled) and, after a pull through the mirror,",
      "the wait until every blob was linked under the mirrored name (median / max):",
      "",
      markdownTable(
        ["image", "pull", "workerd CPU s", "front (node) CPU s", "distribution CPU s", "stored after, s"],
        cpuRows,
      ),
      "",
      "Requests of the first large cold pull (method path status Server-Timing):",
      "",
      "```",
      ...example("large", "cold"),
      "```",
      "",
      "Requests of the first large warm pull:",
      "",
      "```",
      ...example("large", "warm"),
      "```",
      "",
      "Requests of the first large pull under a new name whose blobs are stored:",
      "",
      "```",
      ...example("large", "alias"),
      "```",
      ...(notes.length > 0 ? ["", ...notes] : []),
    ];
    console.log(lines.join("\n"));
  } catch (error) {
    for (const server of servers) process.stderr.write(`${server.logTail(60)}\n`);
    throw error;
  } finally {
    progress("stopping servers");
    await Promise.all(servers.map((server) => server.stop()));
    if (tools) await removeTempDir(tools.dir);
    await removeTempDir(work);
  }
}

main().catch((error) => {
  console.error(`\nbench/mirror.mjs FAILED: ${error.stack ?? error}`);
  process.exitCode = 1;
});
