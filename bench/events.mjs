#!/usr/bin/env node
// Events and webhooks (docs/performance.md, "Events"): what events cost a push and a pull,
// and how long a delivery takes.
//
//   node bench/events.mjs                 30 pushes and 30 pulls per registry, 2 × 1 000 events
//   node bench/events.mjs --quick         5 pushes, 5 pulls, 100 events: does it work
//   node bench/events.mjs --pushes 50 --events 2000
//
// Three registries as `npm start` runs them (bench/lib.mjs startEdgeRegistry; the EVENTS
// queue and D1 in Miniflare), on 127.0.0.1, with a webhook receiver (a node server here,
// checking every signature) on 127.0.0.1:
//   off     no WEBHOOKS (events off: no listener registered)
//   on      one CloudEvents endpoint, pull events off
//   pulls   the same endpoint with pullEvents: true
// Timed, one after another on each registry: a push (config and layer blobs, each one
// monolithic POST ?digest=, then the manifest PUT; about 4 KiB in all), and a pull of it
// (GET manifest by tag, GET layer). For each, the wall time and the storage calls of its
// requests (their Server-Timing: r2, kv, do, queue sends), and the events the receiver
// got per push (the blob commits are sent by the upload's Durable Object, whose calls the
// Worker's Server-Timing does not show). Then on `on`, twice: `--events` tag PUTs of one
// manifest, one at a time, then 8 at a time, each a manifest.put event, and the delay from
// the event's time (when its change was committed, in the Worker) to its arrival at the
// receiver: p50, p99, max, and the rate the receiver got them at.
//
// Markdown report on stdout, progress on stderr. Every wait is bounded; servers and temp
// dirs are removed at the end.
import { createHash, createHmac, randomBytes } from "node:crypto";
import { createServer } from "node:http";
import { performance } from "node:perf_hooks";
import { setTimeout as delay } from "node:timers/promises";
import {
  expectStatus,
  markdownTable,
  parseCommandLine,
  parseTiming,
  reportFacts,
  request,
  startEdgeRegistry,
} from "./lib.mjs";

const options = parseCommandLine(
  {
    quick: { type: "boolean" },
    pushes: { type: "string" },
    events: { type: "string" },
  },
  () => "usage: node bench/events.mjs [--quick] [--pushes N] [--events N]",
);
const PUSHES = Number(options.pushes ?? (options.quick ? 5 : 30));
const EVENTS = Number(options.events ?? (options.quick ? 100 : 1000));
const CONCURRENCY = 8;
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const KEY = randomBytes(32);
const SECRET = `whsec_${KEY.toString("base64")}`;

const log = (...args) => console.error(...args);

