#!/usr/bin/env node
// Slow clients against the local front (as `npm start` runs it) and the push relay: what
// thousands of connections that send one byte and then nothing hold, and whether
// legitimate requests are still answered meanwhile (scripts/lib/connection-limits.mjs).
//
//   node bench/slow-clients.mjs                          3 000 connections, 10 s header timeout
//   node bench/slow-clients.mjs --connections 1000 --header-timeout 5 --only front
//   node bench/slow-clients.mjs --before DIR             an older checkout (before the limits)
//
// Per server, two phases:
// 1. The cap: --connections connections from 127.0.0.1, one byte each. How many the server
//    holds (at most --max-connections-per-address) and how many it closes at once, and
//    GET /v2/ from 127.0.0.2 meanwhile (another address, not capped).
// 2. The header timeout: --connections connections spread over --addresses loopback
//    addresses (127.0.0.10, 127.0.0.11, …; Linux routes all of 127.0.0.0/8 to lo), each
//    under the cap, one byte each, held until the server closes them. GET /v2/ from
//    127.0.0.1 every 100 ms meanwhile (each must answer within 2 s), how many were held at
//    once, and how long after opening each was closed.
// The registry runs open (no users); the relay forwards to it. Peak RSS of each server's
// processes is sampled. Talks only to 127.0.0.0/8; every wait has a deadline.
//
// File descriptors: each held connection costs one in this process and one in the server.
// Node raises its own soft limit (`ulimit -n`) to the hard limit (`ulimit -Hn`) at start,
// so the hard limit must allow --connections + 1024; the bench stops otherwise.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { join, resolve } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import {
  markdownTable,
  parseCommandLine,
  reportFacts,
  ROOT,
  RssSampler,
  startEdgeRegistry,
  stopGroup,
} from "./lib.mjs";

const usage = () =>
  [
    "usage: node bench/slow-clients.mjs [--connections N] [--addresses N] [--header-timeout SECONDS]",
    "                                   [--max-connections-per-address N] [--only front,relay] [--before DIR]",
  ].join("\n");
const values = parseCommandLine(
  {
    connections: { type: "string", default: "3000" },
    addresses: { type: "string", default: "15" },
    "header-timeout": { type: "string", default: "10" },
    "max-connections-per-address": { type: "string", default: "256" },
    only: { type: "string", default: "front,relay" },
    before: { type: "string" },
  },
  usage,
);
const CONNECTIONS = Number(values.connections);
const ADDRESSES = Number(values.addresses);
const HEADER_TIMEOUT_S = Number(values["header-timeout"]);
const CAP = Number(values["max-connections-per-address"]);
const ONLY = values.only.split(",");
const before = values.before === undefined ? null : resolve(values.before);
/** A legitimate request must be answered within this. */
const ANSWER_WITHIN_MS = 2000;
/** Connections opened at once (the listen backlog is 511: more would wait for SYN retries). */
const BATCH = 200;
const log = (message) => process.stderr.write(`# ${message}\n`);

if (!(CONNECTIONS > 0 && CONNECTIONS <= 20_000 && ADDRESSES > 0 && ADDRESSES <= 200)) {
  console.error(`--connections must be 1–20000 and --addresses 1–200\n${usage()}`);
  process.exit(2);
}
if (Math.ceil(CONNECTIONS / ADDRESSES) > CAP && !before) {
  console.error(`${CONNECTIONS} connections over ${ADDRESSES} addresses exceed the cap of ${CAP} per address`);
  process.exit(2);
}

// ---- file descriptors ----

// Node raises its soft open-file limit to the hard one when it starts: the hard limit is
// what counts, for this process and for the servers it starts.
const needed = CONNECTIONS + 1024;
const [soft, hard] = (
  /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync("/proc/self/limits", "utf8"))?.slice(1) ?? []
).map((text) => (text === "unlimited" ? Infinity : Number(text)));
if (soft < needed) {
  console.error(
    `open-file limit too low: ${soft} (hard ${hard}), ${needed} needed; raise the hard limit ` +
      "(ulimit -Hn as root, LimitNOFILE=, /etc/security/limits.conf) or use fewer --connections",
  );
  process.exit(2);
}

