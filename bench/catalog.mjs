#!/usr/bin/env node
// Catalog benchmark: seeds N repositories (default 10 000) in a fresh local registry, by
// mounting one small blob into each (a link, no bytes copied), then times GET
// /v2/_catalog pages: a full walk with n=100 and n=1000 following the Link header, and
// single pages near the start and the end. The catalog is one sorted R2 listing, so a
// page should cost the same wherever it starts, however many repositories exist.
//
// Usage: node bench/catalog.mjs [--repos N] [--concurrency C]
import { createHash } from "node:crypto";
import { startEdgeRegistry } from "./lib.mjs";

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const index = args.indexOf(name);
  return index >= 0 ? Number(args[index + 1]) : fallback;
};
const repos = option("--repos", 10_000);
const concurrency = option("--concurrency", 16);

const names = Array.from({ length: repos }, (_, index) => `catalog/r${String(index).padStart(6, "0")}`);
const registry = await startEdgeRegistry();
const base = registry.url;
try {
  const blob = Buffer.from("catalog benchmark blob");
  const digest = `sha256:${createHash("sha256").update(blob).digest("hex")}`;
  const seeded = await fetch(`${base}/v2/catalog/seed/blobs/uploads/?digest=${digest}`, { method: "POST", body: blob });
  if (seeded.status !== 201) throw new Error(`seeding blob: ${seeded.status}`);

  let next = 0;
  const started = performance.now();
  async function worker() {
    while (next < names.length) {
      const name = names[next++];
      const response = await fetch(`${base}/v2/${name}/blobs/uploads/?mount=${digest}&from=catalog/seed`, {
        method: "POST",
      });
      await response.arrayBuffer();
      if (response.status !== 201) throw new Error(`mount into ${name}: ${response.status}`);
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seedSeconds = (performance.now() - started) / 1000;
  console.log(`seeded ${repos} repositories in ${seedSeconds.toFixed(1)} s (${concurrency} at a time)`);

  async function walk(pageSize) {
    const seen = [];
    let path = `/v2/_catalog?n=${pageSize}`;
    const pageTimes = [];
    for (let page = 0; path && page < repos / pageSize + 5; page++) {
      const t = performance.now();
      const response = await fetch(`${base}${path}`);
      const body = await response.json();
      pageTimes.push(performance.now() - t);
      if (response.status !== 200) throw new Error(`catalog page: ${response.status}`);
      seen.push(...body.repositories);
      const link = response.headers.get("link");
      path = link ? /^<([^>]+)>/.exec(link)?.[1] : null;
    }
    const sorted = [...seen].sort();
    if (seen.length !== repos + 1 || seen.some((name, index) => name !== sorted[index])) {
      throw new Error(`walk with n=${pageSize} saw ${seen.length} names (expected ${repos + 1}, sorted)`);
    }
    pageTimes.sort((a, b) => a - b);
    const total = pageTimes.reduce((sum, t) => sum + t, 0);
    const p50 = pageTimes[Math.floor(pageTimes.length / 2)];
    const p99 = pageTimes[Math.min(pageTimes.length - 1, Math.floor(pageTimes.length * 0.99))];
    console.log(
      `walk n=${pageSize}: ${pageTimes.length} pages, ${total.toFixed(0)} ms total, page p50 ${p50.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms`,
    );
  }
  await walk(100);
  await walk(1000);

  for (const [label, last] of [
    ["first page", undefined],
    ["page from the middle", names[Math.floor(repos / 2)]],
    ["last page", names[repos - 50]],
  ]) {
    const times = [];
    for (let round = 0; round < 20; round++) {
      const t = performance.now();
      const response = await fetch(`${base}/v2/_catalog?n=100${last ? `&last=${last}` : ""}`);
      await response.json();
      times.push(performance.now() - t);
    }
    times.sort((a, b) => a - b);
    console.log(`${label} (n=100, 20 requests): median ${times[10].toFixed(1)} ms`);
  }
} finally {
  await registry.stop();
}
