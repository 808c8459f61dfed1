#!/usr/bin/env node
// Pulls from the edge: what a pull costs and how long it would take far from the bucket,
// for edge-registry (as `npm start` runs it) and docker/distribution side by side on
// 127.0.0.1, one after the other.
//
//   node bench/edge-pull.mjs                      pulls, small-request rates, CPU per GET
//   node bench/edge-pull.mjs --seconds 10 --clients 16
//   node bench/edge-pull.mjs --only edge --before ../old-checkout
//
// 1. Pulls. Each registry gets a 5-layer image (`pull/app:v1`: layers of 0.5, 2, 8, 20 and
//    40 MiB) and a two-platform index (`pull/multi:v1`). Each is pulled twice, cold (right
//    after the push: nothing in the location's cache) and warm, in the order docker
//    pulls: GET /v2/, the manifest by tag with docker's Accept header, the (platform's)
//    manifest by digest, the config, the layers, one request after another. For every
//    request the answer's Server-Timing says what it read (edge-registry only): the table
//    sums, per pull, the requests, R2 operations (class A / class B), KV reads and
//    writes, cache hits, the bytes that came from R2 and from the cache, the local wall
//    time, and a modeled time for a client far from the bucket (below).
// 2. Small requests: --clients clients for --seconds each, per kind: HEAD manifest by tag,
//    GET manifest by digest, HEAD blob; requests per second and storage calls per request.
// 3. CPU per blob GET: workerd's CPU seconds for GETs of a 33.5 MB blob (three R2 read
//    slices) served from R2 (EDGE_CACHE=off), while filling the cache, and from the cache,
//    against a trivial Worker that hands R2's body straight to the response, on the same
//    Miniflare and the same stored object ("direct").
//
// The model (stated, not measured): a client far from the bucket's region and near an
// edge location pays 100 ms per R2 call, 5 ms per KV call and 2 ms per cache call, summed
// per request (calls a request makes in parallel are counted one after another: an upper
// bound), requests one after another, transfer time left out. distribution, a server in
// one region, costs that client 100 ms per request.
//
// --before DIR runs the edge-registry parts once more from another checkout (a worktree of
// an older commit, with `npm run build:wasm` done there); it has no Server-Timing, so its
// rows have times but no storage counts. Talks only to 127.0.0.1; every loop is bounded.
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Miniflare } from "miniflare";
import { expectStatus, MiB, parseTiming, request, startDistribution, startEdgeRegistry } from "./lib.mjs";

const { values } = parseArgs({
  options: {
    only: { type: "string", default: "edge,distribution" },
    seconds: { type: "string", default: "5" },
    clients: { type: "string", default: "8" },
    before: { type: "string" },
  },
});
const ONLY = values.only.split(",");
const SECONDS = Number(values.seconds);
const CLIENTS = Number(values.clients);
const MAX_OPERATIONS = 1_000_000;
const MODEL = { r2: 100, kv: 5, cache: 2, origin: 100 };

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const DOCKER_ACCEPT = [
  "application/vnd.docker.distribution.manifest.v2+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  OCI_MANIFEST,
  OCI_INDEX,
].join(", ");
const LAYER = "application/vnd.oci.image.layer.v1.tar";
const CONFIG = "application/vnd.oci.image.config.v1+json";

const sha256 = (bytes) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
const log = (message) => process.stderr.write(`# ${message}\n`);

async function pushBlob(base, name, bytes) {
  const started = await request(`${base}/v2/${name}/blobs/uploads/`, { method: "POST" });
  expectStatus("start upload", started, 202);
  const location = new URL(started.headers.location, base);
  location.searchParams.set("digest", sha256(bytes));
  const put = await request(location.toString(), {
    method: "PUT",
    headers: { "Content-Length": String(bytes.length), "Content-Type": "application/octet-stream" },
    body: bytes,
    timeoutMs: 300_000,
  });
  expectStatus("push blob", put, 201);
  return { mediaType: LAYER, digest: sha256(bytes), size: bytes.length };
}

async function pushManifest(base, name, reference, manifest, mediaType) {
  const bytes = Buffer.from(JSON.stringify(manifest));
  const put = await request(`${base}/v2/${name}/manifests/${reference}`, {
    method: "PUT",
    headers: { "Content-Type": mediaType },
    body: bytes,
  });
  expectStatus(`push manifest ${name}:${reference}`, put, 201);
  return { mediaType, digest: sha256(bytes), size: bytes.length };
}

