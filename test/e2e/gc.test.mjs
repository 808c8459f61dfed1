// End-to-end: online garbage collection against `npm start`, driven by `npm run gc --
// --url` (scripts/gc.mjs) as an operator runs it. Two images that share exactly one layer
// are pushed with skopeo to two repositories; image A's manifest is deleted by digest;
// a dry run lists what would go, and the real run removes exactly that: A's unshared
// layers, its config and its manifest's bytes, reporting their summed size. B still pulls
// byte for byte, the shared layer stays readable through B's repository, a second run
// reclaims nothing, and the integrity check (scripts/verify.mjs) finds nothing wrong.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  createClients,
  descriptorFor,
  fetchHashed,
  fetchWithTimeout,
  haveCommand,
  insertRandomLayer,
  layoutBlobs,
  makeTempDir,
  readBlob,
  removeTempDir,
  ROOT,
  run,
  startRegistry,
  skopeoCopy as copyWithSkopeo,
} from "./harness.mjs";

const KiB = 1024;
const ADMIN_TOKEN = randomBytes(24).toString("hex");
const REPO_A = "gc/app-a";
const REPO_B = "gc/app-b";
const TAG = "v1";
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";

let registry;
let clients;
let work;
/** Per image: { layout, tag, descriptor, manifest, blobs: Map digest -> size (manifest included) }. */
let imageA;
let imageB;
let sharedLayer;
/** A's blobs no other image uses: Map digest -> size (unshared layers, config, manifest). */
let uniqueA;
/** The blob digests the dry run listed. */
let dryRunBlobs;

/** Runs scripts/gc.mjs against the registry with the admin token; resolves its output. */
async function gc(...args) {
  const result = await run(process.execPath, [join(ROOT, "scripts", "gc.mjs"), "--url", registry.url, ...args], {
    env: { ...process.env, ADMIN_TOKEN },
    cwd: ROOT,
    timeoutMs: 120_000,
    context: () => registry.logTail(),
  });
  return result.stdout.toString("utf8");
}

/** A --json run: its report, which must say the run finished. */
async function gcJson(...args) {
  const out = await gc(...args, "--json");
  const report = JSON.parse(out);
  assert.equal(report.status, "done", `gc run did not finish: ${out}\n${registry.logTail()}`);
  return report;
}

/** The blobs a report lists: Map digest -> size. */
function reportedBlobs(report) {
  const blobs = report.items.filter((item) => item.kind === "blob");
  const map = new Map(blobs.map((item) => [item.name, item.size]));
  assert.equal(map.size, blobs.length, `a blob is listed twice: ${JSON.stringify(blobs)}`);
  return map;
}

function sortedEntries(map) {
  return [...map.entries()].sort(([a], [b]) => a.localeCompare(b));
}

function sum(map) {
  return [...map.values()].reduce((total, size) => total + size, 0);
}

/** The image tagged `tag` in `layout`: its descriptor, parsed manifest and every blob with its size. */
async function describeImage(layout, tag) {
  const descriptor = await descriptorFor(layout, tag);
  const manifest = JSON.parse((await readBlob(layout, descriptor.digest)).toString("utf8"));
  const blobs = new Map([[descriptor.digest, descriptor.size]]);
  for (const blob of [manifest.config, ...manifest.layers]) blobs.set(blob.digest, blob.size);
  return { layout, tag, descriptor, manifest, blobs };
}

/**
 * One OCI layout holding images A and B: a base image with one layer (the shared one),
 * tagged a and b, then a layer of its own inserted into each (two into A, one into B),
 * so each has its own config and manifest. Layers are random bytes, so no two are alike.
 */
async function buildSharedLayout() {
  const layout = join(work, "layout");
  const insert = async (tag, index, size) => {
    const file = join(work, `${tag}-layer${index}.bin`);
    await insertRandomLayer(clients, `${layout}:${tag}`, file, size, {
      createdBy: `gc e2e ${tag} ${index}`,
      path: `/data/${tag}-${index}.bin`,
    });
    await rm(file);
  };
  await clients.umoci("init", "--layout", layout);
  await clients.umoci("new", "--image", `${layout}:base`);
  await insert("base", 0, 64 * KiB + 11);
  await clients.umoci("tag", "--image", `${layout}:base`, "a");
  await clients.umoci("tag", "--image", `${layout}:base`, "b");
  await clients.umoci("rm", "--image", `${layout}:base`);
  await insert("a", 1, 96 * KiB + 5);
  await insert("a", 2, 20 * KiB + 3);
  await insert("b", 1, 48 * KiB + 7);
  await clients.umoci("gc", "--layout", layout);
  return layout;
}

