#!/usr/bin/env node
// Garbage collection (`npm run gc`): starts a run of the registry's collector
// (src/gc/collector.ts), follows it to its end, and prints its report.
//
//   npm run gc                                       the local state (.wrangler/state)
//   npm run gc -- --state DIR                        another local state directory
//   npm run gc -- --url https://registry.example     a running registry; the ADMIN_TOKEN
//                                                    environment variable holds its admin token
//   ... --dry-run                                    change nothing; list what would go
//   ... --grace SECONDS                              blobs and links younger than this stay
//                                                    (default: the registry's GC_GRACE_SECONDS)
//   ... --json                                       the report as JSON (with the items removed)
//
// A run already in progress is followed rather than started again. Local state is
// collected by starting the Worker on it; do not point --state at the state of a
// registry that is running: use --url for that.
// Exit status: 0 when the run finished, 1 when it failed, 2 when it could not be run.
import { adminConnection } from "./lib/admin-connection.mjs";

const args = process.argv.slice(2);
function option(name) {
  const index = args.indexOf(name);
  return index >= 0 ? args[index + 1] : undefined;
}
function fail(message) {
  console.error(`gc: ${message}`);
  process.exit(2);
}

const dryRun = args.includes("--dry-run");
const json = args.includes("--json");
const grace = option("--grace");
if (grace !== undefined && !/^\d+$/.test(grace)) fail("--grace takes a whole number of seconds");
const query = new URLSearchParams();
if (dryRun) query.set("dry-run", "1");
if (grace !== undefined) query.set("grace", grace);

const tty = process.stderr.isTTY && !json;

function progress(run) {
  if (!tty) return;
  const width = 30;
  const filled = Math.round(((run.phaseNumber - 1) / Math.max(1, run.phaseCount - 1)) * width);
  const bar = "#".repeat(filled) + "-".repeat(width - filled);
  const line =
    `[${bar}] ${run.phase} (${run.phaseDone} done) · step ${run.steps}` +
    ` · ${run.blobsRemoved} blobs, ${mib(run.bytesReclaimed)} ${run.dryRun ? "would go" : "reclaimed"}`;
  process.stderr.write(`\r${line.padEnd(100)}`);
}

function mib(bytes) {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

const { call, stop } = await adminConnection({ url: option("--url"), state: option("--state"), fail });
let report;
try {
  const started = await call("POST", `/_admin/gc?${query}`);
  if (started.status === 409) {
    console.error("gc: a run is already in progress; following it");
  } else if (started.status !== 202) {
    fail(`the registry answered ${started.status}: ${started.body}`);
  }
  // Bounded: a run reports every poll; a day of polling is far past any run.
  for (let poll = 0; poll < 24 * 60 * 60 * 4; poll++) {
    const answer = await call("GET", "/_admin/gc");
    if (answer.status !== 200) fail(`the registry answered ${answer.status}: ${answer.body}`);
    const run = JSON.parse(answer.body);
    progress(run);
    if (run.status !== "running") break;
    await new Promise((resolveDelay) => setTimeout(resolveDelay, 250));
  }
  const final = await call("GET", "/_admin/gc?items=1");
  report = JSON.parse(final.body);
} finally {
  if (tty) process.stderr.write("\n");
  await stop();
}

if (json) {
  console.log(JSON.stringify(report, null, 2));
} else {
  const { scanned, removed } = report;
  const verb = report.dryRun ? "would remove" : "removed";
  console.log(
    `${report.dryRun ? "dry run: " : ""}scanned ${scanned.repositories} repositories, ${scanned.manifests} manifests, ` +
      `${scanned.tags} tags, ${scanned.links} links, ${scanned.blobs} blobs, ${scanned.dataObjects} data objects`,
  );
  console.log(
    `${verb} ${removed.tags} tags, ${removed.manifests} manifests, ${removed.links} links, ${report.blobsRemoved} blobs, ` +
      `${removed.orphans} orphaned objects: ${report.bytesReclaimed} bytes (${mib(report.bytesReclaimed)})`,
  );
  const refused = report.refused ?? { tags: 0, manifests: 0, links: 0, blobs: 0 };
  if (refused.tags + refused.manifests + refused.links + refused.blobs > 0) {
    console.log(
      `kept, a change policy refused their removal: ${refused.tags} tags, ${refused.manifests} manifests, ` +
        `${refused.links} links, ${refused.blobs} blobs`,
    );
  }
  console.log(
    `${report.steps} steps; storage calls: ${report.operations.r2} R2 (${report.operations.r2ClassA} class A), ` +
      `${report.operations.kv} KV; at most ${report.maxStepOperations} in one step, longest step ${Math.round(report.maxStepMs)} ms`,
  );
  if (report.dryRun) {
    for (const item of report.items ?? []) {
      console.log(`  ${item.kind.padEnd(8)} ${item.name}${item.size === undefined ? "" : `  ${item.size} bytes`}`);
    }
    if (report.itemsTruncated) console.log("  … (list truncated)");
  }
  if (report.status !== "done") console.log(`run ${report.status}: ${report.lastError ?? ""}`);
}
process.exit(report.status === "done" ? 0 : 1);
