#!/usr/bin/env node
// workerd CPU per small request of the Worker's own code: each registry's Worker makes the
// same request n times in a row inside its isolate, its storage reads answered from memory
// (bench/isolate/serve.mjs). bench/request-cpu.mjs measures whole requests through the front,
// the entry Worker and Miniflare's simulators, which are 85–90 % of a small request's CPU
// and the same for every registry; here only what differs between registries is left, so a
// change of a few µs a request shows above the machine's noise.
//
//   node bench/isolate-cpu.mjs --peer /tmp/peer-sr                  this checkout against SR
//   node bench/isolate-cpu.mjs --dir /work/wt/base --dir . --floor  two checkouts and the floor
//
// Per target (each --dir, default this checkout; --peer: a prepared copy of
// /work/shared/peer-sr, as bench/request-cpu.mjs takes it; --floor: bench/floor/worker.js;
// --floor-r2: the same floor, its HEAD blob an R2 head of the blob as SR's is), one
// workerd (Miniflare), started at once. Each pushes bench/tiny:v1 through its own API (ours
// with a token from /token, SR with Basic hello:world). Then, per kind and round, the targets
// take turns burst by burst (the order reversed each burst): a burst is one POST /__loop
// making the kind's request --iterations times (with a fresh pull token for ours, as a
// client would hold), and its CPU is the workerd process's utime + stime around it
// (/proc/<pid>/stat). A warm-up loop per target and kind runs first, not counted.
//
// The kinds: HEAD manifest by tag, HEAD blob, GET tags/list (the three whose reads have no
// body to remember; --only picks some). Reported: µs per request per target (medians of
// rounds, the spread of bursts), and each target against the first, paired burst by burst
// (the median of the ratios with a 95 % bootstrap interval).
//
// --profile: after the counted bursts, per target and kind, one more loop (not counted)
// with V8's sampling profiler on in the loop's isolate (bench/profiler.mjs), a sample every
// --sampling µs (default 25): the top self time per function, µs per request. Hot loops
// keep every sample in the Worker's code, so the shares are the code's own, runtime objects
// included (Response, Headers: their constructors' native time).
//
// Markdown on stdout, progress on stderr. Talks only to 127.0.0.1; every wait is bounded;
// servers and temp dirs are removed at the end (BENCH_KEEP_TMP=1 keeps the dirs).
import { spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { loadavg } from "node:os";
import { basename, join, resolve } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import bcrypt from "bcryptjs";
import { freePort } from "../scripts/lib/free-port.mjs";
import { processKeeper } from "../scripts/lib/process-groups.mjs";
import { addSelfTimes, bundleSections, profiled, saveProfile } from "./profiler.mjs";
import {
  ROOT,
  expectStatus,
  integerOption,
  markdownTable,
  parseCommandLine,
  reportFacts,
  request,
  shortCommit,
  tailFile,
  treeCpuSeconds,
} from "./lib.mjs";
import {
  REPOSITORY,
  REQUEST_TIMEOUT_MS,
  basic,
  checkedRequest,
  median,
  pairedRatio,
  pairedText,
  pushImage,
  requestKinds,
} from "./small-requests.mjs";

const KINDS = ["head-manifest", "head-blob", "tags-list"];
const READY_TIMEOUT_MS = 180_000;
/** A loop's answer may take this long (thousands of requests on a loaded machine). */
const LOOP_TIMEOUT_MS = 300_000;

const keeper = processKeeper({ tempPrefix: "edge-bench-isolate", keepTmpVariable: "BENCH_KEEP_TMP" });
const progress = (message) => process.stderr.write(`# ${message}\n`);

function usage() {
  return [
    "usage: node bench/isolate-cpu.mjs [--dir DIR]... [--peer DIR] [--floor] [--floor-r2] [--rounds N] [--bursts B] [--iterations N] [--only KINDS] [--real] [--profile [--sampling US] [--top N] [--profile-out DIR]]",
    "  --dir DIR        an edge-registry checkout (node_modules and build/*.wasm there); repeat to compare",
    "  --peer DIR       and serverless-registry from a prepared copy of /work/shared/peer-sr",
    "  --floor          and bench/floor/worker.js: each kind's one storage call and nothing else",
    "  --floor-r2       and the same floor answering HEAD blob with SR's call (an R2 head) instead of ours (a KV get)",
    "  --rounds N       rounds (default 2)",
    "  --bursts B       bursts per target, kind and round (default 10)",
    "  --iterations N   requests per burst, made inside the isolate (default 4000)",
    `  --only KINDS     comma-separated subset of ${KINDS.join(",")}`,
    "  --real           storage reads go to Miniflare's simulators (not answered from memory)",
    "  --profile        and one more loop per target and kind under V8's sampling profiler: top self time",
    "  --sampling US    the profiler's sampling interval in µs (default 25)",
    "  --top N          functions listed per profile (default 15)",
    "  --profile-out D  and each profile saved in D (.cpuprofile, for Chrome DevTools)",
  ].join("\n");
}

function parseOptions() {
  const v = parseCommandLine(
    {
      dir: { type: "string", multiple: true },
      peer: { type: "string" },
      floor: { type: "boolean", default: false },
      "floor-r2": { type: "boolean", default: false },
      rounds: { type: "string" },
      bursts: { type: "string" },
      iterations: { type: "string" },
      only: { type: "string" },
      real: { type: "boolean", default: false },
      profile: { type: "boolean", default: false },
      sampling: { type: "string" },
      top: { type: "string" },
      "profile-out": { type: "string" },
    },
    usage,
  );
  const number = (name, fallback, min, max) => integerOption(v, usage, name, fallback, min, max);
  const only = v.only === undefined ? KINDS : v.only.split(",").map((kind) => kind.trim());
  if (only.length === 0 || only.some((kind) => !KINDS.includes(kind))) {
    console.error(`--only takes ${KINDS.join(",")}\n${usage()}`);
    process.exit(2);
  }
  return {
    dirs: (v.dir ?? [ROOT]).map((dir) => resolve(dir)),
    peer: v.peer === undefined ? undefined : resolve(v.peer),
    floor: v.floor,
    floorR2: v["floor-r2"],
    rounds: number("rounds", 2, 1, 20),
    bursts: number("bursts", 10, 1, 200),
    // A loop is one request to workerd: checkouts before the meter cleared its timer
    // (src/registry/meter.ts) leave a storage deadline timer per request they make, and
    // workerd refuses a request's 10 000th pending timer.
    iterations: number("iterations", 4000, 100, 8000),
    only,
    real: v.real,
    profile: v.profile || v["profile-out"] !== undefined,
    profileOut: v["profile-out"] === undefined ? undefined : resolve(v["profile-out"]),
    sampling: number("sampling", 25, 10, 10_000),
    top: number("top", 15, 1, 100),
  };
}

/** Starts bench/isolate/serve.mjs for one target; resolves once its ready line names its port. */
async function startLoop(target, profile) {
  const state = await keeper.makeTempDir(target.kind);
  const inspectorPort = profile ? await freePort() : undefined;
  const logFile = join(state, "server.log");
  const logFd = openSync(logFile, "a");
  const child = spawn(
    process.execPath,
    [
      join(ROOT, "bench", "isolate", "serve.mjs"),
      "--target",
      target.kind,
      "--dir",
      target.dir,
      "--port",
      "0",
      "--persist-to",
      state,
      ...(inspectorPort === undefined ? [] : ["--inspector-port", String(inspectorPort)]),
    ],
    { cwd: target.dir, env: { ...process.env, ...target.env }, detached: true, stdio: ["ignore", logFd, logFd] },
  );
  closeSync(logFd);
  if (child.pid === undefined) throw new Error(`could not start ${target.label}`);
  keeper.track(child.pid, target.label);
  let exited = null;
  child.once("exit", (code, signal) => (exited = { code, signal }));
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    const port = /ready on http:\/\/127\.0\.0\.1:(\d+)\//.exec(readFileSync(logFile, "utf8"))?.[1];
    if (port) {
      return {
        url: `http://127.0.0.1:${port}`,
        pid: child.pid,
        inspectorPort,
        /** The registry's bundle, as serve.mjs wrote it (its `// src/…` markers name the profile's functions). */
        bundle: join(state, "bundle", "index.js"),
        async stop() {
          await keeper.stopGroup(child.pid);
          await keeper.removeTempDir(state);
        },
      };
    }
    if (exited || Date.now() > deadline) {
      const tail = tailFile(logFile, 40);
      await keeper.stopGroup(child.pid);
      throw new Error(`${target.label} ${exited ? `exited: ${JSON.stringify(exited)}` : "not ready in time"}\n${tail}`);
    }
    await delay(250);
  }
}

