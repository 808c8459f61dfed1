#!/usr/bin/env node
// Manifest floods: what one manifest push listing many descriptors costs, and what it does
// to pulls running at the same time, on edge-registry (as `npm start` runs it) and on
// docker/distribution, side by side on 127.0.0.1, one after the other.
//
//   node bench/manifest-flood.mjs                 5 s per phase, 4 pulling clients
//   node bench/manifest-flood.mjs --seconds 10 --clients 8 --only edge
//
// Per registry: seeds one image (config + 256 KiB layer) and 1000 distinct 1 KiB blobs,
// then runs phases of --seconds each. In every phase --clients clients pull in a loop
// (GET manifest by tag, then GET the layer); in all but the first, one more client PUTs
// a manifest in a loop:
//   quiet          nobody pushes (the pulls' usual latency)
//   repeat-2000    a manifest listing the one layer 2000 times (the issue's attack; over
//                  edge-registry's default MANIFEST_MAX_REFERENCES of 1000)
//   repeat-1000    the one layer 1000 times (at the limit: accepted)
//   distinct-1000  1000 distinct layers (accepted; 1000 distinct reference checks)
// Reports per phase: the PUT's answers, count and latency; the pulls' count, p50, p99
// and max latency, the ratio of the pulls' p99 to the quiet phase's, and any request
// that failed outright (a reset connection).
// Talks only to 127.0.0.1; every loop ends at its phase's deadline or an operation cap.
import { createHash, randomBytes } from "node:crypto";
import { startDistribution, startEdgeRegistry } from "./lib.mjs";

const args = process.argv.slice(2);
function option(name, fallback) {
  const index = args.indexOf(name);
  return index >= 0 && args[index + 1] !== undefined ? args[index + 1] : fallback;
}
const SECONDS = Number(option("--seconds", "5"));
const CLIENTS = Number(option("--clients", "4"));
const ONLY = option("--only", "edge,distribution").split(",");
const MAX_OPERATIONS = 1_000_000;
const DISTINCT = 1000;
const NAME = "flood/app";
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar";

const sha256 = (bytes) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
const log = (message) => process.stderr.write(`# ${message}\n`);

async function pushBlob(base, bytes) {
  const started = await fetch(`${base}/v2/${NAME}/blobs/uploads/`, { method: "POST" });
  if (started.status !== 202) throw new Error(`start upload: ${started.status}`);
  await started.arrayBuffer();
  const location = new URL(started.headers.get("location"), base);
  location.searchParams.set("digest", sha256(bytes));
  const response = await fetch(location, { method: "PUT", body: bytes });
  if (response.status !== 201) throw new Error(`push blob: ${response.status} ${await response.text()}`);
  await response.arrayBuffer();
  return { mediaType: LAYER_TYPE, digest: sha256(bytes), size: bytes.length };
}

function manifestOf(config, layers) {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { ...config, mediaType: "application/vnd.oci.image.config.v1+json" },
      layers,
    }),
  );
}

async function putManifest(base, tag, bytes) {
  const started = performance.now();
  const response = await fetch(`${base}/v2/${NAME}/manifests/${tag}`, {
    method: "PUT",
    headers: { "Content-Type": OCI_MANIFEST },
    body: bytes,
  });
  await response.arrayBuffer();
  return { status: response.status, ms: performance.now() - started };
}

async function seed(base) {
  const config = await pushBlob(base, Buffer.from(JSON.stringify({ architecture: "amd64", os: "linux" })));
  const layer = await pushBlob(base, randomBytes(256 * 1024));
  const distinct = [];
  for (let index = 0; index < DISTINCT; index++) distinct.push(await pushBlob(base, randomBytes(1024)));
  const put = await putManifest(base, "latest", manifestOf(config, [layer]));
  if (put.status !== 201) throw new Error(`seed manifest: ${put.status}`);
  return {
    layer,
    floods: {
      "repeat-2000": manifestOf(config, Array(2000).fill(layer)),
      "repeat-1000": manifestOf(config, Array(999).fill(layer)),
      "distinct-1000": manifestOf(config, distinct.slice(0, 999)),
    },
  };
}

