#!/usr/bin/env node
// The web pages (src/ui) with a repository of 1000 tags: how long each page takes, what it
// costs in storage calls, and how it compares with the API's tag list.
//
//   node bench/ui.mjs                      50 requests per page after 5 warm-ups, then 50 at concurrency 4
//   node bench/ui.mjs --quick              10 requests after 2, 50 repositories, 1 cold start per page
//   node bench/ui.mjs --requests 200 --concurrency 8 --cold-runs 5
//
// edge-registry runs as `npm start` runs it (bench/lib.mjs startEdgeRegistry: scripts/dev.mjs,
// Miniflare, a fresh state dir, open: no authentication), on 127.0.0.1.
//
// Setup, untimed, over HTTP:
//   - bench/many: one small image (a config with labels and two small layers, pushed as
//     monolithic POST ?digest= uploads, then the manifest PUT by digest), given --tags
//     tags (default 1000: v0000 … v0999) by manifest PUTs carrying up to 20 `?tag=` each
//     (oldest first, so v0999 is the newest tag);
//   - bench/multi: two single-platform images (linux/amd64 and linux/arm64: configs of
//     their own, the layers mounted from bench/many) and an index of both, given
//     --index-tags tags (default 50) the same way;
//   - --repos repositories in all (default 200): the rest are bench/repo-NNN, each the
//     bench/many image (its blobs mounted with `?mount=&from=bench/many`, the manifest PUT
//     as `latest`).
//
// Timed, with Node's fetch (keep-alive connections) against 127.0.0.1: --warmup rounds
// (not counted), then --requests rounds one request after another, each round requesting
// every page once (interleaved, so that other load on the machine falls on all pages
// alike); then, page by page, --requests more with --concurrency in flight. Each request is timed from the call to the last
// byte of the body. Every answer is checked (status 200; the first one's content: the
// tags a repository page lists and their order, the image and index pages' digest and
// platforms, the API's 1000 tags in one page). Storage calls per request are the
// Server-Timing counts (src/registry/meter.ts). workerd's CPU time (from /proc; it includes
// Miniflare's R2 simulator, which runs inside the same workerd) is read around each
// sequential request.
//
// Cold starts (--cold-runs, default 3; 0 skips them): the registry is stopped, and for
// each of a few pages, started again on the same state (scripts/dev.mjs: a new workerd)
// and, once it says it is ready (no request made before), the page is requested twice:
// the first request of a fresh workerd, and the one after it.
//
// Markdown report on stdout, progress on stderr. Talks only to 127.0.0.1; every loop is
// bounded and every request has a timeout; servers and temp dirs are removed at the end
// (BENCH_KEEP_TMP=1 keeps the dirs).
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { loadavg } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as delay } from "node:timers/promises";
import { freePort } from "../scripts/lib/free-port.mjs";
import {
  ROOT,
  packageVersion,
  parseCommandLine,
  run,
  startEdgeRegistry,
  stopGroup,
  treeCpuSeconds,
  markdownTable,
  reportFacts,
} from "./lib.mjs";

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const CONFIG = "application/vnd.oci.image.config.v1+json";
const LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
/** The registry's default MANIFEST_MAX_TAGS: tags one PUT may set. */
const TAGS_PER_PUT = 20;
/** Tags on one repository page (src/ui/routes.tsx TAGS_PER_PAGE). */
const TAGS_PER_PAGE = 100;
const REQUEST_TIMEOUT_MS = 30_000;
const READY_TIMEOUT_MS = 120_000;
const SETUP_CONCURRENCY = 4;