async function pushImage(base, name, reference, layerSizes, platform) {
  const config = await pushBlob(base, name, Buffer.from(JSON.stringify({ ...platform, rootfs: { type: "layers" } })));
  const layers = [];
  for (const size of layerSizes) layers.push(await pushBlob(base, name, randomBytes(size)));
  const manifest = { schemaVersion: 2, mediaType: OCI_MANIFEST, config: { ...config, mediaType: CONFIG }, layers };
  return pushManifest(base, name, reference, manifest, OCI_MANIFEST);
}

async function seed(base) {
  const linux = (architecture) => ({ architecture, os: "linux" });
  const sizes = [MiB / 2, 2 * MiB, 8 * MiB, 20 * MiB, 40 * MiB];
  await pushImage(base, "pull/app", "v1", sizes, linux("amd64"));
  const amd64 = await pushImage(base, "pull/multi", "amd64", [MiB, MiB], linux("amd64"));
  const arm64 = await pushImage(base, "pull/multi", "arm64", [MiB, MiB], linux("arm64"));
  const index = {
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [
      { ...amd64, platform: linux("amd64") },
      { ...arm64, platform: { ...linux("arm64"), variant: "v8" } },
    ],
  };
  await pushManifest(base, "pull/multi", "v1", index, OCI_INDEX);
}

/** One request of a pull, measured. */
async function timed(url, options = {}) {
  const started = performance.now();
  let bytes = 0;
  const response = await request(url, {
    ...options,
    onData: options.keep ? undefined : (chunk) => (bytes += chunk.length),
    timeoutMs: 300_000,
  });
  return {
    response,
    ms: performance.now() - started,
    bytes: options.keep ? response.bytes : bytes,
    timing: parseTiming(response.headers["server-timing"]),
    blob: url.includes("/blobs/"),
  };
}

/** A pull of `name:tag` in docker's order; the requests it made. */
async function pull(base, name, tag) {
  const requests = [await timed(`${base}/v2/`)];
  const byTag = await timed(`${base}/v2/${name}/manifests/${tag}`, { headers: { Accept: DOCKER_ACCEPT }, keep: true });
  expectStatus("manifest by tag", byTag.response, 200);
  requests.push(byTag);
  let manifest = JSON.parse(byTag.response.body.toString("utf8"));
  let digest = byTag.response.headers["docker-content-digest"];
  if (manifest.manifests) digest = manifest.manifests.find((entry) => entry.platform.architecture === "amd64").digest;
  const byDigest = await timed(`${base}/v2/${name}/manifests/${digest}`, {
    headers: { Accept: DOCKER_ACCEPT },
    keep: true,
  });
  expectStatus("manifest by digest", byDigest.response, 200);
  requests.push(byDigest);
  manifest = JSON.parse(byDigest.response.body.toString("utf8"));
  for (const blob of [manifest.config, ...manifest.layers]) {
    const got = await timed(`${base}/v2/${name}/blobs/${blob.digest}`);
    expectStatus(`blob ${blob.digest}`, got.response, 200);
    if (got.bytes !== blob.size) throw new Error(`blob ${blob.digest}: ${got.bytes} bytes, expected ${blob.size}`);
    requests.push(got);
  }
  return requests;
}

function summarize(label, registry, kind, requests, metered) {
  const sum = (pick) => requests.reduce((total, entry) => total + pick(entry), 0);
  const r2 = sum((entry) => entry.timing.r2 ?? 0);
  const classA = sum((entry) => entry.timing["r2-class-a"] ?? 0);
  const kvWrites = sum((entry) => entry.timing["kv-write"] ?? 0);
  const kv = sum((entry) => entry.timing.kv ?? 0);
  const hits = requests.filter((entry) => entry.timing.cache === "hit");
  const cacheBytes = sum((entry) => (entry.timing.cache === "hit" ? entry.bytes : 0));
  const r2Bytes = sum((entry) => (entry.timing.cache !== "hit" && (entry.timing.r2 ?? 0) > 0 ? entry.bytes : 0));
  const modeled = metered
    ? sum(
        (entry) =>
          (entry.timing.r2 ?? 0) * MODEL.r2 +
          (entry.timing.kv ?? 0) * MODEL.kv +
          (entry.timing.cache && entry.timing.cache !== "bypass" ? MODEL.cache : 0),
      )
    : requests.length * MODEL.origin;
  const mb = (bytes) => (bytes / 1e6).toFixed(1);
  const dash = (text) => (metered ? text : "–");
  return (
    `| ${registry} | ${label} | ${kind} | ${requests.length} | ${dash(`${classA} / ${r2 - classA}`)} | ${dash(`${kv - kvWrites} / ${kvWrites}`)} | ` +
    `${dash(`${hits.length}`)} | ${dash(mb(r2Bytes))} | ${dash(mb(cacheBytes))} | ${sum((entry) => entry.ms).toFixed(0)} | ${modeled.toFixed(0)} |`
  );
}

