#!/usr/bin/env node
// The integrity check (`npm run verify`): walks every repository, link, tag, referrer,
// descriptor, blob and KV copy, re-hashes every blob, and reports what is inconsistent;
// with --repair, fixes what is safe to fix (src/registry/integrity.ts says what that is).
//
//   npm run verify                                   the local state (.wrangler/state)
//   npm run verify -- --state DIR                    another local state directory
//   npm run verify -- --url https://registry.example  a running registry; the ADMIN_TOKEN
//                                                    environment variable holds its admin token
//   ... --repair                                     also repair
//   ... --no-rehash                                  sizes only, no re-hashing (fast)
//   ... --json                                       the raw report
//
// Local state is checked by starting the Worker on it (with a one-off admin token); do
// not point it at the state of a registry that is running: use --url for that.
// Exit status: 0 when nothing is wrong (or everything wrong was repaired), 1 otherwise.
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { resolve } from "node:path";

const args = process.argv.slice(2);
function option(name) {
  const index = args.indexOf(name);
  return index >= 0 ? args[index + 1] : undefined;
}
const query = new URLSearchParams();
if (args.includes("--repair")) query.set("repair", "1");
if (args.includes("--no-rehash")) query.set("rehash", "0");

async function runLocal(stateDir) {
  if (!existsSync(stateDir)) {
    console.error(`verify: no state at ${stateDir}`);
    process.exit(2);
  }
  const token = randomUUID();
  // Loaded here only: Miniflare takes ~1 s to import, which --url never needs.
  const { startLocalWorker } = await import("./lib/local-worker.mjs");
  const { miniflare, stop } = await startLocalWorker({
    persistTo: stateDir,
    quiet: true,
    bindings: { ADMIN_TOKEN: token },
  });
  try {
    const response = await miniflare.dispatchFetch(`http://verify.local/_admin/verify?${query}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}` },
    });
    return { status: response.status, text: await response.text() };
  } finally {
    await stop();
  }
}

async function runRemote(url) {
  const token = process.env.ADMIN_TOKEN;
  if (!token) {
    console.error("verify: set ADMIN_TOKEN to the registry's admin token (the ADMIN_TOKEN Worker secret)");
    process.exit(2);
  }
  const response = await fetch(new URL(`/_admin/verify?${query}`, url), {
    method: "POST",
    headers: { Authorization: `Bearer ${token}` },
  });
  return { status: response.status, text: await response.text() };
}

const url = option("--url");
const { status, text } = url ? await runRemote(url) : await runLocal(resolve(option("--state") ?? ".wrangler/state"));
if (status !== 200) {
  console.error(`verify: the registry answered ${status}: ${text}`);
  process.exit(2);
}
const report = JSON.parse(text);
if (args.includes("--json")) {
  console.log(JSON.stringify(report, null, 2));
} else {
  const { counts } = report;
  console.log(
    `checked ${counts.descriptors} blobs (${(counts.bytesRehashed / 2 ** 20).toFixed(1)} MiB re-hashed), ` +
      `${counts.repositories} repositories, ${counts.links} links, ${counts.tags} tags, ${counts.referrers} referrers, ` +
      `${counts.catalogEntries} catalog entries, ${counts.dataObjects} data objects, ${counts.kvEntries} KV copies`,
  );
  // Each quota namespace's usage, counted from its links (a drift from its records is a finding).
  for (const usage of report.usage ?? []) {
    console.log(`usage ${usage.namespace}: ${usage.bytes} bytes in ${usage.blobs} blobs`);
  }
  for (const finding of report.findings) {
    const repaired = finding.repaired ? `  [repaired: ${finding.repaired}]` : "";
    console.log(
      `${finding.severity.padEnd(7)} ${finding.kind.padEnd(26)} ${finding.key}  ${finding.detail}${repaired}`,
    );
  }
  console.log(report.ok ? "ok: nothing inconsistent" : "NOT OK: see the findings above (--repair fixes what is safe)");
}
process.exit(report.ok ? 0 : 1);