function usage() {
  return [
    "usage: node bench/ui.mjs [--quick] [--requests N] [--warmup N] [--concurrency C] [--tags N] [--index-tags N] [--repos N] [--cold-runs N]",
    "  --requests N     timed requests per page, one after another, and again at --concurrency (default 50; --quick 10)",
    "  --warmup N       requests per page before the timed ones, not counted (default 5; --quick 2)",
    "  --concurrency C  requests in flight in the concurrent run (default 4)",
    "  --tags N         tags of bench/many (default 1000)",
    "  --index-tags N   tags of bench/multi, the index (default 50)",
    "  --repos N        repositories in the catalog, bench/many and bench/multi included (default 200; --quick 50)",
    "  --cold-runs N    fresh starts of the registry per cold-started page (default 3; --quick 1; 0: none)",
    "  --quick          the smaller defaults above: a quick check that it all works",
    "  env BENCH_KEEP_TMP=1 keeps the temp dirs",
  ].join("\n");
}

function parseOptions() {
  const v = parseCommandLine(
    {
      quick: { type: "boolean", default: false },
      requests: { type: "string" },
      warmup: { type: "string" },
      concurrency: { type: "string" },
      tags: { type: "string" },
      "index-tags": { type: "string" },
      repos: { type: "string" },
      "cold-runs": { type: "string" },
    },
    usage,
  );
  const integer = (name, fallback, min, max) => {
    const value = Number(v[name] ?? fallback);
    if (!Number.isInteger(value) || value < min || value > max) {
      console.error(`--${name} must be an integer from ${min} to ${max}\n${usage()}`);
      process.exit(2);
    }
    return value;
  };
  const q = v.quick;
  return {
    quick: q,
    requests: integer("requests", q ? 10 : 50, 1, 10_000),
    warmup: integer("warmup", q ? 2 : 5, 0, 1000),
    concurrency: integer("concurrency", 4, 1, 64),
    tags: integer("tags", 1000, 1, 10_000),
    indexTags: integer("index-tags", 50, 1, 1000),
    repos: integer("repos", q ? 50 : 200, 2, 10_000),
    coldRuns: integer("cold-runs", q ? 1 : 3, 0, 20),
  };
}

const progress = (message) => process.stderr.write(`# ${message}\n`);

// ---------------------------------------------------------------------------------------
// HTTP with Node's fetch, 127.0.0.1 only.

/** fetch with a timeout; the body read whole. Returns { status, headers, body: Buffer, ms }. */
async function call(url, { method = "GET", headers = {}, body } = {}) {
  if (new URL(url).hostname !== "127.0.0.1") throw new Error(`refusing non-loopback URL ${url}`);
  const controller = new AbortController();
  const timer = setTimeout(
    () => controller.abort(new Error(`timed out after ${REQUEST_TIMEOUT_MS} ms: ${method} ${url}`)),
    REQUEST_TIMEOUT_MS,
  );
  try {
    const started = performance.now();
    const response = await fetch(url, { method, headers, body, redirect: "manual", signal: controller.signal });
    const bytes = Buffer.from(await response.arrayBuffer());
    return { status: response.status, headers: response.headers, body: bytes, ms: performance.now() - started };
  } finally {
    clearTimeout(timer);
  }
}

function expect(what, response, status) {
  if (response.status !== status) {
    throw new Error(
      `${what}: expected HTTP ${status}, got ${response.status}: ${response.body.toString().slice(0, 500)}`,
    );
  }
}

/** `r2;dur=12.4;desc="2", …` → { r2: { count: 2, ms: 12.4 }, cache: { value: "hit", ms }, … }. */
function serverTiming(header) {
  const out = {};
  for (const metric of (header ?? "").split(",")) {
    const [name, ...parameters] = metric.trim().split(";");
    if (!name) continue;
    const field = (key) => parameters.find((p) => p.startsWith(`${key}=`))?.slice(key.length + 1);
    const desc = field("desc")?.replace(/^"|"$/g, "");
    const dur = field("dur");
    out[name] = {
      count: desc !== undefined && /^\d+$/.test(desc) ? Number(desc) : 0,
      value: desc,
      ms: dur === undefined ? 0 : Number(dur),
    };
  }
  return out;
}