async function pulls(server, registry, metered) {
  const rows = [];
  for (const [name, kind] of [
    ["pull/app", "5-layer image"],
    ["pull/multi", "2-platform index"],
  ]) {
    for (const label of ["cold", "warm"]) {
      log(`${registry}: ${label} pull of ${name}`);
      rows.push(summarize(label, registry, kind, await pull(server.url, name, "v1"), metered));
    }
  }
  return rows;
}

/** The TCP ports a process listens on (ss), to reach workerd behind the local front. */
function listeningPorts(pid) {
  const listed = spawnSync("ss", ["-ltnpH"], { encoding: "utf8", timeout: 10_000 }).stdout ?? "";
  return listed
    .split("\n")
    .filter((line) => line.includes(`pid=${pid},`))
    .map((line) => Number(/:(\d+)\s/.exec(line)?.[1]))
    .filter((port) => Number.isInteger(port));
}

/**
 * The small requests a pull starts with, at --clients at once for --seconds each, through
 * the local front (as clients reach `npm start`) and, for edge-registry, at workerd's own
 * port too: the front is a local stand-in for Cloudflare's edge that costs each request a
 * proxy hop on this 2-core machine, and the Worker's own rate is what the figure is about.
 */
async function smallRequests(server, registry, metered) {
  const rows = await smallRequestsAt(server.url, registry, metered);
  const workerd = workerdChildOf(server.pid);
  const port = workerd ? listeningPorts(workerd)[0] : undefined;
  if (port)
    rows.push(...(await smallRequestsAt(`http://127.0.0.1:${port}`, `${registry} (Worker's own port)`, metered)));
  return rows;
}

async function smallRequestsAt(base, registry, metered) {
  const manifest = await request(`${base}/v2/pull/app/manifests/v1`, { headers: { Accept: OCI_MANIFEST } });
  const digest = manifest.headers["docker-content-digest"];
  const config = JSON.parse(manifest.body.toString("utf8")).config.digest;
  const kinds = [
    [
      "HEAD manifest by tag",
      () => request(`${base}/v2/pull/app/manifests/v1`, { method: "HEAD", headers: { Accept: OCI_MANIFEST } }),
    ],
    [
      "GET manifest by digest",
      () => request(`${base}/v2/pull/app/manifests/${digest}`, { headers: { Accept: OCI_MANIFEST } }),
    ],
    ["HEAD blob", () => request(`${base}/v2/pull/app/blobs/${config}`, { method: "HEAD" })],
  ];
  const rows = [];
  for (const [kind, send] of kinds) {
    log(`${registry}: ${kind}`);
    const deadline = performance.now() + SECONDS * 1000;
    let count = 0;
    let operations = 0;
    const totals = { r2: 0, kv: 0 };
    const client = async () => {
      while (performance.now() < deadline && operations++ < MAX_OPERATIONS) {
        const response = await send();
        if (response.status !== 200) throw new Error(`${kind}: ${response.status}`);
        const timing = parseTiming(response.headers["server-timing"]);
        totals.r2 += timing.r2 ?? 0;
        totals.kv += timing.kv ?? 0;
        count++;
      }
    };
    await Promise.all(Array.from({ length: CLIENTS }, client));
    const perRequest = (total) => (metered ? (total / count).toFixed(2) : "–");
    rows.push({ registry, kind, rate: count / SECONDS, line: `${perRequest(totals.r2)} | ${perRequest(totals.kv)}` });
  }
  return rows;
}

// ---- CPU per blob GET, against a Worker handing R2's body straight to the response ----

const DIRECT_WORKER = `
export default {
  async fetch(request, env) {
    const digest = new URL(request.url).pathname.slice(1);
    const record = await env.BLOBS.get("blobs/" + digest.replace(":", "/"));
    if (!record) return new Response("no such blob", { status: 404 });
    const object = await env.BLOBS.get((await record.json()).key);
    return new Response(object.body);
  },
};`;

function cpuSecondsOf(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** The workerd process whose parent is `parentPid` (Miniflare's child). */
function workerdChildOf(parentPid) {
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const parent = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (name === "workerd" && parent === parentPid) return Number(entry);
    } catch {
      // The process ended meanwhile.
    }
  }
  return null;
}

