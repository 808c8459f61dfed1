#!/usr/bin/env node
// The local R2 simulator's own ceiling on this machine, with no registry code: a trivial
// Worker in Miniflare (the same workerd and R2 simulator `npm start` uses) bound to one
// R2 bucket persisted in a fresh temp dir. It times, inside the Worker:
//   (a) one put() of N MiB from an in-memory Uint8Array,
//   (b) a multipart upload of N MiB in sequential 16 MiB uploadPart()s,
//   (c) reading (b) back in 16 MiB ranged get()s,
//   (d) reading (a) back in one get(),
//   (e) only reading an N MiB request body sent from Node over HTTP (no R2),
//   (f) reading (a) back in 16 MiB ranged get()s (separates the cost of ranges from parts).
// The registry's pipeline can't beat these, so they give the floor that
// bench/uploads.mjs figures should be compared with.
//
// Usage: node bench/r2-floor.mjs [--size-mib N]   (default 1024; prints a markdown table)
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Miniflare } from "miniflare";

const { values } = parseArgs({ options: { "size-mib": { type: "string", default: "1024" } } });
const sizeMiB = Number(values["size-mib"]);
if (!Number.isInteger(sizeMiB) || sizeMiB < 1 || sizeMiB > 16 * 1024) {
  console.error("--size-mib must be an integer from 1 to 16384");
  process.exit(2);
}
const MiB = 1 << 20;
const size = sizeMiB * MiB;

// The Worker. Clocks in workerd only advance across I/O, so each step awaits a timer
// after building its buffers and before reading the clock: otherwise the set-up time
// would be counted. Each step returns { seconds, bytes }; reads count every byte.
const WORKER = `
const MiB = 1 << 20;
const PART = 16 * MiB;

// 16 MiB of random bytes (getRandomValues fills at most 64 KiB per call).
function pattern() {
  const bytes = new Uint8Array(PART);
  for (let i = 0; i < PART; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  return bytes;
}

// A fresh buffer of n bytes per use: R2 takes ownership of (detaches) what it stores.
function filled(n, source) {
  const bytes = new Uint8Array(n);
  for (let i = 0; i < n; i += PART) bytes.set(source.subarray(0, Math.min(PART, n - i)), i);
  return bytes;
}

async function clock() {
  await new Promise((resolve) => setTimeout(resolve, 1));
  return Date.now();
}

async function consume(body, expected) {
  const reader = body.getReader();
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return n;
    n += value.byteLength;
    if (n > expected) throw new Error("read " + n + " bytes, expected " + expected);
  }
}

async function step(name, size, bucket, request) {
  const source = pattern();
  if (name === "put") {
    const bytes = filled(size, source);
    const t0 = await clock();
    await bucket.put("single", bytes);
    return { seconds: (Date.now() - t0) / 1000, bytes: size };
  }
  if (name === "multipart") {
    const parts = [];
    for (let at = 0; at < size; at += PART) parts.push(filled(Math.min(PART, size - at), source));
    const t0 = await clock();
    const upload = await bucket.createMultipartUpload("multi");
    const uploaded = [];
    for (let i = 0; i < parts.length; i++) uploaded.push(await upload.uploadPart(i + 1, parts[i]));
    await upload.complete(uploaded);
    return { seconds: (Date.now() - t0) / 1000, bytes: size };
  }
  if (name === "read-multipart" || name === "read-single-ranged") {
    const key = name === "read-multipart" ? "multi" : "single";
    const t0 = await clock();
    let n = 0;
    for (let at = 0; at < size; at += PART) {
      const object = await bucket.get(key, { range: { offset: at, length: Math.min(PART, size - at) } });
      n += await consume(object.body, size - n);
    }
    return { seconds: (Date.now() - t0) / 1000, bytes: n };
  }
  if (name === "read-single") {
    const t0 = await clock();
    const object = await bucket.get("single");
    const n = await consume(object.body, size);
    return { seconds: (Date.now() - t0) / 1000, bytes: n };
  }
  if (name === "body") {
    // Read as the registry reads uploads: BYOB reads into a 16 MiB buffer.
    const t0 = Date.now(); // the handler starts when the headers arrive
    const reader = request.body.getReader({ mode: "byob" });
    let buffer = new Uint8Array(PART);
    let n = 0;
    for (;;) {
      const { done, value } = await reader.read(buffer);
      if (done) break;
      n += value.byteLength;
      buffer = new Uint8Array(value.buffer);
      if (n > size) throw new Error("body longer than " + size);
    }
    return { seconds: (Date.now() - t0) / 1000, bytes: n };
  }
  throw new Error("unknown step " + name);
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    try {
      const size = Number(url.searchParams.get("size"));
      return Response.json(await step(url.pathname.slice(1), size, env.BUCKET, request));
    } catch (error) {
      return new Response(String(error && error.stack || error), { status: 500 });
    }
  },
};
`;

