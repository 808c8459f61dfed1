#!/usr/bin/env node
// What the push relay (npm run relay) costs: a layer pushed through the relay against the
// same layer pushed straight to the same registry, side by side in one run.
//
//   node bench/relay.mjs                         1 GiB layer, chunks of 95 MB, 2 rounds
//   node bench/relay.mjs --size-mib 256 --chunk 32MiB --rounds 3
//
// edge-registry runs as `npm start` runs it, with no body limit (so the direct push can
// carry the whole layer); the relay runs as its own process (`node scripts/relay.mjs --to
// <registry>`). Each round pushes two distinct blobs of the same size (rotations of one
// random file): one straight to the registry, one through the relay, in alternating
// order, each the way docker and podman push (POST, one PATCH of unknown length with the
// whole layer, PUT ?digest=); the relay re-cuts the PATCH into Content-Range chunks. It
// reports the seconds of each, the ratio (direct / relay: 1 means free, the target is at
// least 0.9), and the relay process's peak RSS and CPU. Every blob is checked afterwards
// (HEAD: size and digest). Talks only to 127.0.0.1.
import { spawn } from "node:child_process";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { setTimeout as delay } from "node:timers/promises";
import { parseSize } from "../scripts/lib/sizes.mjs";
import {
  expectStatus,
  makeTempDir,
  MiB,
  removeTempDir,
  request,
  ROOT,
  RotatedFile,
  RssSampler,
  startEdgeRegistry,
  stopGroup,
  writeRandomFile,
} from "./lib.mjs";

const { values } = parseArgs({
  options: {
    "size-mib": { type: "string", default: "1024" },
    chunk: { type: "string", default: "95MB" },
    rounds: { type: "string", default: "2" },
  },
});
const size = Number(values["size-mib"]) * MiB;
const chunk = parseSize(values.chunk);
const rounds = Number(values.rounds);
const log = (message) => process.stderr.write(`# ${message}\n`);

async function startRelayProcess(to) {
  const args = [join(ROOT, "scripts", "relay.mjs"), "--to", to, "--listen", "127.0.0.1:0", "--chunk", String(chunk)];
  const child = spawn(process.execPath, args, { cwd: ROOT, detached: true, stdio: ["ignore", "ignore", "pipe"] });
  let output = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (text) => (output = (output + text).slice(-100_000)));
  const deadline = Date.now() + 30_000;
  while (!/relay ready: (\S+)/.test(output)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`the relay did not start:\n${output}`);
    await delay(50);
  }
  return {
    url: /relay ready: (\S+)/.exec(output)[1],
    pid: child.pid,
    output: () => output,
    stop: () => stopGroup(child.pid),
  };
}

/** POST, one PATCH of unknown length with the whole blob, PUT ?digest=: as docker pushes. Seconds. */
async function push(base, name, blob) {
  const started = performance.now();
  const begun = await request(`${base}/v2/${name}/blobs/uploads/`, { method: "POST" });
  expectStatus("POST", begun, 202);
  const patched = await request(new URL(begun.headers.location, base).toString(), {
    method: "PATCH",
    headers: { "Content-Type": "application/octet-stream" },
    body: blob.read(),
    timeoutMs: 1_800_000,
  });
  expectStatus("PATCH", patched, 202);
  const commit = new URL(patched.headers.location, base);
  commit.searchParams.set("digest", await blob.sha256());
  const committed = await request(commit.toString(), { method: "PUT", headers: { "Content-Length": "0" }, body: "" });
  expectStatus("PUT ?digest=", committed, 201);
  return (performance.now() - started) / 1000;
}

const work = await makeTempDir("relay-bench");
const file = join(work, "layer.bin");
log(`writing ${size / MiB} MiB of random bytes`);
await writeRandomFile(file, size);
const registry = await startEdgeRegistry();
const relay = await startRelayProcess(registry.url);
const rows = [];
let peak = { total: 0 };
let relayCpu = 0;
try {
  for (let round = 0; round < rounds; round++) {
    const direct = new RotatedFile(file, size, Math.floor((size / (2 * rounds + 1)) * (2 * round + 1)));
    const relayed = new RotatedFile(file, size, Math.floor((size / (2 * rounds + 1)) * (2 * round + 2)));
    await direct.sha256();
    await relayed.sha256();
    const order = round % 2 === 0 ? ["direct", "relay"] : ["relay", "direct"];
    const seconds = {};
    for (const which of order) {
      log(`round ${round + 1}: ${which}`);
      if (which === "direct") {
        seconds.direct = await push(registry.url, "bench/direct", direct);
      } else {
        const sampler = new RssSampler(relay.pid);
        sampler.start();
        seconds.relay = await push(relay.url, "bench/relayed", relayed);
        const sampled = sampler.stop();
        peak = sampled.total > peak.total ? sampled : peak;
        relayCpu += sampled.cpu.total;
      }
    }
    for (const [name, blob] of [
      ["bench/direct", direct],
      ["bench/relayed", relayed],
    ]) {
      const head = await request(`${registry.url}/v2/${name}/blobs/${await blob.sha256()}`, { method: "HEAD" });
      expectStatus(`HEAD ${name}`, head, 200);
      if (Number(head.headers["content-length"]) !== size)
        throw new Error(`${name}: stored ${head.headers["content-length"]} bytes`);
    }
    rows.push({ round: round + 1, ...seconds });
  }
} finally {
  await relay.stop();
  await registry.stop();
  await removeTempDir(work);
}

const mb = size / 1e6;
console.log(`### Push relay: a ${size / MiB} MiB layer, relay chunks of at most ${chunk} bytes\n`);
console.log("| round | direct s | direct MB/s | through the relay s | relay MB/s | ratio (direct / relay) |");
console.log("|---|---|---|---|---|---|");
for (const row of rows) {
  console.log(
    `| ${row.round} | ${row.direct.toFixed(1)} | ${(mb / row.direct).toFixed(1)} | ${row.relay.toFixed(1)} | ${(mb / row.relay).toFixed(1)} | ${(row.direct / row.relay).toFixed(2)} |`,
  );
}
const total = (key) => rows.reduce((sum, row) => sum + row[key], 0);
console.log(`\n- overall ratio ${(total("direct") / total("relay")).toFixed(2)} (target ≥ 0.9)`);
console.log(
  `- relay process: peak RSS ${(peak.total / MiB).toFixed(0)} MiB, CPU ${relayCpu.toFixed(1)} s for ${rounds} pushes`,
);
