#!/usr/bin/env node
// Load: many concurrent clients for a fixed time against edge-registry (as `npm start`
// runs it) and docker/distribution, side by side on 127.0.0.1, one after the other.
//
//   node bench/load.mjs                       30 s per registry, 16 clients
//   node bench/load.mjs --seconds 60 --clients 32
//   node bench/load.mjs --only edge           one registry
//
// Each client loops until the deadline, picking an operation by weight:
//   HEAD manifest by tag 35%, GET manifest by tag 20%, GET tags/list 10%,
//   GET a 256 KiB layer 20% (a "pull"), and a push 15% (POST, PUT ?digest= with a fresh
//   64 KiB blob, then PUT a manifest referencing it under a fresh tag).
// Every answer is checked (status, Docker-Content-Digest, the bytes' sha256 for GETs);
// anything else counts as an error (the expected count is 0). Prints, per registry and
// operation: operations, errors, throughput, p50 and p99 latency, and the ratios.
// Talks only to 127.0.0.1; every loop ends at the deadline or an operation cap.
import { createHash, randomBytes } from "node:crypto";
import { RssSampler, startDistribution, startEdgeRegistry } from "./lib.mjs";

const args = process.argv.slice(2);
function option(name, fallback) {
  const index = args.indexOf(name);
  return index >= 0 && args[index + 1] !== undefined ? args[index + 1] : fallback;
}
const SECONDS = Number(option("--seconds", "30"));
const CLIENTS = Number(option("--clients", "16"));
const ONLY = option("--only", "edge,distribution").split(",");
/** A hard cap on operations per run, whatever the speed (bounded loops). */
const MAX_OPERATIONS = 2_000_000;
const REPOSITORIES = 4;
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";

const sha256 = (bytes) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
const log = (message) => process.stderr.write(`# ${message}\n`);

class Failure extends Error {}

async function expect(response, status, what) {
  if (response.status !== status) {
    const text = await response.text().catch(() => "");
    throw new Failure(`${what}: expected ${status}, got ${response.status} ${text.slice(0, 200)}`);
  }
}

/** POST then PUT ?digest= with the body: the monolithic upload both registries take (distribution 2.8 ignores a POST body). */
async function pushBlob(base, name, bytes) {
  const started = await fetch(`${base}/v2/${name}/blobs/uploads/`, { method: "POST" });
  await expect(started, 202, "start upload");
  await started.arrayBuffer();
  const location = new URL(started.headers.get("location"), base);
  location.searchParams.set("digest", sha256(bytes));
  const response = await fetch(location, {
    method: "PUT",
    headers: { "Content-Type": "application/octet-stream" },
    body: bytes,
  });
  await expect(response, 201, "push blob");
  await response.arrayBuffer();
  return sha256(bytes);
}

async function pushManifest(base, name, tag, config, layers) {
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: sha256(config), size: config.length },
      layers: layers.map((layer) => ({
        mediaType: "application/vnd.oci.image.layer.v1.tar",
        digest: sha256(layer),
        size: layer.length,
      })),
    }),
  );
  const response = await fetch(`${base}/v2/${name}/manifests/${tag}`, {
    method: "PUT",
    headers: { "Content-Type": OCI_MANIFEST },
    body: manifest,
  });
  await expect(response, 201, "push manifest");
  await response.arrayBuffer();
  return { digest: sha256(manifest), bytes: manifest };
}

/** What every registry holds before the clock starts: REPOSITORIES images of 3 blobs. */
async function seed(base) {
  const images = [];
  for (let index = 0; index < REPOSITORIES; index++) {
    const name = `load/app-${index}`;
    const config = Buffer.from(JSON.stringify({ architecture: "amd64", os: "linux", index }));
    const layer = randomBytes(256 * 1024);
    const big = randomBytes(1024 * 1024);
    for (const blob of [config, layer, big]) await pushBlob(base, name, blob);
    const manifest = await pushManifest(base, name, "latest", config, [layer, big]);
    images.push({ name, config, layer, layerDigest: sha256(layer), manifest });
  }
  return images;
}

const OPERATIONS = [
  { name: "HEAD manifest", weight: 35 },
  { name: "GET manifest", weight: 20 },
  { name: "GET tags/list", weight: 10 },
  { name: "GET blob 256 KiB", weight: 20 },
  { name: "push (blob + manifest)", weight: 15 },
];
const TOTAL_WEIGHT = OPERATIONS.reduce((sum, operation) => sum + operation.weight, 0);

function pick(random) {
  let value = random * TOTAL_WEIGHT;
  for (const operation of OPERATIONS) {
    value -= operation.weight;
    if (value < 0) return operation.name;
  }
  return OPERATIONS[0].name;
}