function oursTarget(dir) {
  for (const [path, hint] of [
    ["wrangler.toml", "not an edge-registry checkout"],
    ["node_modules/wrangler", "run `npm ci` there (or copy node_modules)"],
    ["build/sha256.wasm", "run `npm run build:wasm` there"],
  ]) {
    if (!existsSync(join(dir, path))) throw new Error(`${join(dir, path)} is missing: ${hint}`);
  }
  const user = "bench";
  const password = randomBytes(12).toString("hex");
  return {
    kind: "ours",
    label: `${basename(dir)}@${shortCommit(dir)}`,
    dir,
    env: { AUTH_USERS: `${user}:${bcrypt.hashSync(password, 5)}`, TOKEN_SECRET: randomBytes(32).toString("hex") },
    /** A token for `actions` on the bench repository, from /token, as a client would hold. */
    async authorization(server, actions) {
      const service = new URL(server.url).host;
      const scope = `repository:${REPOSITORY}:${actions}`;
      const answer = await request(
        `${server.url}/token?service=${encodeURIComponent(service)}&scope=${encodeURIComponent(scope)}`,
        { headers: { Authorization: basic(user, password) }, timeoutMs: REQUEST_TIMEOUT_MS },
      );
      expectStatus("GET /token", answer, 200);
      return `Bearer ${JSON.parse(answer.body.toString("utf8")).token}`;
    },
  };
}