// ---- clients ----

/** One connection from `localAddress` that sends one byte: { socket, openedAt, closedAt } (ms; null while open). */
function openSlow(port, localAddress) {
  return new Promise((resolveOpen) => {
    const connection = { socket: null, openedAt: performance.now(), closedAt: null };
    const socket = net.connect({ port, host: "127.0.0.1", localAddress });
    connection.socket = socket;
    const timer = setTimeout(() => resolveOpen(connection), 5000);
    socket.on("error", () => undefined);
    socket.once("close", () => {
      connection.closedAt = performance.now();
      clearTimeout(timer);
      resolveOpen(connection);
    });
    socket.once("connect", () => {
      connection.openedAt = performance.now();
      socket.write("G");
      clearTimeout(timer);
      resolveOpen(connection);
    });
  });
}

/** `count` slow connections, the i-th from `addresses[i % addresses.length]`, opened BATCH at a time. */
async function openMany(port, count, addresses) {
  const connections = [];
  for (let first = 0; first < count; first += BATCH) {
    const batch = [];
    for (let index = first; index < Math.min(count, first + BATCH); index++) {
      batch.push(openSlow(port, addresses[index % addresses.length]));
    }
    connections.push(...(await Promise.all(batch)));
  }
  return connections;
}

/** GET /v2/ from `localAddress`: { ms, status } or { ms, error }. */
function getV2(port, localAddress) {
  const started = performance.now();
  return new Promise((resolveGet) => {
    const outgoing = http.get(
      { host: "127.0.0.1", port, path: "/v2/", agent: false, localAddress, timeout: 10_000 },
      (response) => {
        response.resume();
        response.on("end", () => resolveGet({ ms: performance.now() - started, status: response.statusCode }));
      },
    );
    outgoing.on("timeout", () => outgoing.destroy(new Error("no answer in 10 s")));
    outgoing.on("error", (error) =>
      resolveGet({ ms: performance.now() - started, error: error.code ?? error.message }),
    );
  });
}

const open = (connections) => connections.filter((connection) => connection.closedAt === null).length;
const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
const seconds = (ms) => (ms / 1000).toFixed(1);

function latencies(answers) {
  const good = answers.filter((answer) => answer.status === 200 && answer.ms <= ANSWER_WITHIN_MS);
  const sorted = answers.map((answer) => answer.ms).sort((a, b) => a - b);
  return {
    text: `${Math.round(quantile(sorted, 0.5))} / ${Math.round(sorted.at(-1))}`,
    failed: answers.length - good.length,
    count: answers.length,
  };
}

function closeAll(connections) {
  for (const connection of connections) connection.socket.destroy();
}

/** Phase 1: everything from 127.0.0.1. */
async function capPhase(port) {
  const connections = await openMany(port, CONNECTIONS, ["127.0.0.1"]);
  await delay(500);
  const answers = [];
  for (let round = 0; round < 10; round++) answers.push(await getV2(port, "127.0.0.2"));
  const held = open(connections);
  const refusedAtOnce = connections.filter(
    (connection) => connection.closedAt !== null && connection.closedAt - connection.openedAt < 1000,
  ).length;
  closeAll(connections);
  await delay(1000);
  return { held, refusedAtOnce, answers: latencies(answers) };
}

/** Phase 2: spread over ADDRESSES addresses, held until the server closes them (or a deadline). */
async function timeoutPhase(port) {
  const addresses = Array.from({ length: ADDRESSES }, (_, index) => `127.0.0.${10 + index}`);
  const started = performance.now();
  const connections = await openMany(port, CONNECTIONS, addresses);
  const openedIn = performance.now() - started;
  const deadline = started + HEADER_TIMEOUT_S * 1000 + 15_000;
  const answers = [];
  let peak = open(connections);
  while (open(connections) > 0 && performance.now() < deadline) {
    answers.push(await getV2(port, "127.0.0.1"));
    peak = Math.max(peak, open(connections));
    await delay(100);
  }
  const stillOpen = open(connections);
  const closedAfter = connections
    .filter((connection) => connection.closedAt !== null)
    .map((connection) => connection.closedAt - connection.openedAt)
    .sort((a, b) => a - b);
  closeAll(connections);
  await delay(1000);
  return {
    openedIn,
    peak,
    stillOpen,
    closed:
      closedAfter.length === 0
        ? "none"
        : `${seconds(closedAfter[0])} / ${seconds(quantile(closedAfter, 0.5))} / ${seconds(closedAfter.at(-1))}`,
    answers: latencies(answers),
  };
}