/** The receiver: verifies each delivery's signature, keeps its arrival time by event id. */
async function startReceiver() {
  const arrivals = new Map();
  let badSignatures = 0;
  let repeats = 0;
  const server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      const arrived = Date.now();
      const body = Buffer.concat(chunks).toString("utf8");
      const id = req.headers["webhook-id"];
      const mac = createHmac("sha256", KEY)
        .update(`${id}.${req.headers["webhook-timestamp"]}.${body}`)
        .digest("base64");
      if (req.headers["webhook-signature"] !== `v1,${mac}`) badSignatures++;
      if (arrivals.has(id)) repeats++;
      else arrivals.set(id, { arrived, event: JSON.parse(body) });
      res.writeHead(204).end();
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/hooks`,
    arrivals,
    badSignatures: () => badSignatures,
    repeats: () => repeats,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

const sha256 = (bytes) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

/** The storage calls of some answers, summed from their Server-Timing. */
function calls(responses) {
  const total = { r2: 0, kv: 0, do: 0, queue: 0 };
  for (const response of responses) {
    const timing = parseTiming(response.headers["server-timing"]);
    for (const key of Object.keys(total)) total[key] += typeof timing[key] === "number" ? timing[key] : 0;
  }
  return total;
}

/** Pushes a small image (two blobs, a manifest) as `name:tag`; its time and storage calls. */
async function pushImage(registry, name, tag) {
  const config = Buffer.from(
    JSON.stringify({ architecture: "amd64", os: "linux", seed: randomBytes(8).toString("hex") }),
  );
  const layer = randomBytes(4096);
  const started = performance.now();
  const responses = [];
  for (const blob of [config, layer]) {
    const response = await request(`${registry.url}/v2/${name}/blobs/uploads/?digest=${sha256(blob)}`, {
      method: "POST",
      headers: { "Content-Length": String(blob.length) },
      body: blob,
    });
    expectStatus("blob upload", response, 201);
    responses.push(response);
  }
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: sha256(config), size: config.length },
      layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", digest: sha256(layer), size: layer.length }],
    }),
  );
  const put = await request(`${registry.url}/v2/${name}/manifests/${tag}`, {
    method: "PUT",
    headers: { "Content-Type": OCI_MANIFEST, "Content-Length": String(manifest.length) },
    body: manifest,
  });
  expectStatus("manifest PUT", put, 201);
  responses.push(put);
  return { ms: performance.now() - started, calls: calls(responses), manifest, layer: sha256(layer) };
}

async function pullImage(registry, name, tag, layer) {
  const started = performance.now();
  const manifest = await request(`${registry.url}/v2/${name}/manifests/${tag}`, { headers: { Accept: OCI_MANIFEST } });
  expectStatus("manifest GET", manifest, 200);
  const blob = await request(`${registry.url}/v2/${name}/blobs/${layer}`);
  expectStatus("blob GET", blob, 200);
  return { ms: performance.now() - started, calls: calls([manifest, blob]) };
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const percentile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
};
const perOp = (runs, key) => (runs.reduce((sum, run) => sum + run.calls[key], 0) / runs.length).toFixed(2);

const receiver = await startReceiver();
const endpoint = { name: "bench", url: receiver.url, secret: SECRET };
const servers = {};
try {
  log("starting the registries (off, on, pulls)…");
  const [off, on, pulls] = await Promise.all([
    startEdgeRegistry(),
    startEdgeRegistry({ settings: { WEBHOOKS: JSON.stringify([endpoint]) } }),
    startEdgeRegistry({ settings: { WEBHOOKS: JSON.stringify([{ ...endpoint, pullEvents: true }]) } }),
  ]);
  Object.assign(servers, { off, on, pulls });

  // Round-robin over the registries, so that a change in the machine's load touches all three alike.
  log(`${PUSHES} pushes and pulls on each, in turn…`);
  const results = Object.fromEntries(Object.keys(servers).map((label) => [label, { pushes: [], pullRuns: [] }]));
  for (let index = 0; index < PUSHES; index++) {
    for (const [label, registry] of Object.entries(servers)) {
      const pushed = await pushImage(registry, `bench/${label}-${index}`, "v1");
      results[label].pushes.push(pushed);
      results[label].pullRuns.push(await pullImage(registry, `bench/${label}-${index}`, "v1", pushed.layer));
    }
  }
  // What the receiver got of each push (its blob commits are sent by the upload's Durable
  // Object, behind the `do` call: the Worker's Server-Timing counts the manifest's send only).
  await delay(3000);
  const eventsOf = (label) =>
    [...receiver.arrivals.values()].filter(
      ({ event }) => event.data.repository?.startsWith(`bench/${label}-`) && !event.type.endsWith(".pull"),
    ).length;
  const rows = [];
  for (const [label, { pushes, pullRuns }] of Object.entries(results)) {
    for (const [what, runs] of [
      ["push (2 blobs + manifest)", pushes],
      ["pull (manifest + layer)", pullRuns],
    ]) {
      const isPush = runs === pushes;
      rows.push([
        label,
        what,
        median(runs.map((run) => run.ms)).toFixed(1),
        perOp(runs, "r2"),
        perOp(runs, "kv"),
        perOp(runs, "do"),
        perOp(runs, "queue"),
        isPush ? (eventsOf(label) / PUSHES).toFixed(2) : "",
      ]);
    }
  }

  /**
   * `EVENTS` tag PUTs of one manifest on `on`, `concurrency` at a time, each a manifest.put
   * event; then, once the receiver has them all (or 2 minutes passed), the delay of each
   * from its event's time (its commit, in the Worker) to its arrival.
   */
  async function deliveries(prefix, concurrency) {
    log(`on: ${EVENTS} manifest.put events (tag PUTs, ${concurrency} at a time)…`);
    const base = results.on.pushes[0];
    const tags = Array.from({ length: EVENTS }, (_, index) => `${prefix}${index}`);
    const repeatsBefore = receiver.repeats();
    const started = Date.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < tags.length) {
          const tag = tags[next++];
          const put = await request(`${on.url}/v2/bench/on-0/manifests/${tag}`, {
            method: "PUT",
            headers: { "Content-Type": OCI_MANIFEST, "Content-Length": String(base.manifest.length) },
            body: base.manifest,
          });
          expectStatus("tag PUT", put, 201);
        }
      }),
    );
    const produced = Date.now() - started;
    const tagged = () =>
      [...receiver.arrivals.values()].filter(
        ({ event }) => event.type === "io.edge-registry.manifest.put" && event.data.tags?.[0]?.startsWith(prefix),
      );
    const deadline = Date.now() + 120_000;
    while (tagged().length < EVENTS && Date.now() < deadline) await delay(100);
    const delivered = tagged();
    const latencies = delivered.map(({ arrived, event }) => arrived - Date.parse(event.time));
    const lastArrival = Math.max(...delivered.map(({ arrived }) => arrived));
    return [
      concurrency,
      `${((EVENTS / produced) * 1000).toFixed(0)}`,
      `${delivered.length}/${EVENTS}`,
      percentile(latencies, 50),
      percentile(latencies, 99),
      Math.max(...latencies),
      ((delivered.length / (lastArrival - started)) * 1000).toFixed(0),
      receiver.repeats() - repeatsBefore,
    ];
  }
  const latencyRows = [await deliveries("serial-", 1), await deliveries("burst-", CONCURRENCY)];

  console.log("# Events and webhooks (bench/events.mjs)\n");
  console.log(reportFacts().join("\n"));
  console.log(
    `- ${PUSHES} pushes and pulls per registry; median wall time; storage calls per operation (Server-Timing)\n`,
  );
  console.log(
    markdownTable(["registry", "operation", "median ms", "r2", "kv", "do", "queue sends", "events delivered"], rows),
  );
  console.log(
    `\nDelivery of ${EVENTS} manifest.put events (tag PUTs) to one CloudEvents endpoint, from the event's time ` +
      `(its commit) to its arrival; bad signatures: ${receiver.badSignatures()}\n`,
  );
  console.log(
    markdownTable(
      [
        "PUTs at a time",
        "events/s produced",
        "delivered",
        "p50 ms",
        "p99 ms",
        "max ms",
        "events/s at the receiver",
        "repeated deliveries",
      ],
      latencyRows,
    ),
  );
  const pullsSent = [...receiver.arrivals.values()].filter(({ event }) => event.type.endsWith(".pull")).length;
  console.log(`\npull events delivered from \`pulls\`: ${pullsSent} (2 per pull expected: ${2 * PUSHES})`);
} finally {
  await Promise.allSettled(Object.values(servers).map((server) => server.stop()));
  await receiver.close();
}
