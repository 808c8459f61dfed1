// What bench/request-cpu.mjs and bench/isolate-cpu.mjs share: the tiny image both push
// (bench/tiny:v1, a config and one 4 KiB layer) through the HTTP API, the small pull
// requests both measure, and the paired comparison of bursts both report.
import { createHash, randomBytes } from "node:crypto";
import { expectStatus, parseTiming, request } from "./lib.mjs";

export const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const CONFIG = "application/vnd.oci.image.config.v1+json";
const LAYER = "application/vnd.oci.image.layer.v1.tar";
export const REPOSITORY = "bench/tiny";
export const TAG = "v1";
const LAYER_BYTES = 4096;
export const REQUEST_TIMEOUT_MS = 30_000;

export const sha256 = (bytes) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
export const basic = (user, password) => `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;

async function pushBlob(server, authorization, bytes) {
  const post = await request(`${server.url}/v2/${REPOSITORY}/blobs/uploads/`, {
    method: "POST",
    headers: { Authorization: authorization, "Content-Length": "0" },
    timeoutMs: REQUEST_TIMEOUT_MS,
  });
  expectStatus("POST upload", post, 202);
  const location = new URL(post.headers.location, server.url);
  location.searchParams.set("digest", sha256(bytes));
  const put = await request(location.toString(), {
    method: "PUT",
    headers: {
      Authorization: authorization,
      "Content-Length": String(bytes.length),
      "Content-Type": "application/octet-stream",
    },
    body: bytes,
    timeoutMs: REQUEST_TIMEOUT_MS,
  });
  expectStatus("PUT upload", put, 201);
  return { digest: sha256(bytes), size: bytes.length, timings: { post: timingOf(post), put: timingOf(put) } };
}

/** Pushes bench/tiny:v1 (a config and one 4 KiB layer); the Server-Timing of the layer's upload and the manifest PUT. */
export async function pushImage(server, authorization) {
  const config = await pushBlob(server, authorization, Buffer.from(JSON.stringify({ os: "linux", rootfs: {} })));
  const layer = await pushBlob(server, authorization, randomBytes(LAYER_BYTES));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: CONFIG, digest: config.digest, size: config.size },
      layers: [{ mediaType: LAYER, digest: layer.digest, size: layer.size }],
    }),
  );
  const put = await request(`${server.url}/v2/${REPOSITORY}/manifests/${TAG}`, {
    method: "PUT",
    headers: { Authorization: authorization, "Content-Type": OCI_MANIFEST },
    body: manifest,
    timeoutMs: REQUEST_TIMEOUT_MS,
  });
  expectStatus("PUT manifest", put, 201);
  return {
    manifest: { digest: sha256(manifest), bytes: manifest },
    layer,
    timings: {
      "blob upload: POST": layer.timings.post,
      "blob upload: PUT ?digest=": layer.timings.put,
      "manifest PUT (by tag)": timingOf(put),
    },
  };
}

/** The four kinds, each: method, path, headers, and a check of one answer. */
export function requestKinds(image) {
  const accept = { Accept: OCI_MANIFEST };
  return [
    {
      key: "head-manifest",
      name: "HEAD manifest by tag",
      method: "HEAD",
      path: `/v2/${REPOSITORY}/manifests/${TAG}`,
      headers: accept,
      check: (answer) => {
        const digest = answer.headers["docker-content-digest"];
        if (digest !== image.manifest.digest) throw new Error(`HEAD manifest: digest ${digest}`);
      },
    },
    {
      key: "get-manifest",
      name: "GET manifest by digest",
      method: "GET",
      path: `/v2/${REPOSITORY}/manifests/${image.manifest.digest}`,
      headers: accept,
      check: (answer) => {
        if (!answer.body.equals(image.manifest.bytes)) throw new Error("GET manifest: other bytes");
      },
    },
    {
      key: "get-manifest-tag",
      name: "GET manifest by tag",
      method: "GET",
      path: `/v2/${REPOSITORY}/manifests/${TAG}`,
      headers: accept,
      check: (answer) => {
        if (!answer.body.equals(image.manifest.bytes)) throw new Error("GET manifest by tag: other bytes");
      },
    },
    {
      key: "head-blob",
      name: "HEAD blob",
      method: "HEAD",
      path: `/v2/${REPOSITORY}/blobs/${image.layer.digest}`,
      headers: {},
      check: (answer) => {
        const length = Number(answer.headers["content-length"]);
        if (length !== image.layer.size) throw new Error(`HEAD blob: Content-Length ${length}`);
      },
    },
    {
      key: "tags-list",
      name: "GET tags/list",
      method: "GET",
      path: `/v2/${REPOSITORY}/tags/list`,
      headers: {},
      check: (answer) => {
        const tags = JSON.parse(answer.body.toString("utf8")).tags;
        if (!Array.isArray(tags) || !tags.includes(TAG)) throw new Error(`tags/list: ${JSON.stringify(tags)}`);
      },
    },
  ];
}

/** The storage calls a Server-Timing header names (`desc` of each metric, durations left out), or "–". */
export function timingOf(answer) {
  const timing = parseTiming(answer.headers["server-timing"]);
  const text = Object.entries(timing)
    .map(([name, desc]) => `${name}=${desc}`)
    .join(" ");
  return text || "–";
}

export async function checkedRequest(server, kind, authorization) {
  const answer = await request(`${server.url}${kind.path}`, {
    method: kind.method,
    headers: { ...kind.headers, Authorization: authorization },
    timeoutMs: REQUEST_TIMEOUT_MS,
  });
  expectStatus(kind.name, answer, 200);
  kind.check(answer);
  return timingOf(answer);
}

export const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};

/** A deterministic PRNG (mulberry32): the bootstrap draws the same resamples from the same figures. */
function seededRandom(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const BOOTSTRAP_RESAMPLES = 2000;

/**
 * Bursts paired by turn: the targets take turns burst by burst, so burst i of one and
 * burst i of another ran back to back, under the same load. The median of the ratios
 * `other[i] ÷ first[i]` (over every round) and a 95 % bootstrap interval for it: what the
 * machine's drift (rounds of the same code differ by a fifth) does to both cancels out.
 */
export function pairedRatio(first, other) {
  const ratios = [];
  for (let i = 0; i < Math.min(first.length, other.length); i++) {
    const ratio = other[i] / first[i];
    if (Number.isFinite(ratio) && ratio > 0) ratios.push(ratio);
  }
  if (ratios.length === 0) return undefined;
  const random = seededRandom(0x5eed);
  const medians = [];
  for (let draw = 0; draw < BOOTSTRAP_RESAMPLES; draw++) {
    medians.push(median(Array.from({ length: ratios.length }, () => ratios[Math.floor(random() * ratios.length)])));
  }
  medians.sort((a, b) => a - b);
  return {
    median: median(ratios),
    low: medians[Math.floor(0.025 * BOOTSTRAP_RESAMPLES)],
    high: medians[Math.ceil(0.975 * BOOTSTRAP_RESAMPLES) - 1],
    pairs: ratios.length,
  };
}

/** A pairedRatio as the benches print it: `median [low, high], N pairs`, or "–" when there were none. */
export function pairedText(paired) {
  return paired
    ? `${paired.median.toFixed(3)} [${paired.low.toFixed(3)}, ${paired.high.toFixed(3)}], ${paired.pairs} pairs`
    : "–";
}