function peerTarget(dir) {
  if (!existsSync(join(dir, "wrangler.jsonc")) || !existsSync(join(dir, "node_modules", "wrangler"))) {
    throw new Error(`${dir}: a copy of /work/shared/peer-sr with npm ci done and wrangler.jsonc (PEER.md)`);
  }
  return {
    kind: "peer",
    label: "serverless-registry",
    dir,
    env: {},
    authorization: async () => basic("hello", "world"),
  };
}

function floorTarget(kind = "floor", label = "floor") {
  return { kind, label, dir: ROOT, env: {}, authorization: async () => basic("floor", "floor") };
}

/** CPU µs per request of one loop of `iterations` requests of `kind`. */
async function loop(target, server, kind, authorization, iterations, real = false) {
  const before = treeCpuSeconds(server.pid, "workerd");
  const answer = await request(`${server.url}/__loop`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: Buffer.from(
      JSON.stringify({
        method: kind.method,
        path: kind.path,
        headers: { ...kind.headers, Authorization: authorization },
        n: iterations,
        real,
      }),
    ),
    timeoutMs: LOOP_TIMEOUT_MS,
  });
  const after = treeCpuSeconds(server.pid, "workerd");
  if (answer.status !== 200) throw new Error(`${target.label} ${kind.name}: ${answer.body.toString("utf8")}`);
  return ((after - before) * 1e6) / iterations;
}

const format = (value) => (value === undefined ? "–" : value.toFixed(1));