/** One request to the Worker over HTTP; resolves { result, wall } (wall: seconds seen from Node). */
function call(base, name, body) {
  const url = new URL(`/${name}?size=${size}`, base);
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = http.request(url, {
      method: body ? "POST" : "GET",
      headers: body ? { "Content-Length": String(size) } : {},
      agent: false,
    });
    // Bounded: 10 minutes plus 1 s per MB would mean something is badly wrong.
    req.setTimeout(600_000 + size / 1000, () => req.destroy(new Error(`${name}: timed out`)));
    req.on("error", reject);
    req.on("response", (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => (text += chunk));
      res.on("end", () => {
        if (res.statusCode !== 200) return reject(new Error(`${name}: HTTP ${res.statusCode}: ${text}`));
        resolve({ result: JSON.parse(text), wall: (performance.now() - t0) / 1000 });
      });
    });
    if (!body) return req.end();
    // The same 1 MiB chunk over and over, with backpressure: the client costs next to nothing.
    const chunk = Buffer.alloc(MiB, 0xa5);
    let sent = 0;
    const write = () => {
      while (sent < size) {
        sent += MiB;
        if (!req.write(chunk)) return req.once("drain", write);
      }
      req.end();
    };
    write();
  });
}

const STEPS = [
  ["put", "(a) put() of one in-memory Uint8Array"],
  ["multipart", "(b) multipart upload, sequential 16 MiB parts"],
  ["read-multipart", "(c) read (b) back, 16 MiB ranged get()s"],
  ["read-single", "(d) read (a) back, one get()"],
  ["body", "(e) read a request body from Node (no R2)"],
  // Not a floor of its own: tells whether (c) is slow because of the ranges or the parts.
  ["read-single-ranged", "(f) read (a) back, 16 MiB ranged get()s"],
];

const dir = await mkdtemp(join(tmpdir(), "edge-r2-floor-"));
const mf = new Miniflare({
  modules: true,
  script: WORKER,
  compatibilityDate: "2026-04-26",
  r2Buckets: ["BUCKET"],
  r2Persist: join(dir, "r2"),
  host: "127.0.0.1",
  port: 0,
});
const stop = async () => {
  await mf.dispose().catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
};
process.once("SIGINT", () => void stop().then(() => process.exit(130)));
process.once("SIGTERM", () => void stop().then(() => process.exit(143)));

try {
  const base = await mf.ready;
  const rows = [];
  for (const [name, label] of STEPS) {
    console.error(`# ${label} ...`);
    const { result, wall } = await call(base, name, name === "body");
    if (result.bytes !== size) throw new Error(`${name}: ${result.bytes} bytes, expected ${size}`);
    rows.push(
      `| ${label} | ${result.seconds.toFixed(2)} | ${(size / 1e6 / result.seconds).toFixed(1)} | ${wall.toFixed(2)} |`,
    );
  }
  console.log(
    [
      `R2 simulator floor, ${sizeMiB} MiB (miniflare ${createRequire(import.meta.url)("miniflare/package.json").version}):`,
      "",
      "| step | seconds (in the Worker) | MB/s | request wall s (from Node) |",
      "| --- | --- | --- | --- |",
      ...rows,
    ].join("\n"),
  );
} finally {
  await stop();
}
