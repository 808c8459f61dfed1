#!/usr/bin/env node
// Upload/download benchmark: edge-registry (as `npm start` runs it) against docker/distribution,
// side by side on 127.0.0.1, on one layer of N MiB of random bytes.
//
//   node bench/uploads.mjs [--size-mib N] [--only NAME[,NAME...]]
//
// NAME: monolithic, streamed, chunked, pull, skopeo. See bench/README.md.
// The report (markdown) goes to stdout; progress to stderr.
import { createHash } from "node:crypto";
import { copyFile, link, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { cpus, loadavg, release, totalmem } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import {
  MiB,
  ROOT,
  RotatedFile,
  RssSampler,
  commandLine,
  cpuModel,
  createSkopeo,
  expectStatus,
  hashFile,
  makeTempDir,
  packageVersion,
  parseCommandLine,
  removeTempDir,
  request,
  run,
  startDistribution,
  startEdgeRegistry,
  startTlsRejectingRelay,
  writeJsonBlob,
  writeRandomFile,
} from "./lib.mjs";

const SCENARIOS = ["monolithic", "streamed", "chunked", "pull", "skopeo"];
const CHUNKS = 64;

function usage() {
  return [
    "usage: node bench/uploads.mjs [--size-mib N] [--only NAME[,NAME...]] [--skopeo-direct]",
    `  --size-mib N   layer size in MiB (default 1024)`,
    `  --only NAMES   run only these scenarios: ${SCENARIOS.join(", ")}`,
    "  --skopeo-direct  point skopeo at the servers' ports, not through the TLS-rejecting relay",
    "                   (scripts/dev.mjs answers TLS handshakes itself, so neither server stalls)",
    "  env BENCH_KEEP_TMP=1 keeps the temp dirs (server state, logs, layouts)",
  ].join("\n");
}

function parseOptions() {
  const values = parseCommandLine(
    {
      "size-mib": { type: "string", default: "1024" },
      only: { type: "string" },
      "skopeo-direct": { type: "boolean", default: false },
    },
    usage,
  );
  const sizeMiB = Number(values["size-mib"]);
  if (!Number.isInteger(sizeMiB) || sizeMiB < 1 || sizeMiB > 64 * 1024) {
    console.error(`--size-mib must be an integer from 1 to 65536\n${usage()}`);
    process.exit(2);
  }
  const only = values.only ? values.only.split(",").map((s) => s.trim()) : SCENARIOS;
  for (const name of only) {
    if (!SCENARIOS.includes(name)) {
      console.error(`unknown scenario ${JSON.stringify(name)}\n${usage()}`);
      process.exit(2);
    }
  }
  return { sizeMiB, size: sizeMiB * MiB, only: new Set(only), skopeoDirect: values["skopeo-direct"] };
}

const progress = (message) => console.error(`# ${message}`);

// ---------------------------------------------------------------------------------------
// Machine facts.

function machineFacts(sizeMiB) {
  const [one, five, fifteen] = loadavg().map((x) => x.toFixed(2));
  return [
    `- date: ${new Date().toISOString()}`,
    `- nproc: ${commandLine("nproc", []) || cpus().length}`,
    `- CPU: ${cpuModel() || cpus()[0]?.model || "?"}`,
    `- memory: ${(totalmem() / 2 ** 30).toFixed(1)} GiB, kernel ${release()}, load average at start ${one} ${five} ${fifteen}`,
    `- node ${process.versions.node}, wrangler ${packageVersion("wrangler")}, workerd ${packageVersion("@cloudflare/workerd-linux-64")}`,
    `- ${commandLine("docker-registry", ["--version"]) || "docker-registry ?"}; ${commandLine("skopeo", ["--version"]) || "skopeo ?"}`,
    `- layer: ${sizeMiB} MiB (${sizeMiB * MiB} bytes) of random bytes; MB/s = 10^6 bytes/s`,
  ];
}

// ---------------------------------------------------------------------------------------
// Raw API helpers.

function requestTimeout(size) {
  // Generous but bounded: 2 minutes plus 2 MB/s.
  return 120_000 + Math.ceil(size / 2000);
}

function absolute(server, location, what) {
  if (!location) throw new Error(`${server.name} ${what}: no Location header`);
  const url = new URL(location, server.url);
  if (url.host !== new URL(server.url).host)
    throw new Error(`${server.name} ${what}: Location ${location} is not this server`);
  return url.toString();
}

function withDigest(location, digest) {
  return `${location}${location.includes("?") ? "&" : "?"}digest=${encodeURIComponent(digest)}`;
}

async function startUpload(server, repo) {
  const what = `POST /v2/${repo}/blobs/uploads/`;
  const response = await request(`${server.url}/v2/${repo}/blobs/uploads/`, {
    method: "POST",
    headers: { "Content-Length": "0" },
  });
  expectStatus(`${server.name} ${what}`, response, 202);
  return absolute(server, response.headers.location, what);
}

function expectRange(server, what, response, offset) {
  const expected = `0-${offset - 1}`;
  if (response.headers.range !== expected) {
    throw new Error(`${server.name} ${what}: Range ${JSON.stringify(response.headers.range)}, expected ${expected}`);
  }
}

async function commitUpload(server, location, blob, { body, headers = {} } = {}) {
  const what = `PUT <upload>?digest=${blob.digest}`;
  const response = await request(withDigest(location, blob.digest), {
    method: "PUT",
    headers: body === undefined ? { "Content-Length": "0", ...headers } : headers,
    body,
    timeoutMs: requestTimeout(blob.size),
  });
  expectStatus(`${server.name} ${what}`, response, 201);
  if (response.headers["docker-content-digest"] !== blob.digest) {
    throw new Error(
      `${server.name} ${what}: Docker-Content-Digest ${response.headers["docker-content-digest"]}, expected ${blob.digest}`,
    );
  }
}

/** HEAD the blob in `repo`: it must exist with the right size and digest. */
async function verifyBlob(server, repo, blob) {
  const what = `HEAD /v2/${repo}/blobs/${blob.digest}`;
  const response = await request(`${server.url}/v2/${repo}/blobs/${blob.digest}`, { method: "HEAD" });
  expectStatus(`${server.name} ${what}`, response, 200);
  if (Number(response.headers["content-length"]) !== blob.size) {
    throw new Error(
      `${server.name} ${what}: Content-Length ${response.headers["content-length"]}, expected ${blob.size}`,
    );
  }
  const digest = response.headers["docker-content-digest"];
  if (digest !== undefined && digest !== blob.digest) {
    throw new Error(`${server.name} ${what}: Docker-Content-Digest ${digest}, expected ${blob.digest}`);
  }
}

/** Deterministic pseudo-random chunk sizes (mulberry32, fixed seed) that sum to `size`. */
function chunkSizes(size, count, seed = 0x5eed1234) {
  let state = seed >>> 0;
  const random = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const weights = Array.from({ length: count }, () => 0.2 + 1.6 * random());
  const total = weights.reduce((a, b) => a + b, 0);
  const sizes = weights.slice(0, -1).map((w) => Math.max(1, Math.floor((size * w) / total)));
  sizes.push(size - sizes.reduce((a, b) => a + b, 0));
  if (sizes.some((n) => n < 1) || sizes.reduce((a, b) => a + b, 0) !== size) {
    throw new Error(`cannot cut ${size} bytes into ${count} chunks`);
  }
  return sizes;
}

// ---------------------------------------------------------------------------------------
// Scenarios. Each returns { seconds, commitSeconds? } for one server.

async function pushMonolithic(server, repo, blob) {
  const t0 = performance.now();
  const location = await startUpload(server, repo);
  await commitUpload(server, location, blob, {
    body: blob.read(),
    headers: { "Content-Type": "application/octet-stream", "Content-Length": String(blob.size) },
  });
  const seconds = (performance.now() - t0) / 1000;
  await verifyBlob(server, repo, blob);
  return { seconds };
}

async function pushStreamed(server, repo, blob) {
  const t0 = performance.now();
  let location = await startUpload(server, repo);
  const what = "PATCH <upload> (Transfer-Encoding: chunked)";
  // No Content-Length: node:http sends the body with Transfer-Encoding: chunked.
  const response = await request(location, {
    method: "PATCH",
    headers: { "Content-Type": "application/octet-stream" },
    body: blob.read(),
    timeoutMs: requestTimeout(blob.size),
  });
  expectStatus(`${server.name} ${what}`, response, 202);
  expectRange(server, what, response, blob.size);
  location = absolute(server, response.headers.location, what);
  const t1 = performance.now();
  await commitUpload(server, location, blob);
  const t2 = performance.now();
  await verifyBlob(server, repo, blob);
  return { seconds: (t2 - t0) / 1000, commitSeconds: (t2 - t1) / 1000 };
}

async function pushChunked(server, repo, blob) {
  const sizes = chunkSizes(blob.size, CHUNKS);
  const t0 = performance.now();
  let location = await startUpload(server, repo);
  let offset = 0;
  for (const [i, n] of sizes.entries()) {
    const what = `PATCH <upload> chunk ${i + 1}/${sizes.length} (${offset}-${offset + n - 1})`;
    const response = await request(location, {
      method: "PATCH",
      headers: {
        "Content-Type": "application/octet-stream",
        "Content-Range": `${offset}-${offset + n - 1}`,
        "Content-Length": String(n),
      },
      body: blob.read(offset, offset + n),
      timeoutMs: requestTimeout(n),
    });
    expectStatus(`${server.name} ${what}`, response, 202);
    offset += n;
    expectRange(server, what, response, offset);
    location = absolute(server, response.headers.location, what);
  }
  const t1 = performance.now();
  await commitUpload(server, location, blob);
  const t2 = performance.now();
  await verifyBlob(server, repo, blob);
  return { seconds: (t2 - t0) / 1000, commitSeconds: (t2 - t1) / 1000 };
}

async function pullRaw(server, repo, blob) {
  const what = `GET /v2/${repo}/blobs/${blob.digest}`;
  const hash = createHash("sha256");
  const t0 = performance.now();
  const response = await request(`${server.url}/v2/${repo}/blobs/${blob.digest}`, {
    onData: (chunk) => hash.update(chunk),
    timeoutMs: requestTimeout(blob.size),
  });
  const seconds = (performance.now() - t0) / 1000;
  expectStatus(`${server.name} ${what}`, response, 200);
  const digest = `sha256:${hash.digest("hex")}`;
  if (response.bytes !== blob.size || digest !== blob.digest) {
    throw new Error(
      `${server.name} ${what}: got ${response.bytes} bytes with ${digest}, expected ${blob.size} bytes with ${blob.digest}`,
    );
  }
  return { seconds };
}

// ---------------------------------------------------------------------------------------
// skopeo: a hand-written OCI layout; a private policy, HOME and blob-info cache
// (bench/lib.mjs createSkopeo).

/** An OCI layout with one image (one uncompressed layer: the layer file), tagged `tag`. */
async function buildLayout(dir, layer, tag) {
  const layout = join(dir, "layout");
  await mkdir(join(layout, "blobs", "sha256"), { recursive: true });
  await writeFile(join(layout, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  const layerPath = join(layout, "blobs", "sha256", layer.digest.slice("sha256:".length));
  try {
    await link(layer.path, layerPath);
  } catch {
    await copyFile(layer.path, layerPath);
  }
  const config = await writeJsonBlob(layout, {
    architecture: "amd64",
    os: "linux",
    config: {},
    rootfs: { type: "layers", diff_ids: [layer.digest] },
  });
  const manifest = await writeJsonBlob(layout, {
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
    layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", digest: layer.digest, size: layer.size }],
  });
  await writeFile(
    join(layout, "index.json"),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [
        {
          mediaType: "application/vnd.oci.image.manifest.v1+json",
          ...manifest,
          annotations: { "org.opencontainers.image.ref.name": tag },
        },
      ],
    }),
  );
  return { layout, manifest };
}

async function skopeoPush(tools, server, host, image, tag, timeoutMs) {
  const ref = `docker://${host}/${image.repo}:${tag}`;
  const t0 = performance.now();
  await tools.skopeo(
    ["copy", "--preserve-digests", "--dest-tls-verify=false", `oci:${image.layout}:${tag}`, ref],
    timeoutMs,
  );
  const seconds = (performance.now() - t0) / 1000;
  // What was pushed: the manifest (by tag, with an OCI Accept) and the layer.
  const what = `GET /v2/${image.repo}/manifests/${tag}`;
  const response = await request(`${server.url}/v2/${image.repo}/manifests/${tag}`, {
    headers: { Accept: "application/vnd.oci.image.manifest.v1+json" },
  });
  expectStatus(`${server.name} ${what}`, response, 200);
  const digest = `sha256:${createHash("sha256").update(response.body).digest("hex")}`;
  if (digest !== image.manifest.digest) {
    throw new Error(`${server.name} ${what}: manifest ${digest}, expected ${image.manifest.digest}`);
  }
  await verifyBlob(server, image.repo, image.layer);
  return { seconds };
}

async function skopeoPull(tools, server, host, image, tag, timeoutMs) {
  const ref = `docker://${host}/${image.repo}:${tag}`;
  const target = join(tools.dir, `pulled-${server.name}`);
  const t0 = performance.now();
  await tools.skopeo(["copy", "--preserve-digests", "--src-tls-verify=false", ref, `oci:${target}:${tag}`], timeoutMs);
  const seconds = (performance.now() - t0) / 1000;
  const index = JSON.parse(await readFile(join(target, "index.json"), "utf8"));
  const found = index.manifests?.filter((d) => d.annotations?.["org.opencontainers.image.ref.name"] === tag) ?? [];
  if (found.length !== 1 || found[0].digest !== image.manifest.digest) {
    throw new Error(
      `${server.name} skopeo pull: index.json has ${JSON.stringify(found)}, expected ${image.manifest.digest}`,
    );
  }
  const pulled = await hashFile(join(target, "blobs", "sha256", image.layer.digest.slice("sha256:".length)));
  if (pulled.digest !== image.layer.digest || pulled.size !== image.layer.size) {
    throw new Error(
      `${server.name} skopeo pull: layer is ${pulled.size} bytes with ${pulled.digest}, expected ${image.layer.digest}`,
    );
  }
  await rm(target, { recursive: true, force: true });
  return { seconds };
}

// ---------------------------------------------------------------------------------------
// Measuring and reporting.

async function measure(server, label, fn) {
  progress(`${label}: ${server.name} ...`);
  const sampler = new RssSampler(server.pid, 100);
  sampler.start();
  let result;
  try {
    result = await fn();
  } catch (error) {
    sampler.stop();
    if (!server.alive()) error.message += `\n${server.name} is no longer running`;
    error.message += `\n${server.logTail()}`;
    throw error;
  }
  const rss = sampler.stop();
  if (!server.alive()) throw new Error(`${server.name} died during ${label}\n${server.logTail()}`);
  progress(
    `${label}: ${server.name} ${result.seconds.toFixed(2)} s` +
      (result.commitSeconds !== undefined ? ` (commit ${result.commitSeconds.toFixed(2)} s)` : "") +
      `, peak RSS ${mib(rss.total)} MiB`,
  );
  return { ...result, rss };
}

const mib = (bytes) => (bytes / MiB).toFixed(0);

function rssCell(server, rss) {
  if (!rss) return "";
  if (server === "edge") return `${mib(rss.byKind.workerd ?? 0)} / ${mib(rss.total)}`;
  return mib(rss.total);
}

function markdownTable(header, lines) {
  const all = [header, ...lines];
  const widths = header.map((_, i) => Math.max(...all.map((l) => String(l[i]).length)));
  const format = (cells) => `| ${cells.map((c, i) => String(c).padEnd(widths[i])).join(" | ")} |`;
  return [format(header), `| ${widths.map((w) => "-".repeat(w)).join(" | ")} |`, ...lines.map(format)].join("\n");
}

function timeTable(rows, size) {
  const header = [
    "scenario",
    "edge-registry s",
    "edge MB/s",
    "distribution s",
    "distribution MB/s",
    "ratio (dist/edge)",
    "edge peak RSS MiB (workerd / all)",
    "distribution peak RSS MiB",
  ];
  const lines = rows.map((row) => {
    const rate = (s) => (row.throughput ? (size / 1e6 / s).toFixed(1) : "–");
    return [
      row.label,
      row.edge.toFixed(2),
      rate(row.edge),
      row.dist.toFixed(2),
      rate(row.dist),
      (row.dist / row.edge).toFixed(2),
      rssCell("edge", row.edgeRss),
      rssCell("dist", row.distRss),
    ];
  });
  return markdownTable(header, lines);
}

function cpuTable(rows) {
  const header = ["scenario", "edge-registry CPU s (workerd / all)", "distribution CPU s"];
  const lines = rows
    .filter((row) => row.edgeRss && row.distRss)
    .map((row) => [
      row.label,
      `${(row.edgeRss.cpu.byKind.workerd ?? 0).toFixed(2)} / ${row.edgeRss.cpu.total.toFixed(2)}`,
      row.distRss.cpu.total.toFixed(2),
    ]);
  return markdownTable(header, lines);
}

// ---------------------------------------------------------------------------------------

async function main() {
  const options = parseOptions();
  const { size, sizeMiB, only } = options;
  const facts = machineFacts(sizeMiB);

  progress("building build/*.wasm (npm run build:wasm)");
  await run(process.execPath, [join(ROOT, "scripts", "build-wasm.mjs")], { timeoutMs: 60_000 });

  const work = await makeTempDir("work");
  const layerFile = join(work, "layer.bin");
  progress(`writing ${sizeMiB} MiB of random bytes to ${layerFile}`);
  await writeRandomFile(layerFile, size);

  // One distinct blob per push scenario (rotations of the one file), so no registry can
  // skip work because it already holds the digest; skopeo pushes the file itself.
  const quarter = Math.max(1, Math.floor(size / 4 / 4096)) * 4096;
  const blobs = {
    monolithic: new RotatedFile(layerFile, size, quarter),
    streamed: new RotatedFile(layerFile, size, 2 * quarter),
    chunked: new RotatedFile(layerFile, size, 3 * quarter),
    layer: new RotatedFile(layerFile, size, 0),
  };
  progress("hashing the blobs");
  for (const blob of Object.values(blobs)) await blob.sha256();
  if (new Set(Object.values(blobs).map((b) => b.digest)).size !== Object.keys(blobs).length) {
    throw new Error("the rotated blobs are not distinct (is the layer too small?)");
  }

  progress("starting edge-registry (scripts/dev.mjs) and docker/distribution");
  const [edgeResult, distResult] = await Promise.allSettled([startEdgeRegistry(), startDistribution()]);
  const servers = [edgeResult, distResult].filter((r) => r.status === "fulfilled").map((r) => r.value);
  const relays = [];
  try {
    for (const result of [edgeResult, distResult]) if (result.status === "rejected") throw result.reason;
    const [edge, dist] = servers;
    progress(`edge-registry at ${edge.url} (pid ${edge.pid}), distribution at ${dist.url} (pid ${dist.pid})`);

    const rows = [];
    const notes = [];
    const both = async (label, fn) => {
      const e = await measure(edge, label, () => fn(edge));
      const d = await measure(dist, label, () => fn(dist));
      return { e, d };
    };

    if (only.has("monolithic")) {
      const { e, d } = await both("monolithic push", (s) => pushMonolithic(s, "bench/monolithic", blobs.monolithic));
      rows.push({
        label: "1. monolithic push (POST + PUT body)",
        edge: e.seconds,
        dist: d.seconds,
        throughput: true,
        edgeRss: e.rss,
        distRss: d.rss,
      });
    }
    if (only.has("streamed")) {
      const { e, d } = await both("streamed push", (s) => pushStreamed(s, "bench/streamed", blobs.streamed));
      rows.push({
        label: "2. streamed push (POST + chunked PATCH + PUT)",
        edge: e.seconds,
        dist: d.seconds,
        throughput: true,
        edgeRss: e.rss,
        distRss: d.rss,
      });
      rows.push({
        label: "   of which commit (PUT ?digest=)",
        edge: e.commitSeconds,
        dist: d.commitSeconds,
        throughput: false,
      });
    }
    if (only.has("chunked")) {
      const { e, d } = await both(`chunked push`, (s) => pushChunked(s, "bench/chunked", blobs.chunked));
      rows.push({
        label: `3. chunked push (POST + ${CHUNKS} PATCH + PUT)`,
        edge: e.seconds,
        dist: d.seconds,
        throughput: true,
        edgeRss: e.rss,
        distRss: d.rss,
      });
      rows.push({
        label: "   of which commit (PUT ?digest=)",
        edge: e.commitSeconds,
        dist: d.commitSeconds,
        throughput: false,
      });
    }
    if (only.has("pull")) {
      if (!only.has("monolithic")) {
        progress("pull: pushing its blob first (untimed)");
        for (const server of servers) await pushMonolithic(server, "bench/monolithic", blobs.monolithic);
      }
      const { e, d } = await both("raw pull", (s) => pullRaw(s, "bench/monolithic", blobs.monolithic));
      rows.push({
        label: "4. raw pull (GET blob, sha256 checked)",
        edge: e.seconds,
        dist: d.seconds,
        throughput: true,
        edgeRss: e.rss,
        distRss: d.rss,
      });
    }
    if (only.has("skopeo")) {
      const tools = await createSkopeo();
      if (!tools.isolated) progress("warning: skopeo runs without a private mount namespace (not root?)");
      const tag = "bench";
      const { layout, manifest } = await buildLayout(tools.dir, blobs.layer, tag);
      const image = { repo: "bench/img", layout, manifest, layer: blobs.layer };
      const timeoutMs = requestTimeout(size) + 60_000;
      // skopeo's host:port for each server: the server itself, or a TLS-rejecting relay.
      const hosts = new Map(servers.map((s) => [s, new URL(s.url).host]));
      if (!options.skopeoDirect) {
        for (const server of servers) {
          const relay = await startTlsRejectingRelay(server.port);
          relays.push(relay);
          hosts.set(server, `127.0.0.1:${relay.port}`);
        }
      }
      const push = await both("skopeo push", (s) => skopeoPush(tools, s, hosts.get(s), image, tag, timeoutMs));
      rows.push({
        label: "5. skopeo copy oci: → registry",
        edge: push.e.seconds,
        dist: push.d.seconds,
        throughput: true,
        edgeRss: push.e.rss,
        distRss: push.d.rss,
      });
      const pull = await both("skopeo pull", (s) => skopeoPull(tools, s, hosts.get(s), image, tag, timeoutMs));
      rows.push({
        label: "6. skopeo copy registry → oci:",
        edge: pull.e.seconds,
        dist: pull.d.seconds,
        throughput: true,
        edgeRss: pull.e.rss,
        distRss: pull.d.rss,
      });
      if (relays.length > 0) {
        notes.push(
          `skopeo went through a TCP relay that answers TLS handshakes at once with a plain-HTTP 400 (${relays
            .map((r) => r.rejected())
            .reduce((a, b) => a + b, 0)} rejected): skopeo tries HTTPS first; the relay puts both servers behind ` +
            "the same extra hop (see bench/README.md, `--skopeo-direct`).",
        );
      }
      await removeTempDir(tools.dir);
    }

    const [one, five, fifteen] = loadavg().map((x) => x.toFixed(2));
    const lines = [
      `### Upload/download benchmark: edge-registry (scripts/dev.mjs, Miniflare) vs docker/distribution`,
      "",
      ...facts,
      `- load average at end ${one} ${five} ${fifteen}`,
      "",
      timeTable(rows, size),
      "",
      "Server CPU time (user + system, from /proc) used during each scenario:",
      "",
      cpuTable(rows),
      "",
      "ratio = distribution seconds / edge-registry seconds (> 1: edge-registry is faster).",
      "Peak RSS sampled every 100 ms from /proc during each scenario; edge-registry: workerd",
      "process / whole tree (scripts/dev.mjs's node process + workerd).",
      ...notes,
    ];
    console.log(lines.join("\n"));
  } finally {
    progress("stopping servers");
    await Promise.all(relays.map((r) => r.close()));
    await Promise.all(servers.map((s) => s.stop()));
    await removeTempDir(work);
  }
}

main().catch((error) => {
  console.error(`\nbench/uploads.mjs FAILED: ${error.stack ?? error}`);
  process.exitCode = 1;
});