async function runOperation(base, images, name, client, sequence) {
  const image = images[(client + sequence) % images.length];
  const accept = { Accept: OCI_MANIFEST };
  switch (name) {
    case "HEAD manifest": {
      const response = await fetch(`${base}/v2/${image.name}/manifests/latest`, { method: "HEAD", headers: accept });
      await expect(response, 200, name);
      if (response.headers.get("docker-content-digest") !== image.manifest.digest) throw new Failure(`${name}: digest`);
      return;
    }
    case "GET manifest": {
      const response = await fetch(`${base}/v2/${image.name}/manifests/latest`, { headers: accept });
      await expect(response, 200, name);
      if (sha256(Buffer.from(await response.arrayBuffer())) !== image.manifest.digest)
        throw new Failure(`${name}: bytes`);
      return;
    }
    case "GET tags/list": {
      const response = await fetch(`${base}/v2/${image.name}/tags/list?n=100`);
      await expect(response, 200, name);
      const body = await response.json();
      if (!body.tags.includes("latest")) throw new Failure(`${name}: latest missing`);
      return;
    }
    case "GET blob 256 KiB": {
      const response = await fetch(`${base}/v2/${image.name}/blobs/${image.layerDigest}`);
      await expect(response, 200, name);
      if (sha256(Buffer.from(await response.arrayBuffer())) !== image.layerDigest) throw new Failure(`${name}: bytes`);
      return;
    }
    default: {
      const blob = randomBytes(64 * 1024);
      await pushBlob(base, image.name, blob);
      // Tags sort after "latest", so the first page of tags/list always holds it.
      await pushManifest(base, image.name, `pushed-${client}-${sequence}`, image.config, [image.layer, blob]);
    }
  }
}

function percentile(sorted, fraction) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))];
}

async function load(server) {
  log(`${server.name}: seeding`);
  const images = await seed(server.url);
  const stats = new Map(OPERATIONS.map((operation) => [operation.name, { latencies: [], errors: 0, firstError: "" }]));
  const sampler = new RssSampler(server.pid);
  let operations = 0;
  log(`${server.name}: ${CLIENTS} clients for ${SECONDS} s`);
  sampler.start();
  const started = performance.now();
  const deadline = started + SECONDS * 1000;
  await Promise.all(
    Array.from({ length: CLIENTS }, async (_, client) => {
      for (let sequence = 0; performance.now() < deadline && operations < MAX_OPERATIONS; sequence++) {
        operations++;
        const name = pick(Math.random());
        const entry = stats.get(name);
        const begin = performance.now();
        try {
          await runOperation(server.url, images, name, client, sequence);
          entry.latencies.push(performance.now() - begin);
        } catch (error) {
          entry.errors++;
          entry.firstError ||= String(error.message ?? error);
        }
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  const resources = sampler.stop();
  const rows = [...stats].map(([name, entry]) => {
    const sorted = entry.latencies.sort((a, b) => a - b);
    return {
      name,
      count: sorted.length,
      errors: entry.errors,
      firstError: entry.firstError,
      perSecond: sorted.length / elapsed,
      p50: percentile(sorted, 0.5),
      p99: percentile(sorted, 0.99),
    };
  });
  const all = rows.reduce((sum, row) => sum + row.count, 0);
  return { elapsed, rows, total: all / elapsed, errors: rows.reduce((sum, row) => sum + row.errors, 0), resources };
}

const results = {};
for (const [key, start] of [
  ["edge", startEdgeRegistry],
  ["distribution", startDistribution],
]) {
  if (!ONLY.includes(key)) continue;
  const server = await start();
  try {
    results[key] = await load(server);
    log(`${server.name}: ${results[key].total.toFixed(0)} ops/s, ${results[key].errors} errors`);
  } finally {
    await server.stop();
  }
}

const fmt = (value, digits = 1) => (Number.isFinite(value) ? value.toFixed(digits) : "–");
console.log(`## Load: ${CLIENTS} clients, ${SECONDS} s per registry\n`);
console.log(
  "| operation | edge ops/s | edge p50 ms | edge p99 ms | edge errors | dist ops/s | dist p50 ms | dist p99 ms | dist errors | throughput ratio (edge/dist) |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
for (const operation of OPERATIONS) {
  const edge = results.edge?.rows.find((row) => row.name === operation.name);
  const dist = results.distribution?.rows.find((row) => row.name === operation.name);
  console.log(
    `| ${operation.name} | ${fmt(edge?.perSecond)} | ${fmt(edge?.p50)} | ${fmt(edge?.p99)} | ${edge?.errors ?? "–"} | ` +
      `${fmt(dist?.perSecond)} | ${fmt(dist?.p50)} | ${fmt(dist?.p99)} | ${dist?.errors ?? "–"} | ` +
      `${edge && dist ? fmt(edge.perSecond / dist.perSecond, 2) : "–"} |`,
  );
}
const mib = (bytes) => (bytes / 2 ** 20).toFixed(0);
for (const [key, result] of Object.entries(results)) {
  console.log(
    `\n${key}: ${fmt(result.total)} ops/s in all, ${result.errors} errors, peak RSS ${mib(result.resources.total)} MiB, ` +
      `CPU ${fmt(result.resources.cpu.total)} s in ${fmt(result.elapsed)} s`,
  );
  for (const row of result.rows) if (row.errors > 0) console.log(`  first ${row.name} error: ${row.firstError}`);
}
const failed = Object.values(results).some((result) => result.errors > 0);
process.exit(failed ? 1 : 0);
