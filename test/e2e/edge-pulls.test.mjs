// End-to-end: pulls served at the client's location. skopeo, podman and containerd's ctr
// pull the same image twice from `npm start`; on the second pull no blob and no manifest
// by digest is read from R2: every such answer says so in its Server-Timing header (read
// from the front's access log), and the bytes came from the location's cache. A manifest
// deleted here is not served here afterwards.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  buildOciImage,
  createClients,
  fetchWithTimeout,
  haveCommand,
  makeTempDir,
  removeTempDir,
  startContainerd,
  startRegistry,
} from "./harness.mjs";

const MiB = 1 << 20;
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";

let registry;
let clients;
let work;
let image;
const REPOSITORY = "edge/app";

/** The reference clients pull. */
const reference = () => `${registry.clientHost}/${REPOSITORY}:v1`;

/**
 * What a pull asked of the registry, from the access log since `mark`, once it settled (a
 * client's last answer is logged after the client got it: on a loaded machine, after it exited).
 */
async function requestsSince(mark) {
  const entries = (await registry.accessLog.settledSince(mark)).filter((entry) =>
    entry.path.startsWith(`/v2/${REPOSITORY}/`),
  );
  const blobGets = entries.filter((entry) => entry.method === "GET" && entry.path.includes("/blobs/sha256:"));
  const manifestsByDigest = entries.filter((entry) => /\/manifests\/sha256:/.test(entry.path));
  const manifestsByTag = entries.filter((entry) => /\/manifests\/(?!sha256:)/.test(entry.path));
  return { entries, blobGets, manifestsByDigest, manifestsByTag };
}

/**
 * The second pull's answers: blobs and manifests by digest read nothing from R2 (the
 * link from KV, the bytes from the cache), a manifest by tag one R2 read at most (the
 * tag). `minimumBlobGets`: how many blob GETs the client must have made.
 */
function assertWarm(requests, minimumBlobGets) {
  const summary = JSON.stringify(requests.entries.map((entry) => [entry.method, entry.path, entry.serverTiming]));
  assert.ok(requests.blobGets.length >= minimumBlobGets, `expected blob GETs: ${summary}`);
  for (const entry of [...requests.blobGets, ...requests.manifestsByDigest]) {
    assert.equal(entry.status < 400, true, `${entry.method} ${entry.path}: ${entry.status}`);
    assert.equal(entry.timing.r2, 0, `${entry.method} ${entry.path} read R2: ${entry.serverTiming}`);
  }
  for (const entry of requests.blobGets) {
    assert.equal(entry.timing.cache, "hit", `${entry.path}: ${entry.serverTiming}`);
  }
  for (const entry of requests.manifestsByTag) {
    assert.ok(entry.timing.r2 <= 1, `${entry.method} ${entry.path}: ${entry.serverTiming}`);
  }
}

/**
 * Waits (bounded) until this location's cache holds the blobs a pull read: the first pull
 * fills it after each answer went out, in the background, which on a loaded machine can
 * still be running when the client is done. Each probe is a GET like a client's.
 */
async function untilCached(requests) {
  for (const path of new Set(requests.blobGets.map((entry) => entry.path))) {
    for (let attempt = 0; attempt < 40; attempt++) {
      const answer = await fetch(`${registry.url}${path}`);
      await answer.arrayBuffer();
      if (/cache;[^,]*desc="hit"/.test(answer.headers.get("Server-Timing") ?? "")) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
}

describe("pulls from the edge", { timeout: 600_000 }, () => {
  before(async () => {
    const missing = ["skopeo", "podman", "umoci", "unshare"].filter((command) => !haveCommand(command));
    assert.deepEqual(missing, [], `missing client tools (see .ci/run): ${missing.join(", ")}`);
    registry = await startRegistry();
    clients = await createClients(registry);
    work = await makeTempDir("edge-work");
    // A layer over one 16 MiB R2 read slice, and two small ones.
    image = await buildOciImage(clients, work, "edge", [20 * MiB + 7, 300 * 1024, 4096], { tag: "v1" });
    await clients.skopeo(
      "copy",
      "--dest-tls-verify=false",
      "--preserve-digests",
      `oci:${image.layout}:v1`,
      `docker://${reference()}`,
      { timeoutMs: 180_000 },
    );
  });

  after(async () => {
    await clients?.dispose();
    await registry?.stop();
    if (work) await removeTempDir(work);
  });

  it("skopeo: the second pull reads no blob and no manifest by digest from R2", async () => {
    const pull = (target) =>
      clients.skopeo(
        "copy",
        "--src-tls-verify=false",
        "--preserve-digests",
        `docker://${reference()}`,
        `oci:${target}:v1`,
        {
          timeoutMs: 180_000,
        },
      );
    const first = registry.accessLog.mark();
    await pull(join(work, "skopeo-first"));
    await untilCached(await requestsSince(first));
    const mark = registry.accessLog.mark();
    await pull(join(work, "skopeo-second"));
    // The config and three layers.
    assertWarm(await requestsSince(mark), 4);
  });

  it("podman: the second pull (after removing the image) reads nothing by digest from R2", async () => {
    const pull = () => clients.podman("pull", "--tls-verify=false", reference(), { timeoutMs: 180_000 });
    await pull();
    await clients.podman("rmi", "--all", "--force");
    const mark = registry.accessLog.mark();
    await pull();
    assertWarm(await requestsSince(mark), 4);
  });

  it("containerd: a second pull into another namespace reads nothing by digest from R2", async (context) => {
    const containerd = await startContainerd();
    if (!containerd) {
      context.skip("containerd needs root");
      return;
    }
    try {
      const pull = (namespace) =>
        containerd.ctr("--namespace", namespace, "images", "pull", "--plain-http", reference(), { timeoutMs: 180_000 });
      await pull("first");
      // Another namespace has no use of the first one's content: the blobs are fetched again.
      await containerd.ctr("--namespace", "first", "images", "rm", reference());
      await containerd.ctr("--namespace", "first", "content", "prune", "references").catch(() => undefined);
      const mark = registry.accessLog.mark();
      await pull("second");
      assertWarm(await requestsSince(mark), 4);
    } finally {
      await containerd.stop();
    }
  });

  it("every blob answer carries Content-Length, from the cache and from R2 alike", async () => {
    const manifest = JSON.parse(
      (
        await fetchWithTimeout(`${registry.url}/v2/${REPOSITORY}/manifests/v1`, { headers: { Accept: OCI_MANIFEST } })
      ).body.toString("utf8"),
    );
    for (const blob of [manifest.config, ...manifest.layers]) {
      const answer = await fetch(`${registry.url}/v2/${REPOSITORY}/blobs/${blob.digest}`);
      assert.equal(answer.headers.get("content-length"), String(blob.size), blob.digest);
      await answer.arrayBuffer();
    }
  });

  it("a manifest deleted here is not served here afterwards, by digest or by tag", async () => {
    const digest = image.descriptor.digest;
    const byDigest = `${registry.url}/v2/${REPOSITORY}/manifests/${digest}`;
    assert.equal((await fetchWithTimeout(byDigest, { headers: { Accept: OCI_MANIFEST } })).status, 200);
    await clients.skopeo("delete", "--tls-verify=false", `docker://${registry.clientHost}/${REPOSITORY}@${digest}`);
    assert.equal((await fetchWithTimeout(byDigest, { headers: { Accept: OCI_MANIFEST } })).status, 404);
    const byTag = `${registry.url}/v2/${REPOSITORY}/manifests/v1`;
    assert.equal((await fetchWithTimeout(byTag, { headers: { Accept: OCI_MANIFEST } })).status, 404);
  });
});