/** Runs `work(i)` for i in [0, count) with at most `limit` in flight. */
async function pool(count, limit, work) {
  let next = 0;
  const worker = async () => {
    while (next < count) await work(next++);
  };
  await Promise.all(Array.from({ length: Math.min(limit, count) }, worker));
}

// ---------------------------------------------------------------------------------------
// Setup.

const sha256 = (bytes) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
const json = (value) => Buffer.from(JSON.stringify(value));

async function pushBlob(base, repo, bytes) {
  const digest = sha256(bytes);
  const response = await call(`${base}/v2/${repo}/blobs/uploads/?digest=${digest}`, {
    method: "POST",
    headers: { "Content-Type": "application/octet-stream" },
    body: bytes,
  });
  expect(`push ${digest} to ${repo}`, response, 201);
  return { digest, size: bytes.length };
}

async function mountBlob(base, repo, digest, from) {
  const response = await call(`${base}/v2/${repo}/blobs/uploads/?mount=${digest}&from=${from}`, { method: "POST" });
  expect(`mount ${digest} into ${repo}`, response, 201);
}

/** PUT a manifest by `reference` (a tag or its digest) with `tags` as `?tag=`; checks the OCI-Tag answers. */
async function putManifest(base, repo, reference, bytes, mediaType, tags = []) {
  const query = tags.length > 0 ? `?${tags.map((tag) => `tag=${encodeURIComponent(tag)}`).join("&")}` : "";
  const response = await call(`${base}/v2/${repo}/manifests/${reference}${query}`, {
    method: "PUT",
    headers: { "Content-Type": mediaType },
    body: bytes,
  });
  expect(`PUT ${repo} manifest ${reference}${query.slice(0, 60)}`, response, 201);
  const digest = sha256(bytes);
  if (response.headers.get("docker-content-digest") !== digest) {
    throw new Error(
      `PUT ${repo}: Docker-Content-Digest ${response.headers.get("docker-content-digest")}, expected ${digest}`,
    );
  }
  const answered = (response.headers.get("oci-tag") ?? "")
    .split(",")
    .map((tag) => tag.trim())
    .filter(Boolean);
  for (const tag of tags) {
    if (!answered.includes(tag)) throw new Error(`PUT ${repo}: OCI-Tag ${JSON.stringify(answered)} lacks ${tag}`);
  }
  return digest;
}

/** Tags `tags` onto an already pushed manifest, TAGS_PER_PUT per request, in order. */
async function tagMany(base, repo, digest, bytes, mediaType, tags) {
  for (let i = 0; i < tags.length; i += TAGS_PER_PUT) {
    await putManifest(base, repo, digest, bytes, mediaType, tags.slice(i, i + TAGS_PER_PUT));
  }
}

const tagName = (prefix, i, count) => `${prefix}${String(i).padStart(String(count - 1).length, "0")}`;

function imageConfig(architecture) {
  return {
    architecture,
    os: "linux",
    created: "2026-12-01T00:00:00Z",
    config: {
      Env: ["PATH=/usr/local/bin:/usr/bin:/bin", "BENCH=ui"],
      Cmd: ["/bin/sh"],
      WorkingDir: "/srv",
      Labels: {
        "org.opencontainers.image.title": "bench ui",
        "org.opencontainers.image.source": "https://example.invalid/bench",
      },
    },
    rootfs: { type: "layers", diff_ids: [] },
  };
}