async function pullOnce(base, layer) {
  const started = performance.now();
  const manifest = await fetch(`${base}/v2/${NAME}/manifests/latest`, { headers: { Accept: OCI_MANIFEST } });
  if (manifest.status !== 200) throw new Error(`pull manifest: ${manifest.status}`);
  await manifest.arrayBuffer();
  const blob = await fetch(`${base}/v2/${NAME}/blobs/${layer.digest}`);
  if (blob.status !== 200) throw new Error(`pull layer: ${blob.status}`);
  const bytes = Buffer.from(await blob.arrayBuffer());
  if (sha256(bytes) !== layer.digest) throw new Error("pulled layer does not match its digest");
  return performance.now() - started;
}

function percentile(sorted, fraction) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))];
}

async function phase(base, layer, flood) {
  const deadline = performance.now() + SECONDS * 1000;
  const pulls = [];
  const puts = [];
  const statuses = new Map();
  let operations = 0;
  const errors = [];
  const puller = async () => {
    while (performance.now() < deadline && operations++ < MAX_OPERATIONS) {
      try {
        pulls.push(await pullOnce(base, layer));
      } catch (error) {
        errors.push(`pull: ${error.cause?.message ?? error.message}`);
      }
    }
  };
  const pusher = async () => {
    let sequence = 0;
    while (flood && performance.now() < deadline && operations++ < MAX_OPERATIONS) {
      try {
        const { status, ms } = await putManifest(base, `flood-${sequence++}`, flood);
        puts.push(ms);
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
      } catch (error) {
        errors.push(`PUT: ${error.cause?.message ?? error.message}`);
      }
    }
  };
  await Promise.all([...Array.from({ length: CLIENTS }, puller), pusher()]);
  pulls.sort((a, b) => a - b);
  puts.sort((a, b) => a - b);
  return { pulls, puts, statuses, errors };
}

const fmt = (ms) => (Number.isNaN(ms) ? "–" : ms >= 100 ? ms.toFixed(0) : ms.toFixed(1));

async function measure(label, start) {
  log(`${label}: starting`);
  const server = await start();
  try {
    const base = server.url;
    log(`${label}: seeding ${DISTINCT} blobs`);
    const { layer, floods } = await seed(base);
    const rows = [];
    let quietP99 = NaN;
    for (const [name, flood] of [["quiet", null], ...Object.entries(floods)]) {
      log(`${label}: ${name}`);
      const { pulls, puts, statuses, errors } = await phase(base, layer, flood);
      const failed = new Map();
      for (const error of errors) failed.set(error, (failed.get(error) ?? 0) + 1);
      const p99 = percentile(pulls, 0.99);
      if (name === "quiet") quietP99 = p99;
      rows.push(
        `| ${label} | ${name} | ${flood ? `${(flood.length / 1024).toFixed(0)} KB` : "–"} | ` +
          `${[...statuses].map(([status, count]) => `${count}× ${status}`).join(", ") || "–"} | ` +
          `${fmt(percentile(puts, 0.5))} | ${fmt(puts.at(-1) ?? NaN)} | ${pulls.length} | ${fmt(percentile(pulls, 0.5))} | ` +
          `${fmt(p99)} | ${fmt(pulls.at(-1) ?? NaN)} | ${(p99 / quietP99).toFixed(2)} | ` +
          `${[...failed].map(([error, count]) => `${count}× ${error}`).join("; ") || "0"} |`,
      );
    }
    return rows;
  } finally {
    await server.stop();
  }
}

const rows = [];
if (ONLY.includes("edge")) rows.push(...(await measure("edge-registry", startEdgeRegistry)));
if (ONLY.includes("distribution")) rows.push(...(await measure("distribution", startDistribution)));
console.log(`Manifest floods: ${SECONDS} s per phase, ${CLIENTS} pulling clients, one pushing client.\n`);
console.log(
  "| registry | phase | manifest | PUT answers | PUT p50 ms | PUT max ms | pulls | pull p50 ms | pull p99 ms | pull max ms | p99 / quiet | errors |",
);
console.log("|---|---|---|---|---|---|---|---|---|---|---|---|");
for (const row of rows) console.log(row);