async function main() {
  const options = parseOptions();
  const targets = [
    ...options.dirs.map(oursTarget),
    ...(options.peer ? [peerTarget(options.peer)] : []),
    ...(options.floor ? [floorTarget()] : []),
    ...(options.floorR2 ? [floorTarget("floor-r2", "floor (R2 head)")] : []),
  ];
  const facts = reportFacts([`targets: ${targets.map((target) => `${target.label} (${target.dir})`).join(", ")}`]);
  progress(`starting ${targets.length} targets`);
  const servers = await Promise.all(targets.map((target) => startLoop(target, options.profile)));
  // results[kind][target] = µs per request of each burst, in turn order across rounds.
  const results = {};
  const kindsByKey = {};
  // profiles[kind][target] = { busy, self: Map function -> µs } per request.
  const profiles = {};
  try {
    const images = [];
    for (const [index, target] of targets.entries()) {
      images.push(await pushImage(servers[index], await target.authorization(servers[index], "pull,push")));
    }
    for (const key of options.only) results[key] = targets.map(() => []);
    // Each target's kinds (their paths name its own image's digests).
    const kindsOf = images.map((image) => requestKinds(image));
    for (const [index, target] of targets.entries()) {
      for (const key of options.only) {
        const kind = kindsOf[index].find((candidate) => candidate.key === key);
        kindsByKey[key] ??= kind;
        const authorization = await target.authorization(servers[index], "pull");
        await checkedRequest(servers[index], kind, authorization);
        await loop(target, servers[index], kind, authorization, Math.max(100, options.iterations >> 2));
      }
    }
    for (let round = 0; round < options.rounds; round++) {
      for (const key of options.only) {
        progress(`round ${round + 1}/${options.rounds}: ${kindsByKey[key].name}`);
        for (let burst = 0; burst < options.bursts; burst++) {
          const order = targets.map((_, index) => index);
          if (burst % 2) order.reverse();
          for (const index of order) {
            const target = targets[index];
            const kind = kindsOf[index].find((candidate) => candidate.key === key);
            const authorization = await target.authorization(servers[index], "pull");
            results[key][index].push(
              await loop(target, servers[index], kind, authorization, options.iterations, options.real),
            );
          }
        }
      }
    }
    if (options.profile) {
      for (const key of options.only) {
        profiles[key] = [];
        for (const [index, target] of targets.entries()) {
          progress(`${target.label}: ${kindsByKey[key].name}, profiled`);
          const kind = kindsOf[index].find((candidate) => candidate.key === key);
          const authorization = await target.authorization(servers[index], "pull");
          const profile = await profiled(
            servers[index].inspectorPort,
            () => loop(target, servers[index], kind, authorization, options.iterations, options.real),
            options.sampling,
          );
          if (options.profileOut) saveProfile(options.profileOut, target, kind, 0, profile);
          const self = new Map();
          // The loop's own frames are loop.js's: only index.js's lines are the bundle's.
          const sections = bundleSections(servers[index].bundle);
          const busy = addSelfTimes(profile, sections, self, (url) => url.endsWith("index.js"));
          profiles[key].push({ busy: busy / options.iterations, self, iterations: options.iterations });
        }
      }
    }
  } finally {
    await Promise.all(servers.map((server) => server.stop()));
  }

  const lines = [];
  lines.push(
    `## Request CPU inside the isolate (storage reads ${options.real ? "made of Miniflare's simulators" : "answered from memory"})\n`,
  );
  lines.push(
    ...facts,
    `- load average at end: ${loadavg()
      .map((value) => value.toFixed(2))
      .join(" ")}`,
  );
  lines.push(`- command: node bench/isolate-cpu.mjs ${process.argv.slice(2).join(" ")}\n`);
  lines.push(
    `### workerd CPU µs per request, ${options.iterations} requests a burst, ${options.bursts} bursts × ${options.rounds} rounds\n`,
  );
  const header = ["request"];
  for (const target of targets) header.push(`${target.label} µs`, "bursts (min–max)");
  const rows = options.only.map((key) => {
    const row = [kindsByKey[key].name];
    for (const bursts of results[key]) {
      row.push(format(median(bursts)), `${format(Math.min(...bursts))}–${format(Math.max(...bursts))}`);
    }
    return row;
  });
  lines.push(markdownTable(header, rows), "");
  if (targets.length > 1) {
    lines.push(
      `### Each target against ${targets[0].label}, paired burst by burst (median of ratios, 95 % interval)\n`,
    );
    const pairedHeader = ["request", ...targets.slice(1).map((target) => `${target.label} ÷ first`)];
    const pairedRows = options.only.map((key) => [
      kindsByKey[key].name,
      ...results[key].slice(1).map((bursts) => pairedText(pairedRatio(results[key][0], bursts))),
    ]);
    lines.push(markdownTable(pairedHeader, pairedRows), "");
    // The two floors differ only in HEAD blob's storage call: SR's (an R2 head) against ours (a KV get).
    const floor = targets.findIndex((target) => target.kind === "floor");
    const floorR2 = targets.findIndex((target) => target.kind === "floor-r2");
    if (floor >= 0 && floorR2 >= 0) {
      lines.push(
        `Floor (R2 head) ÷ floor, paired: ${options.only
          .map(
            (key) => `${kindsByKey[key].name} ${pairedText(pairedRatio(results[key][floor], results[key][floorR2]))}`,
          )
          .join("; ")}.`,
        "",
      );
    }
  }
  if (options.profile) lines.push(...profileTables(profiles, targets, kindsByKey, options));
  process.stdout.write(`${lines.join("\n")}\n`);
}

/** Per kind, each target's top self time side by side, µs per request. */
function profileTables(profiles, targets, kindsByKey, options) {
  const lines = [
    `### Top self time in the loop's isolate, µs per request (V8 sampling profiler every ${options.sampling} µs, one loop of ${options.iterations}, idle left out)\n`,
  ];
  for (const key of options.only) {
    const columns = profiles[key].map(({ busy, self, iterations }) => [
      `${format(busy)} busy`,
      ...[...self.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, options.top)
        .map(([name, time]) => `${format(time / iterations)} ${name}`),
    ]);
    const rows = Array.from({ length: Math.max(...columns.map((column) => column.length)) }, (_, row) =>
      columns.map((column) => column[row] ?? ""),
    );
    lines.push(
      `${kindsByKey[key].name}:\n`,
      markdownTable(
        targets.map((target) => target.label),
        rows,
      ),
      "",
    );
  }
  return lines;
}

await main();