async function setup(base, options) {
  // bench/many: the image.
  const layers = [];
  for (const size of [4096, 16384]) layers.push(await pushBlob(base, "bench/many", randomBytes(size)));
  const config = await pushBlob(base, "bench/many", json(imageConfig("amd64")));
  const imageBytes = json({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: CONFIG, ...config },
    layers: layers.map((layer) => ({ mediaType: LAYER, ...layer })),
  });
  const imageDigest = await putManifest(base, "bench/many", sha256(imageBytes), imageBytes, OCI_MANIFEST);
  const manyTags = Array.from({ length: options.tags }, (_, i) => tagName("v", i, options.tags));
  const tagStarted = performance.now();
  await tagMany(base, "bench/many", imageDigest, imageBytes, OCI_MANIFEST, manyTags);
  const tagSeconds = (performance.now() - tagStarted) / 1000;
  progress(
    `bench/many: ${options.tags} tags in ${Math.ceil(options.tags / TAGS_PER_PUT)} PUTs, ${tagSeconds.toFixed(1)} s`,
  );

  // bench/multi: two platforms and an index.
  const platforms = [];
  for (const architecture of ["amd64", "arm64"]) {
    for (const layer of layers) await mountBlob(base, "bench/multi", layer.digest, "bench/many");
    const platformConfig = await pushBlob(base, "bench/multi", json(imageConfig(architecture)));
    const bytes = json({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: CONFIG, ...platformConfig },
      layers: layers.map((layer) => ({ mediaType: LAYER, ...layer })),
    });
    const digest = await putManifest(base, "bench/multi", sha256(bytes), bytes, OCI_MANIFEST);
    platforms.push({ mediaType: OCI_MANIFEST, digest, size: bytes.length, platform: { architecture, os: "linux" } });
  }
  const indexBytes = json({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: platforms });
  const indexDigest = await putManifest(base, "bench/multi", sha256(indexBytes), indexBytes, OCI_INDEX);
  const multiTags = Array.from({ length: options.indexTags }, (_, i) => tagName("r", i, options.indexTags));
  await tagMany(base, "bench/multi", indexDigest, indexBytes, OCI_INDEX, multiTags);

  // The rest of the catalog: the same image, mounted.
  const others = Array.from({ length: options.repos - 2 }, (_, i) => tagName("bench/repo-", i, options.repos - 2));
  const catalogStarted = performance.now();
  await pool(others.length, SETUP_CONCURRENCY, async (i) => {
    const repo = others[i];
    for (const blob of [config, ...layers]) await mountBlob(base, repo, blob.digest, "bench/many");
    await putManifest(base, repo, "latest", imageBytes, OCI_MANIFEST);
  });
  progress(`${others.length} more repositories in ${((performance.now() - catalogStarted) / 1000).toFixed(1)} s`);
  return { imageDigest, indexDigest, manyTags, multiTags, others, tagSeconds };
}

// ---------------------------------------------------------------------------------------
// Checks of what the pages answer (the first answer of each).

const tagsListed = (html) => [...html.matchAll(/<tr data-tag="([^"]+)"/g)].map((match) => match[1]);

function checkRepositoryPage(html, tags, page, anomalies, what) {
  // Tags were written oldest first, TAGS_PER_PUT per PUT: page p (newest first) lists the
  // p-th hundred from the end. Within one PUT, tags may share a timestamp (then by name),
  // so the check is on the set of a page, and on page order between PUTs.
  const listed = tagsListed(html);
  const end = tags.length - (page - 1) * TAGS_PER_PAGE;
  const expected = tags.slice(Math.max(0, end - TAGS_PER_PAGE), end);
  const same = listed.length === expected.length && expected.every((tag) => listed.includes(tag));
  if (!same) {
    anomalies.push(
      `- ${what}: lists ${listed.length} tags (${listed.slice(0, 3).join(", ")} … ${listed.slice(-3).join(", ")}), ` +
        `expected ${expected.length} (${expected.at(-1)} … ${expected[0]})`,
    );
  }
  const total = new RegExp(`${tags.length} tags, newest first`).test(html);
  if (!total) anomalies.push(`- ${what}: the page does not say "${tags.length} tags, newest first"`);
  // Newest first between PUTs: the index of the PUT that wrote each listed tag never increases.
  const batch = (tag) => Math.floor(tags.indexOf(tag) / TAGS_PER_PUT);
  for (let i = 1; i < listed.length; i++) {
    if (batch(listed[i]) > batch(listed[i - 1])) {
      anomalies.push(`- ${what}: ${listed[i]} (written later) listed after ${listed[i - 1]}`);
      break;
    }
  }
}

