// V8's sampling profiler in a Worker's isolate, over workerd's inspector (the Chrome
// DevTools Protocol), and the self time per function of its profiles, named by the
// `// src/…` markers of the wrangler bundle. Used by bench/request-cpu.mjs and
// bench/isolate-cpu.mjs (--profile).
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { ROOT, expectStatus, request } from "./lib.mjs";

function webSocketClass() {
  try {
    return createRequire(join(ROOT, "package.json"))("ws");
  } catch {
    throw new Error("--profile needs the `ws` package (wrangler and miniflare depend on it): run `npm ci`");
  }
}

/** The isolates of the workerd listening on `port` (the user Worker's is `core:user:<name>`; the others Miniflare's). */
export async function inspectorTargets(port) {
  const list = await request(`http://127.0.0.1:${port}/json/list`, { timeoutMs: 5000 });
  expectStatus("inspector /json/list", list, 200);
  const targets = JSON.parse(list.body.toString("utf8"));
  if (!targets.some((entry) => entry.id.startsWith("core:user:")))
    throw new Error(`no user Worker among the inspector's targets: ${list.body.toString("utf8")}`);
  return targets.map((entry) => entry.id);
}

/** A Chrome DevTools Protocol session with isolate `id` of the workerd listening on `port`. */
export async function inspectIsolate(port, id) {
  const WebSocket = webSocketClass();
  const socket = new WebSocket(`ws://127.0.0.1:${port}/${id}`);
  await new Promise((resolveOpen, rejectOpen) => {
    const timer = setTimeout(() => rejectOpen(new Error("inspector: no connection within 10 s")), 10_000);
    socket.once("open", () => (clearTimeout(timer), resolveOpen()));
    socket.once("error", (error) => (clearTimeout(timer), rejectOpen(error)));
  });
  let nextId = 0;
  const pending = new Map();
  socket.on("message", (data) => {
    const message = JSON.parse(data.toString("utf8"));
    const waiting = pending.get(message.id);
    if (!waiting) return;
    pending.delete(message.id);
    if (message.error) waiting.reject(new Error(`inspector: ${JSON.stringify(message.error)}`));
    else waiting.resolve(message.result);
  });
  return {
    send(method, params = {}, timeoutMs = 30_000) {
      const id = ++nextId;
      return new Promise((resolveSend, rejectSend) => {
        const timer = setTimeout(() => {
          pending.delete(id);
          rejectSend(new Error(`inspector: ${method} unanswered after ${timeoutMs} ms`));
        }, timeoutMs);
        pending.set(id, {
          resolve: (result) => (clearTimeout(timer), resolveSend(result)),
          reject: (error) => (clearTimeout(timer), rejectSend(error)),
        });
        socket.send(JSON.stringify({ id, method, params }));
      });
    },
    close: () => socket.close(),
  };
}

/**
 * Runs `work` with V8's sampling profiler on in the user Worker's isolate, a sample every
 * `intervalUs`; resolves its profile. Only that isolate: workerd runs all of its isolates on one thread, and a call
 * into a binding (R2, KV, the entry worker's fetch) runs Miniflare's simulator nested in
 * the caller's native frame, so profiles of several isolates overlap and do not add up.
 */
export async function profiled(port, work, intervalUs) {
  const id = (await inspectorTargets(port)).find((candidate) => candidate.startsWith("core:user:"));
  const inspector = await inspectIsolate(port, id);
  try {
    await inspector.send("Profiler.enable");
    await inspector.send("Profiler.setSamplingInterval", { interval: intervalUs });
    await inspector.send("Profiler.start");
    await work();
    const { profile } = await inspector.send("Profiler.stop", {}, 120_000);
    await inspector.send("Profiler.disable");
    return profile;
  } finally {
    inspector.close();
  }
}

/** [line, source file] of every `// src/…` or `// node_modules/…` marker of a wrangler bundle, by line. */
export function bundleSections(path) {
  const sections = [];
  if (!path || !existsSync(path)) return sections;
  readFileSync(path, "utf8")
    .split("\n")
    .forEach((line, index) => {
      const marker = /^\/\/ ((?:src|node_modules|\.\.)\/\S+)$/.exec(line);
      if (marker) sections.push([index, marker[1].replace(/^(\.\.\/)+/, "").replace(/^.*node_modules\//, "")]);
    });
  return sections;
}

export function sourceOf(sections, line) {
  let low = 0;
  let high = sections.length - 1;
  let found = "";
  while (low <= high) {
    const middle = (low + high) >> 1;
    if (sections[middle][0] <= line) {
      found = sections[middle][1];
      low = middle + 1;
    } else high = middle - 1;
  }
  return found;
}

/**
 * Adds a profile's self time per function (µs) into `into` (Map name -> µs); returns the
 * profile's µs (idle left out). A function is named by its source file in the bundle
 * (`sections`) when `inBundle(url)` says its script is the bundle, else by its script.
 */
export function addSelfTimes(profile, sections, into, inBundle = () => true) {
  const nodes = new Map(profile.nodes.map((node) => [node.id, node]));
  let time = profile.startTime;
  const stamps = profile.timeDeltas.map((delta) => (time += delta));
  let busy = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const spent = (i + 1 < stamps.length ? stamps[i + 1] : profile.endTime) - stamps[i];
    const frame = nodes.get(profile.samples[i])?.callFrame;
    if (!frame || frame.functionName === "(idle)") continue;
    const file = frame.url
      ? (inBundle(frame.url) && sourceOf(sections, frame.lineNumber)) || frame.url.replace(/^.*\//, "")
      : "";
    const name = `${frame.functionName || "(anonymous)"}${file ? ` (${file})` : frame.functionName.startsWith("(") ? "" : " (native)"}`;
    into.set(name, (into.get(name) ?? 0) + spent);
    busy += spent;
  }
  return busy;
}

/** Writes the Worker's profile as <dir>/<target>.<kind>.r<round>.cpuprofile (Chrome DevTools opens it). */
export function saveProfile(dir, target, kind, round, profile) {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `${slug(target.label)}.${kind.key}.r${round + 1}.cpuprofile`), JSON.stringify(profile));
}

/** A target's label as a file name's part. */
export function slug(label) {
  return label.replace(/[^a-z0-9.-]+/gi, "-").toLowerCase();
}