// ---- servers ----

const root = before ?? ROOT;
const limitFlags = before
  ? []
  : ["--header-timeout", String(HEADER_TIMEOUT_S), "--max-connections-per-address", String(CAP)];

async function startRelay(to) {
  const args = [join(root, "scripts", "relay.mjs"), "--to", to, "--listen", "127.0.0.1:0", "--quiet", ...limitFlags];
  const child = spawn(process.execPath, args, { cwd: root, detached: true, stdio: ["ignore", "ignore", "pipe"] });
  process.once("exit", () => {
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  });
  let output = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (text) => (output = (output + text).slice(-100_000)));
  const deadline = Date.now() + 30_000;
  while (!/relay ready: (\S+)/.test(output)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`the relay did not start:\n${output}`);
    await delay(50);
  }
  return {
    port: Number(new URL(/relay ready: (\S+)/.exec(output)[1]).port),
    pid: child.pid,
    stop: () => stopGroup(child.pid),
  };
}

async function measure(name, port, pid) {
  const sampler = new RssSampler(pid, 250);
  sampler.start();
  log(`${name}: ${CONNECTIONS} connections from 127.0.0.1`);
  const cap = await capPhase(port);
  log(`${name}: ${CONNECTIONS} connections over ${ADDRESSES} addresses, until closed`);
  const timeout = await timeoutPhase(port);
  const rss = sampler.stop();
  return { name, cap, timeout, rssMiB: Math.round(rss.total / 2 ** 20) };
}

const facts = reportFacts([
  `- open-file limit: soft ${soft}, hard ${hard}`,
  before ? `- checkout: ${before} (before the limits: no limit flags)` : `- checkout: ${ROOT}`,
]);
const registry = await startEdgeRegistry({ root, args: limitFlags });
const results = [];
let relay = null;
try {
  if (ONLY.includes("front")) results.push(await measure("front (npm start)", registry.port, registry.pid));
  if (ONLY.includes("relay")) {
    relay = await startRelay(registry.url);
    results.push(await measure("relay", relay.port, relay.pid));
  }
} finally {
  await relay?.stop();
  await registry.stop();
}

const settings = before
  ? "no limits (before)"
  : `header timeout ${HEADER_TIMEOUT_S} s, at most ${CAP} connections per address`;
console.log(`## Slow clients: ${CONNECTIONS} connections sending one byte each (${settings})\n`);
console.log(facts.join("\n"));
console.log(`\n### From one address (127.0.0.1)\n`);
console.log(
  markdownTable(
    ["server", "held", "closed at once", "GET /v2/ from 127.0.0.2: p50 / max ms", "over 2 s or failed"],
    results.map(({ name, cap }) => [
      name,
      cap.held,
      cap.refusedAtOnce,
      cap.answers.text,
      `${cap.answers.failed} of ${cap.answers.count}`,
    ]),
  ),
);
console.log(`\n### Spread over ${ADDRESSES} addresses, held until the server closes them\n`);
console.log(
  markdownTable(
    [
      "server",
      "opened in s",
      "held at once",
      "closed after (min / median / max s)",
      "still open at the end",
      "GET /v2/ from 127.0.0.1: p50 / max ms",
      "over 2 s or failed",
      "peak RSS MiB",
    ],
    results.map(({ name, timeout, rssMiB }) => [
      name,
      seconds(timeout.openedIn),
      timeout.peak,
      timeout.closed,
      timeout.stillOpen,
      timeout.answers.text,
      `${timeout.answers.failed} of ${timeout.answers.count}`,
      rssMiB,
    ]),
  ),
);