function checkContains(html, needles, anomalies, what) {
  for (const needle of needles) if (!html.includes(needle)) anomalies.push(`- ${what}: the page lacks ${needle}`);
}

// ---------------------------------------------------------------------------------------
// Measuring.

/** Nearest-rank percentile (p99 of 50 values is the largest). */
const percentile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
};
const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};
/** One value when all agree, else min–max. */
const spread = (values) => {
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  return lo === hi ? String(lo) : `${lo}–${hi}`;
};

function sample(response) {
  const timing = serverTiming(response.headers.get("server-timing"));
  return {
    ms: response.ms,
    bytes: response.body.length,
    r2: timing.r2?.count ?? 0,
    r2A: timing["r2-class-a"]?.count ?? 0,
    r2Ms: timing.r2?.ms ?? 0,
    kv: timing.kv?.count ?? 0,
    kvMs: timing.kv?.ms ?? 0,
    timed: Object.keys(timing).length > 0,
  };
}

function getter(edge, page) {
  const url = `${edge.url}${page.path}`;
  return async () => {
    const response = await call(url, { headers: page.headers ?? {} });
    expect(`GET ${page.path}`, response, 200);
    return response;
  };
}

/**
 * The sequential run, pages interleaved (round after round, each page once per round, so
 * that load from elsewhere on the machine falls on all pages alike), with workerd's CPU
 * time read around every request; then each page's concurrent run on its own.
 */
async function measureAll(edge, pages, options) {
  const results = pages.map((page) => ({
    page,
    get: getter(edge, page),
    sequential: [],
    concurrent: [],
    cpu: 0,
    wall: 0,
  }));
  for (let i = 0; i < options.warmup; i++) for (const r of results) await r.get();
  for (let i = 0; i < options.requests; i++) {
    for (const r of results) {
      const cpu0 = treeCpuSeconds(edge.pid, "workerd");
      const response = await r.get();
      r.cpu += treeCpuSeconds(edge.pid, "workerd") - cpu0;
      r.sequential.push(sample(response));
    }
    if ((i + 1) % 10 === 0) progress(`  sequential: ${i + 1}/${options.requests} rounds`);
  }
  for (const r of results) {
    r.cpuMs = (r.cpu * 1000) / options.requests;
    const started = performance.now();
    await pool(options.requests, options.concurrency, async () => r.concurrent.push(sample(await r.get())));
    r.rate = options.requests / ((performance.now() - started) / 1000);
    const s = r.sequential.map((x) => x.ms);
    progress(
      `  ${r.page.label}: median ${ms(median(s))} ms, p99 ${ms(percentile(s, 99))} ms, r2 ${spread(r.sequential.map((x) => x.r2))}, ` +
        `workerd ${ms(r.cpuMs)} CPU-ms/request; c${options.concurrency} median ${ms(median(r.concurrent.map((x) => x.ms)))} ms`,
    );
  }
  return results;
}

// ---------------------------------------------------------------------------------------
// Cold starts: scripts/dev.mjs again on the same state, one page, twice.

const coldGroups = new Set();
process.on("exit", () => {
  for (const pgid of coldGroups) {
    try {
      process.kill(-pgid, "SIGKILL");
    } catch {
      // gone
    }
  }
});