async function cpuPerGet(settings, label, rounds = 3) {
  const server = await startEdgeRegistry({ settings });
  try {
    const bytes = randomBytes(32 * MiB + 1_234_567);
    const { digest } = await pushBlob(server.url, "cpu/blob", bytes);
    const workerd = workerdChildOf(server.pid);
    const measure = async (url) => {
      const before = cpuSecondsOf(workerd);
      const got = await request(url, { onData: () => undefined, timeoutMs: 120_000 });
      expectStatus("cpu GET", got, 200);
      return { cpu: cpuSecondsOf(workerd) - before, timing: parseTiming(got.headers["server-timing"]) };
    };
    const rows = [];
    const ours = [];
    for (let round = 0; round < rounds; round++) ours.push(await measure(`${server.url}/v2/cpu/blob/blobs/${digest}`));
    rows.push([label, ours]);
    // The same object, handed over by a trivial Worker on the same stored state.
    const direct = new Miniflare({
      modules: true,
      script: DIRECT_WORKER,
      r2Buckets: { BLOBS: "edge-registry-blobs" },
      r2Persist: join(server.dir, "state", "v3", "r2"),
      host: "127.0.0.1",
      port: 0,
    });
    const url = await direct.ready;
    const directPid = workerdChildOf(process.pid);
    const handed = [];
    for (let round = 0; round < rounds; round++) {
      const before = cpuSecondsOf(directPid);
      const got = await request(`${url.origin}/${digest}`, { onData: () => undefined, timeoutMs: 120_000 });
      expectStatus("direct GET", got, 200);
      handed.push({ cpu: cpuSecondsOf(directPid) - before, timing: {} });
    }
    await direct.dispose();
    rows.push(["direct hand-off (same object)", handed]);
    return rows;
  } finally {
    await server.stop();
  }
}

// ---- run ----

const pullRows = [];
const rateRows = [];
async function measureRegistry(registry, start, metered) {
  log(`${registry}: starting`);
  const server = await start();
  try {
    log(`${registry}: seeding`);
    await seed(server.url);
    pullRows.push(...(await pulls(server, registry, metered)));
    rateRows.push(...(await smallRequests(server, registry, metered)));
  } finally {
    await server.stop();
  }
}

if (ONLY.includes("edge")) await measureRegistry("edge-registry", () => startEdgeRegistry(), true);
if (values.before)
  await measureRegistry("edge-registry (before)", () => startEdgeRegistry({ root: values.before }), false);
if (ONLY.includes("distribution")) await measureRegistry("distribution", () => startDistribution(), false);
const cpuRows = [];
if (ONLY.includes("edge")) {
  log("CPU per GET: from R2");
  cpuRows.push(...(await cpuPerGet({ EDGE_CACHE: "off" }, "edge-registry from R2 (EDGE_CACHE=off)")));
  log("CPU per GET: filling the cache, then from it");
  const cached = await cpuPerGet({}, "edge-registry, cache on (1st: fill, then hits)");
  cpuRows.push(cached[0]);
}

console.log(
  `### Pulls (model: ${MODEL.r2} ms per R2 call, ${MODEL.kv} ms per KV call, ${MODEL.cache} ms per cache call; distribution ${MODEL.origin} ms per request)\n`,
);
console.log(
  "| registry | pull | image | requests | R2 ops A / B | KV reads / writes | cache hits | MB from R2 | MB from cache | local ms | modeled far ms |",
);
console.log("|---|---|---|---|---|---|---|---|---|---|---|");
for (const row of pullRows) console.log(row);
console.log(`\n### Small requests (${CLIENTS} clients, ${SECONDS} s each)\n`);
console.log("| registry | request | per second | R2 calls / request | KV calls / request |");
console.log("|---|---|---|---|---|");
for (const row of rateRows) console.log(`| ${row.registry} | ${row.kind} | ${row.rate.toFixed(0)} | ${row.line} |`);
console.log("");
for (const kind of new Set(rateRows.map((row) => row.kind))) {
  const rate = (registry) => rateRows.find((row) => row.kind === kind && row.registry === registry)?.rate;
  const pairs = [
    ["edge-registry", "edge-registry (before)"],
    ["edge-registry (Worker's own port)", "edge-registry (before) (Worker's own port)"],
    ["edge-registry", "distribution"],
    ["edge-registry (Worker's own port)", "distribution"],
  ]
    .filter(([ours, theirs]) => rate(ours) && rate(theirs))
    .map(([ours, theirs]) => `${ours} / ${theirs} = ${(rate(ours) / rate(theirs)).toFixed(2)}`);
  if (pairs.length > 0) console.log(`- ${kind}: ${pairs.join("; ")}`);
}
if (cpuRows.length > 0) {
  console.log("\n### workerd CPU seconds per GET of a 33.5 MB blob (three 16 MiB R2 read slices)\n");
  console.log("| server | GETs (CPU s each) | Server-Timing of the last |");
  console.log("|---|---|---|");
  for (const [label, rounds] of cpuRows) {
    console.log(
      `| ${label} | ${rounds.map((round) => round.cpu.toFixed(2)).join(", ")} | ${JSON.stringify(rounds.at(-1)?.timing ?? {})} |`,
    );
  }
}
