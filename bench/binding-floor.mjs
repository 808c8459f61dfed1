#!/usr/bin/env node
// The floor under a small request: workerd CPU per request of a trivial Worker that makes
// one binding call and answers, on the same Miniflare `npm start` uses. What the registry's
// HEAD manifest (one R2 head), HEAD blob (one KV get) and tag list (one R2 list) cost beyond
// it is the registry's own work (bench/request-cpu.mjs measures those).
//
//   node bench/binding-floor.mjs                 6 rounds of 6000 requests per kind
//   node bench/binding-floor.mjs --rounds 3 --requests 3000
//   node bench/binding-floor.mjs --filler 300   300 more objects in the bucket, under another prefix
//   node bench/binding-floor.mjs --only kv-get-json,r2-head-checksum --rounds 40 --requests 2000
//                                                only these kinds; each against the first, paired by round
//
// One Miniflare (one workerd, this checkout's node_modules) serves a Worker with an R2
// bucket and a KV namespace, seeded with one object (a tag's five custom metadata entries),
// the same tag's fields packed into one entry, an object with none, `--filler` others
// (Miniflare's R2 list scans every row of the bucket's table: does their number show?),
// an object stored with a SHA-256 checksum (as serverless-registry stores a blob, whose HEAD
// answers with that checksum and the size), and one KV value (a blob's link copy as JSON,
// as ours stores it). Per round, each kind in turn (the order
// reversed every other round): 500 warm-up requests, then `hey -n N -c 10` straight to
// workerd's port (no front), workerd's utime + stime (/proc/<pid>/stat) around it. Prints
// the median µs per request per kind and every round's, and each kind against the first,
// paired by round (median of the ratios, 95 % bootstrap interval). Talks only to 127.0.0.1; needs
// `hey` (Debian: apt-get install hey).
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Log, LogLevel, Miniflare } from "miniflare";
import { pairedRatio, pairedText } from "./small-requests.mjs";

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const index = args.indexOf(name);
  return index >= 0 ? Number(args[index + 1]) : fallback;
};
const rounds = option("--rounds", 6);
const requests = option("--requests", 6000);
const filler = option("--filler", 0);
const onlyIndex = args.indexOf("--only");
const only = onlyIndex >= 0 ? String(args[onlyIndex + 1] ?? "").split(",") : undefined;
if (
  !Number.isInteger(rounds) ||
  rounds < 1 ||
  !Number.isInteger(requests) ||
  requests < 10 ||
  !Number.isInteger(filler) ||
  filler < 0 ||
  filler > 10_000
) {
  console.error("usage: node bench/binding-floor.mjs [--rounds N] [--requests N] [--filler N] [--only kind,kind…]");
  process.exit(2);
}

const script = `
const DIGEST = "sha256:" + "a".repeat(64);
export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    if (path === "/seed") {
      await env.B.put("k", "{}", { customMetadata: { digest: DIGEST, mediaType: "application/vnd.oci.image.manifest.v1+json", length: "500", size: "1234", platforms: "linux/amd64" } });
      await env.K.put("k", JSON.stringify({ link: {}, descriptor: { digest: DIGEST, size: 4096 } }), { expirationTtl: 30 * 24 * 3600 });
      await env.B.put("checksum", new Uint8Array(4096), { sha256: "ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7" });
      await env.B.put("packed", "{}", { customMetadata: { tag: DIGEST + " 500 application/vnd.oci.image.manifest.v1+json" } });
      await env.B.put("bare", "{}");
      const filler = Number(new URL(request.url).searchParams.get("filler"));
      for (let i = 0; i < filler; i++) await env.B.put("other/" + String(i).padStart(6, "0"), "{}", { customMetadata: { digest: DIGEST } });
      return new Response("seeded");
    }
    if (path === "/r2-head-metadata") { const o = await env.B.head("k"); return new Response(null, { headers: { "X-L": o.customMetadata.length } }); }
    if (path === "/r2-head-size") { const o = await env.B.head("k"); return new Response(null, { headers: { "X-L": String(o.size) } }); }
    if (path === "/r2-head-packed") { const o = await env.B.head("packed"); return new Response(null, { headers: { "X-L": o.customMetadata.tag.split(" ")[1] } }); }
    if (path === "/r2-head-bare") { const o = await env.B.head("bare"); return new Response(null, { headers: { "X-L": String(o.size) } }); }
    if (path === "/r2-head-checksum") { const o = await env.B.head("checksum"); const hex = [...new Uint8Array(o.checksums.sha256)].map((b) => b.toString(16).padStart(2, "0")).join(""); return new Response(null, { headers: { "Content-Length": String(o.size), "Docker-Content-Digest": "sha256:" + hex } }); }
    if (path === "/r2-list") { const l = await env.B.list({ prefix: "k" }); return new Response(JSON.stringify(l.objects.map((o) => o.key))); }
    if (path === "/kv-get-json") { const v = await env.K.get("k", { type: "json", cacheTtl: 60 }); return new Response(null, { headers: { "X-L": String(v.descriptor.size) } }); }
    if (path === "/kv-get-text") { const v = JSON.parse(await env.K.get("k")); return new Response(null, { headers: { "X-L": String(v.descriptor.size) } }); }
    return new Response(null);
  },
};`;
const ALL_KINDS = [
  "constant",
  "r2-head-metadata",
  "r2-head-size",
  "r2-head-packed",
  "r2-head-bare",
  "r2-head-checksum",
  "r2-list",
  "kv-get-json",
  "kv-get-text",
];
if (only && (only.length === 0 || only.some((kind) => !ALL_KINDS.includes(kind)))) {
  console.error(`--only takes kinds among: ${ALL_KINDS.join(", ")}`);
  process.exit(2);
}
const KINDS = only ?? ALL_KINDS;