/** Starts scripts/dev.mjs on `stateDir`; resolves { url, pgid } once it printed that it is ready (no request made). */
async function startAgain(edge) {
  const port = await freePort();
  const child = spawn(
    process.execPath,
    [join(ROOT, "scripts", "dev.mjs"), "--port", String(port), "--persist-to", join(edge.dir, "state"), "--quiet"],
    {
      cwd: ROOT,
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
      env: {
        ...process.env,
        CLOUDFLARE_CF_FETCH_ENABLED: "false",
        WRANGLER_SEND_METRICS: "false",
        WRANGLER_SEND_ERROR_REPORTS: "false",
        WRANGLER_HIDE_BANNER: "true",
        WRANGLER_LOG_PATH: join(edge.dir, "wrangler-logs"),
        XDG_CONFIG_HOME: join(edge.dir, "config"),
        NO_COLOR: "1",
        FORCE_COLOR: "0",
      },
    },
  );
  if (child.pid === undefined) throw new Error("could not start scripts/dev.mjs again");
  coldGroups.add(child.pid);
  let output = "";
  let exited = false;
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  child.stdout.on("data", (chunk) => {
    if (output.length < 100_000) output += chunk;
  });
  child.stderr.on("data", (chunk) => {
    if (output.length < 100_000) output += chunk;
  });
  child.once("exit", () => {
    exited = true;
  });
  const started = performance.now();
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!/edge-registry ready/.test(output)) {
    if (exited || Date.now() > deadline) {
      await stopCold(child.pid);
      throw new Error(`scripts/dev.mjs (again) not ready${exited ? ": it exited" : ""}:\n${output.slice(-3000)}`);
    }
    await delay(20);
  }
  return { url: `http://127.0.0.1:${port}`, pgid: child.pid, startSeconds: (performance.now() - started) / 1000 };
}

async function stopCold(pgid) {
  await stopGroup(pgid);
  coldGroups.delete(pgid);
}

async function coldStarts(edge, pages, runs) {
  const results = new Map(pages.map((page) => [page.key, []]));
  for (let r = 1; r <= runs; r++) {
    for (const page of pages) {
      const instance = await startAgain(edge);
      try {
        const first = await call(`${instance.url}${page.path}`, { headers: page.headers ?? {} });
        expect(`cold GET ${page.path}`, first, 200);
        const second = await call(`${instance.url}${page.path}`, { headers: page.headers ?? {} });
        expect(`second GET ${page.path}`, second, 200);
        results.get(page.key).push({ first: sample(first), second: sample(second), start: instance.startSeconds });
        progress(
          `cold ${r}/${runs} ${page.key}: start ${instance.startSeconds.toFixed(1)} s, first ${first.ms.toFixed(1)} ms, ` +
            `second ${second.ms.toFixed(1)} ms`,
        );
      } finally {
        await stopCold(instance.pgid);
      }
    }
  }
  return results;
}

// ---------------------------------------------------------------------------------------
// Report.

const machineFacts = () => reportFacts([`- miniflare ${packageVersion("miniflare")}`]);

const ms = (value) => value.toFixed(1);