function skopeoCopy(source, destination) {
  return copyWithSkopeo(clients, source, destination, { timeoutMs: 120_000 });
}

describe("garbage collection (npm run gc -- --url)", { timeout: 600_000 }, () => {
  before(async () => {
    const missing = ["skopeo", "umoci", "unshare"].filter((command) => !haveCommand(command));
    assert.deepEqual(missing, [], `missing client tools (see .ci/run): ${missing.join(", ")}`);
    registry = await startRegistry({ env: { ADMIN_TOKEN } });
    clients = await createClients(registry);
    work = await makeTempDir("gc-work");

    const layout = await buildSharedLayout();
    imageA = await describeImage(layout, "a");
    imageB = await describeImage(layout, "b");
    // Exactly one layer in common, and nothing else.
    const common = [...imageA.blobs.keys()].filter((digest) => imageB.blobs.has(digest));
    assert.equal(common.length, 1, `images share ${common.length} blobs: ${common.join(", ")}`);
    [sharedLayer] = common;
    assert.equal(sharedLayer, imageA.manifest.layers[0].digest);
    assert.equal(sharedLayer, imageB.manifest.layers[0].digest);
    assert.equal(imageA.manifest.layers.length, 3);
    assert.equal(imageB.manifest.layers.length, 2);
    uniqueA = new Map([...imageA.blobs].filter(([digest]) => digest !== sharedLayer));
    assert.equal(uniqueA.size, 4, "A: two layers, a config and a manifest of its own");

    await skopeoCopy(`oci:${layout}:a`, `docker://${registry.clientHost}/${REPO_A}:${TAG}`);
    await skopeoCopy(`oci:${layout}:b`, `docker://${registry.clientHost}/${REPO_B}:${TAG}`);
  });

  after(async () => {
    await clients?.dispose();
    await registry?.stop();
    if (work) await removeTempDir(work);
  });

  it("the admin endpoint wants the admin token", async () => {
    for (const headers of [{}, { Authorization: "Bearer not-the-token" }]) {
      const started = await fetchWithTimeout(`${registry.url}/_admin/gc?dry-run=1`, { method: "POST", headers });
      assert.ok([401, 403].includes(started.status), `POST /_admin/gc answered ${started.status}`);
      const status = await fetchWithTimeout(`${registry.url}/_admin/gc`, { headers });
      assert.ok([401, 403].includes(status.status), `GET /_admin/gc answered ${status.status}`);
    }
  });

  it("deletes A's manifest by digest", async () => {
    const url = `${registry.url}/v2/${REPO_A}/manifests/${imageA.descriptor.digest}`;
    const deleted = await fetchWithTimeout(url, { method: "DELETE" });
    assert.equal(deleted.status, 202, `DELETE ${url}: ${deleted.body.toString()}`);
    const gone = await fetchWithTimeout(url, { method: "HEAD", headers: { Accept: OCI_MANIFEST } });
    assert.equal(gone.status, 404, `HEAD ${url} after DELETE`);
    // Until a run, every blob is still there.
    for (const digest of imageA.blobs.keys()) {
      if (digest === imageA.descriptor.digest) continue;
      const head = await fetchWithTimeout(`${registry.url}/v2/${REPO_A}/blobs/${digest}`, { method: "HEAD" });
      assert.equal(head.status, 200, `HEAD ${REPO_A} blob ${digest} before gc`);
    }
  });

  it("a dry run lists exactly A's unshared blobs and removes nothing", async () => {
    const report = await gcJson("--dry-run", "--grace", "0");
    assert.equal(report.dryRun, true);
    dryRunBlobs = reportedBlobs(report);
    assert.deepEqual(sortedEntries(dryRunBlobs), sortedEntries(uniqueA), `dry run: ${JSON.stringify(report.items)}`);
    assert.equal(report.blobsRemoved, uniqueA.size);
    assert.equal(report.bytesReclaimed, sum(uniqueA));
    // Nothing went: A's layers are still linked in A's repository.
    for (const layer of imageA.manifest.layers) {
      const head = await fetchWithTimeout(`${registry.url}/v2/${REPO_A}/blobs/${layer.digest}`, { method: "HEAD" });
      assert.equal(head.status, 200, `HEAD ${REPO_A} blob ${layer.digest} after a dry run`);
    }

    // The human report says the same, with the list.
    const text = await gc("--dry-run", "--grace", "0");
    assert.match(text, /^dry run: scanned /m, text);
    assert.match(text, new RegExp(`would remove .*${uniqueA.size} blobs.*: ${sum(uniqueA)} bytes`), text);
    for (const [digest, size] of uniqueA) {
      assert.match(text, new RegExp(`^\\s+blob\\s+${digest}\\s+${size} bytes$`, "m"), text);
    }
  });

  it("the run removes exactly what the dry run listed and reports its size", async () => {
    const report = await gcJson("--grace", "0");
    assert.equal(report.dryRun, false);
    const removed = reportedBlobs(report);
    assert.deepEqual(sortedEntries(removed), sortedEntries(dryRunBlobs), `run: ${JSON.stringify(report.items)}`);
    assert.deepEqual(sortedEntries(removed), sortedEntries(uniqueA));
    assert.ok(report.bytesReclaimed > 0);
    assert.equal(report.bytesReclaimed, sum(uniqueA));
    assert.equal(report.blobsRemoved, uniqueA.size);
    assert.equal(report.removed.blobs, uniqueA.size);
    assert.equal(report.removed.orphans, 0);
    assert.equal(report.removed.tags, 0, "no retention rules: no tag goes");
    assert.equal(report.removed.manifests, 0, "A's manifest was deleted already");
    // A's repository loses every layer link (no manifest there uses any), B's none.
    const links = report.items.filter((item) => item.kind === "link").map((item) => item.name);
    assert.ok(
      links.every((name) => name.startsWith(`${REPO_A}@`)),
      `links removed: ${links.join(", ")}`,
    );
    for (const layer of imageA.manifest.layers)
      assert.ok(links.includes(`${REPO_A}@${layer.digest}`), links.join(", "));
  });

  it("B still pulls byte for byte; A's blobs are gone; the shared layer stays", async () => {
    const out = join(work, "b-pulled");
    await skopeoCopy(`docker://${registry.clientHost}/${REPO_B}:${TAG}`, `oci:${out}:${TAG}`);
    const pulled = await descriptorFor(out, TAG);
    assert.equal(pulled.digest, imageB.descriptor.digest);
    assert.equal(pulled.size, imageB.descriptor.size);
    // layoutBlobs re-hashes every file against its name.
    assert.deepEqual(sortedEntries(await layoutBlobs(out)), sortedEntries(imageB.blobs));

    for (const digest of uniqueA.keys()) {
      const url = `${registry.url}/v2/${REPO_A}/blobs/${digest}`;
      const head = await fetchWithTimeout(url, { method: "HEAD" });
      assert.equal(head.status, 404, `HEAD ${url} after gc`);
    }
    const manifest = await fetchWithTimeout(`${registry.url}/v2/${REPO_A}/manifests/${imageA.descriptor.digest}`, {
      method: "HEAD",
      headers: { Accept: OCI_MANIFEST },
    });
    assert.equal(manifest.status, 404);
    const sharedInA = await fetchWithTimeout(`${registry.url}/v2/${REPO_A}/blobs/${sharedLayer}`, { method: "HEAD" });
    assert.equal(sharedInA.status, 404, "A's link to the shared layer went with A's manifest");

    const shared = await fetchHashed(`${registry.url}/v2/${REPO_B}/blobs/${sharedLayer}`, {}, 60_000);
    assert.equal(shared.status, 200);
    assert.equal(`sha256:${shared.hex}`, sharedLayer);
    assert.equal(shared.size, imageB.blobs.get(sharedLayer));
  });

  it("a second run reclaims nothing", async () => {
    const report = await gcJson("--grace", "0");
    assert.equal(report.blobsRemoved, 0, JSON.stringify(report.items));
    assert.equal(report.bytesReclaimed, 0);
    assert.deepEqual(report.removed, { tags: 0, manifests: 0, links: 0, blobs: 0, orphans: 0 });
    assert.deepEqual(report.items, []);

    const text = await gc("--grace", "0");
    assert.match(text, /^removed 0 tags, 0 manifests, 0 links, 0 blobs, 0 orphaned objects: 0 bytes/m, text);
  });

  it("the integrity check finds nothing wrong", async () => {
    const result = await run(process.execPath, [join(ROOT, "scripts", "verify.mjs"), "--url", registry.url], {
      env: { ...process.env, ADMIN_TOKEN },
      cwd: ROOT,
      timeoutMs: 120_000,
      check: false,
      context: () => registry.logTail(),
    });
    const text = result.stdout.toString("utf8");
    assert.equal(result.code, 0, `verify exited ${result.code}:\n${text}\n${result.stderr}`);
    assert.match(text, /^ok: nothing inconsistent$/m, text);
  });
});