const state = mkdtempSync(join(tmpdir(), "binding-floor-"));
const mf = new Miniflare({
  modules: true,
  script,
  r2Buckets: ["B"],
  kvNamespaces: ["K"],
  host: "127.0.0.1",
  port: 0,
  defaultPersistRoot: state,
  compatibilityDate: "2025-01-01",
  log: new Log(LogLevel.ERROR),
});
try {
  const url = await mf.ready;
  const seeded = await fetch(new URL(`/seed?filler=${filler}`, url));
  if (seeded.status !== 200) throw new Error(`seeding failed: ${seeded.status}`);
  await seeded.text();
  // The workerd this process started (Miniflare spawns it as a child).
  const workerd = readdirSync("/proc").filter((pid) => {
    if (!/^\d+$/.test(pid)) return false;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      return stat.includes("(workerd)") && Number(stat.split(") ")[1].split(" ")[1]) === process.pid;
    } catch {
      return false;
    }
  });
  if (workerd.length === 0) throw new Error("no workerd child found");
  const ticks = () =>
    workerd.reduce((total, pid) => {
      const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
      return total + Number(fields[11]) + Number(fields[12]);
    }, 0);
  const tickUs = 1e6 / Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim() || 100);
  const hey = (n, kind) => {
    const run = spawnSync("hey", ["-n", String(n), "-c", "10", "-t", "30", new URL(`/${kind}`, url).toString()], {
      encoding: "utf8",
      timeout: 300_000,
    });
    if (run.status !== 0) throw new Error(`hey failed on ${kind}: ${run.stderr}`);
    const statuses = [...run.stdout.matchAll(/\[(\d{3})\]\s+(\d+) responses/g)];
    const ok = statuses.length === 1 && statuses[0][1] === "200" && Number(statuses[0][2]) === n;
    if (!ok) throw new Error(`hey on ${kind}: not every answer was 200\n${run.stdout}`);
  };
  const results = Object.fromEntries(KINDS.map((kind) => [kind, []]));
  for (let round = 0; round < rounds; round++) {
    for (const kind of round % 2 ? [...KINDS].reverse() : KINDS) {
      hey(500, kind);
      const before = ticks();
      hey(requests, kind);
      results[kind].push(((ticks() - before) * tickUs) / requests);
    }
    console.error(`# round ${round + 1}/${rounds} done`);
  }
  const median = (values) => [...values].sort((a, b) => a - b)[values.length >> 1];
  console.log(`## The floor under a small request (trivial Worker, one binding call)\n`);
  console.log(
    `- date: ${new Date().toISOString()}; ${rounds} rounds of ${requests} requests per kind, hey -c 10, direct to workerd; ${filler} filler objects`,
  );
  console.log(`- load average at the end: ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}\n`);
  console.log("| request | workerd µs per request (median) | each round |");
  console.log("| --- | --- | --- |");
  for (const kind of KINDS) {
    console.log(
      `| ${kind} | ${median(results[kind]).toFixed(0)} | ${results[kind].map((v) => v.toFixed(0)).join(", ")} |`,
    );
  }
  // Round i of every kind ran within the same few seconds: the ratios cancel the machine's drift.
  console.log(`\n### Each kind against ${KINDS[0]}, paired by round (median of the ratios, 95 % bootstrap interval)\n`);
  console.log(`| request | µs ÷ ${KINDS[0]} |`);
  console.log("| --- | --- |");
  for (const kind of KINDS.slice(1)) {
    console.log(`| ${kind} | ${pairedText(pairedRatio(results[KINDS[0]], results[kind]))} |`);
  }
} finally {
  await mf.dispose();
  rmSync(state, { recursive: true, force: true });
}