async function main() {
  const options = parseOptions();
  const facts = machineFacts();
  progress("building build/*.wasm (npm run build:wasm)");
  await run(process.execPath, [join(ROOT, "scripts", "build-wasm.mjs")], { timeoutMs: 60_000 });

  progress("starting edge-registry (as npm start runs it)");
  const edge = await startEdgeRegistry();
  try {
    progress(`edge-registry at ${edge.url} (pid ${edge.pid}); setup`);
    const seeded = await setup(edge.url, options);
    const manyPages = Math.ceil(options.tags / TAGS_PER_PAGE);
    const pages = [
      { key: "catalog", label: "catalog page `/`", path: "/" },
      { key: "repo-1", label: `bench/many, page 1 (${options.tags} tags)`, path: "/repositories/bench/many" },
      {
        key: `repo-${manyPages}`,
        label: `bench/many, page ${manyPages}`,
        path: `/repositories/bench/many?page=${manyPages}`,
      },
      {
        key: "image",
        label: "image page (bench/many)",
        path: `/repositories/bench/many/-/manifests/${seeded.imageDigest}`,
      },
      { key: "multi", label: `bench/multi (${options.indexTags} tags)`, path: "/repositories/bench/multi" },
      {
        key: "index",
        label: "index page (2 platforms)",
        path: `/repositories/bench/multi/-/manifests/${seeded.indexDigest}`,
      },
      { key: "api-tags", label: "API `tags/list` (bench/many)", path: "/v2/bench/many/tags/list", api: true },
      { key: "api-catalog", label: "API `_catalog?n=100`", path: "/v2/_catalog?n=100", api: true },
      { key: "ping", label: "API `/v2/` (no storage call)", path: "/v2/", api: true },
    ];

    // What each answers, checked once.
    const anomalies = [];
    const text = async (path) => {
      const response = await call(`${edge.url}${path}`);
      expect(`GET ${path}`, response, 200);
      return response.body.toString("utf8");
    };
    const byKey = Object.fromEntries(pages.map((page) => [page.key, page]));
    const firstPage = await text(byKey["repo-1"].path);
    checkRepositoryPage(firstPage, seeded.manyTags, 1, anomalies, "bench/many page 1");
    const firstListed = tagsListed(firstPage);
    checkRepositoryPage(
      await text(byKey[`repo-${manyPages}`].path),
      seeded.manyTags,
      manyPages,
      anomalies,
      `bench/many page ${manyPages}`,
    );
    checkRepositoryPage(await text(byKey.multi.path), seeded.multiTags, 1, anomalies, "bench/multi");
    const catalogHtml = await text("/");
    const catalogNames = [...catalogHtml.matchAll(/<li><a href="\/repositories\/([^"]+)">/g)].map((m) => m[1]);
    if (catalogNames.length !== Math.min(100, options.repos)) {
      anomalies.push(
        `- catalog page: lists ${catalogNames.length} repositories, expected ${Math.min(100, options.repos)}`,
      );
    }
    checkContains(
      await text(byKey.image.path),
      // It names the first tags (in name order) that point at it, at most 20, and says there are more.
      [seeded.imageDigest, "org.opencontainers.image.title", seeded.manyTags[0], ", …"],
      anomalies,
      "image page",
    );
    checkContains(await text(byKey.index.path), ["linux/amd64", "linux/arm64"], anomalies, "index page");
    // The API answers at most 1000 tags per page (src/routes/http.ts MAX_PAGE), with a Link to the next.
    const apiFirst = await call(`${edge.url}${byKey["api-tags"].path}`);
    expect("GET tags/list", apiFirst, 200);
    const apiTags = JSON.parse(apiFirst.body.toString("utf8"));
    const apiExpected = Math.min(options.tags, 1000);
    if (apiTags.tags?.length !== apiExpected || (apiFirst.headers.get("link") !== null) !== options.tags > 1000) {
      anomalies.push(
        `- API tags/list: ${apiTags.tags?.length} tags in the first page (expected ${apiExpected}), Link ${apiFirst.headers.get("link")}`,
      );
    }

    // The timed runs.
    progress(
      `measuring ${pages.length} requests: ${options.warmup} warm-up rounds, ${options.requests} sequential rounds`,
    );
    const results = await measureAll(edge, pages, options);
    const [endOne, endFive, endFifteen] = loadavg().map((x) => x.toFixed(2));

    // Cold starts, last: the registry is stopped (its state kept) and started again per page.
    let cold;
    if (options.coldRuns > 0) {
      progress(`cold starts: ${options.coldRuns} per page`);
      await stopGroup(edge.pid);
      cold = await coldStarts(
        edge,
        pages.filter((page) => ["catalog", "repo-1", "image", "api-tags"].includes(page.key)),
        options.coldRuns,
      );
    }

    // ---- the report ----
    const apiMedian = median(results.find((r) => r.page.key === "api-tags").sequential.map((x) => x.ms));
    const timeRows = results.map((r) => {
      const s = r.sequential.map((x) => x.ms);
      const c = r.concurrent.map((x) => x.ms);
      return [
        r.page.label,
        ms(median(s)),
        ms(percentile(s, 90)),
        ms(percentile(s, 99)),
        `${s.filter((x) => x >= 100).length}/${s.length}`,
        ms(median(c)),
        ms(percentile(c, 99)),
        r.rate.toFixed(0),
        spread(r.sequential.map((x) => x.bytes)),
        (median(s) / apiMedian).toFixed(2),
      ];
    });
    const callRows = results.map((r) => {
      const s = r.sequential;
      return [
        r.page.label,
        `${spread(s.map((x) => x.r2A))} / ${spread(s.map((x) => x.r2 - x.r2A))}`,
        ms(median(s.map((x) => x.r2Ms))),
        spread(s.map((x) => x.kv)),
        ms(median(s.map((x) => x.kvMs))),
        ms(r.cpuMs),
      ];
    });
    const lines = [
      "### Web pages with a repository of many tags",
      "",
      ...facts,
      `- load average at the end of the timed runs ${endOne} ${endFive} ${endFifteen}`,
      `- ${options.repos} repositories; bench/many: one image (config + 2 layers, 20 KiB) with ${options.tags} tags ` +
        `(${Math.ceil(options.tags / TAGS_PER_PUT)} manifest PUTs of ${TAGS_PER_PUT} \`?tag=\`, ${seeded.tagSeconds.toFixed(1)} s); ` +
        `bench/multi: an index of 2 platforms with ${options.indexTags} tags`,
      `- bench/many page 1 lists ${firstListed.slice(0, 4).join(", ")}, … ${firstListed.slice(18, 22).join(", ")}, … ${firstListed.at(-1)} ` +
        `(the order on the page)`,
      `- per page: ${options.warmup} warm-up requests, ${options.requests} timed one after another, ${options.requests} ` +
        `more at concurrency ${options.concurrency}; Node fetch (keep-alive), from the call to the body's last byte; ` +
        `percentiles by nearest rank`,
      "",
      markdownTable(
        [
          "request",
          "median ms",
          "p90 ms",
          "p99 ms",
          "≥ 100 ms",
          `c${options.concurrency} median ms`,
          `c${options.concurrency} p99 ms`,
          `c${options.concurrency} req/s`,
          "bytes",
          "÷ API tags/list",
        ],
        timeRows,
      ),
      "",
      "Per request (sequential run): Server-Timing counts (one value when all requests agree, else min–max), their",
      "summed milliseconds (median; calls in parallel add up), and workerd's CPU time per request (mean; includes the R2 simulator):",
      "",
      markdownTable(["request", "R2 class A / B", "R2 ms", "KV", "KV ms", "workerd CPU ms"], callRows),
    ];
    if (cold) {
      const coldRows = [];
      for (const [key, runs] of cold) {
        const page = pages.find((p) => p.key === key);
        coldRows.push([
          page.label,
          runs.length,
          `${ms(median(runs.map((x) => x.first.ms)))} (${ms(Math.min(...runs.map((x) => x.first.ms)))}–${ms(Math.max(...runs.map((x) => x.first.ms)))})`,
          ms(median(runs.map((x) => x.first.r2Ms))),
          ms(median(runs.map((x) => x.second.ms))),
          ms(median(runs.map((x) => x.start))),
        ]);
      }
      lines.push(
        "",
        "First request of a freshly started registry (scripts/dev.mjs again on the same state; no request before):",
        "",
        markdownTable(
          ["request", "starts", "first ms, median (min–max)", "its R2 ms", "second ms", "start s"],
          coldRows,
        ),
      );
    }
    if (anomalies.length > 0) lines.push("", "Anomalies:", "", ...anomalies);
    console.log(lines.join("\n"));
    if (anomalies.length > 0) process.exitCode = 1;
  } catch (error) {
    process.stderr.write(`${edge.logTail(60)}\n`);
    throw error;
  } finally {
    progress("stopping the registry");
    for (const pgid of [...coldGroups]) await stopCold(pgid);
    await edge.stop();
  }
}

main().catch((error) => {
  console.error(`\nbench/ui.mjs FAILED: ${error.stack ?? error}`);
  process.exitCode = 1;
});
