// End-to-end: a storage quota of 100 MiB on the namespace `quota` (QUOTAS), against
// `npm start`, with skopeo pushing real layers. Two images fit; the third is refused with
// "quota exceeded" and nothing of its layer is stored (no blob, no data object, no
// multipart upload); deleting an image and collecting brings the usage down, and the
// refused image then goes in; of two pushes racing for the last bytes exactly one wins;
// GET /_admin/usage says what the namespace holds, and `npm run verify` counts the same.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  createClients,
  fetchWithTimeout,
  haveCommand,
  makeTempDir,
  r2Objects,
  removeTempDir,
  ROOT,
  run,
  skopeoCopy,
  startRegistry,
  writeImage,
} from "./harness.mjs";

const MiB = 1024 * 1024;
const LIMIT = 100 * MiB;
const NAMESPACE = "quota";
const ADMIN_TOKEN = randomBytes(24).toString("hex");
const admin = { Authorization: `Bearer ${ADMIN_TOKEN}` };

let registry;
let clients;
let work;
/** Per image: { layout, tag, descriptor, blobs: Map digest -> size (manifest included) }. */
const images = {};

/** An image of one uncompressed layer of random bytes (written by hand: no gzip to wait for). */
function build(name, layerBytes) {
  return writeImage(join(work, name), name, [layerBytes]);
}

function push(image, repository) {
  return skopeoCopy(clients, `oci:${image.layout}:${image.tag}`, `docker://${registry.clientHost}/${repository}:v1`, {
    timeoutMs: 120_000,
  });
}

function sum(blobs) {
  return [...blobs.values()].reduce((total, size) => total + size, 0);
}

/** The namespace's usage as GET /_admin/usage reports it. */
async function usage() {
  const response = await fetchWithTimeout(`${registry.url}/_admin/usage?namespace=${NAMESPACE}`, { headers: admin });
  assert.equal(response.status, 200, response.body.toString());
  const [report] = JSON.parse(response.body.toString()).namespaces;
  assert.equal(report.limit, LIMIT);
  assert.equal(report.counted, true);
  return report;
}

/** What the bucket holds of `blobs`: their descriptors, and multipart uploads still open. */
async function stored(blobs) {
  const { objects, multipartUploads } = await r2Objects(registry);
  const keys = new Set(objects.map((object) => object.key));
  const descriptors = [...blobs.keys()].filter((digest) => keys.has(`blobs/sha256/${digest.slice(7)}`));
  return { descriptors, data: objects.filter((o) => o.key.startsWith("data/")).length, multipartUploads };
}

describe("storage quotas (QUOTAS, skopeo)", { timeout: 300_000 }, () => {
  before(async () => {
    const missing = ["skopeo", "umoci", "unshare"].filter((command) => !haveCommand(command));
    assert.deepEqual(missing, [], `missing client tools (see .ci/run): ${missing.join(", ")}`);
    registry = await startRegistry({
      env: { ADMIN_TOKEN, QUOTAS: JSON.stringify([{ namespace: NAMESPACE, bytes: "100MiB" }]) },
    });
    clients = await createClients(registry);
    work = await makeTempDir("quotas-work");
    // A and B fill the quota but for 5 MiB; C does not fit until A is deleted and collected;
    // then 20 MiB are left, which D or E fits, not both.
    images.a = await build("a", 25 * MiB);
    images.b = await build("b", 70 * MiB);
    images.c = await build("c", 10 * MiB);
    images.d = await build("d", 11 * MiB);
    images.e = await build("e", 11 * MiB);
  });

  after(async () => {
    await clients?.dispose();
    await registry?.stop();
    if (work) await removeTempDir(work);
  });

  it("pushes up to the quota succeed, and the usage is their blobs' bytes", async () => {
    await push(images.a, "quota/app-a");
    await push(images.b, "quota/app-b");
    const report = await usage();
    assert.equal(report.bytes, sum(images.a.blobs) + sum(images.b.blobs));
    assert.deepEqual(report.repositories.map((row) => [row.name, row.bytes]).sort(), [
      ["quota/app-a", sum(images.a.blobs)],
      ["quota/app-b", sum(images.b.blobs)],
    ]);
  });

  it("the next layer is refused with the quota's error, and nothing of it is stored", async () => {
    const before = await stored(images.c.blobs);
    await assert.rejects(push(images.c, "quota/app-c"), (error) => {
      const stderr = String(error.result?.stderr ?? error);
      assert.match(stderr, /quota exceeded: namespace quota uses .* of its 100\.0 MiB/, stderr);
      return true;
    });
    const after = await stored(images.c.blobs);
    const [layer] = [...images.c.blobs.entries()].find(([, size]) => size > MiB);
    assert.ok(!after.descriptors.includes(layer), "the refused layer is not stored");
    assert.equal(after.data, before.data, "no data object of the refused layer");
    assert.deepEqual(
      after.multipartUploads.filter((upload) => upload.state === 0),
      [],
      "no multipart upload left open",
    );
    const head = await fetchWithTimeout(`${registry.url}/v2/quota/app-c/blobs/${layer}`, { method: "HEAD" });
    assert.equal(head.status, 404);
    assert.equal((await usage()).bytes, sum(images.a.blobs) + sum(images.b.blobs));
  });

  it("deleting an image and collecting brings the usage down, and the refused push then succeeds", async () => {
    const deleted = await fetchWithTimeout(`${registry.url}/v2/quota/app-a/manifests/${images.a.descriptor.digest}`, {
      method: "DELETE",
    });
    assert.equal(deleted.status, 202);
    const started = await fetchWithTimeout(`${registry.url}/_admin/gc?grace=0`, { method: "POST", headers: admin });
    assert.equal(started.status, 202, started.body.toString());
    for (let attempt = 0; ; attempt++) {
      const status = JSON.parse((await fetchWithTimeout(`${registry.url}/_admin/gc`, { headers: admin })).body);
      if (status.status === "done") break;
      assert.equal(status.status, "running", JSON.stringify(status));
      assert.ok(attempt < 300, "the collection did not finish in 30 s");
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal((await usage()).bytes, sum(images.b.blobs));
    await push(images.c, "quota/app-c");
    assert.equal((await usage()).bytes, sum(images.b.blobs) + sum(images.c.blobs));
  });

  it("two pushes racing for the last bytes: exactly one wins", async () => {
    const outcomes = await Promise.allSettled([push(images.d, "quota/app-d"), push(images.e, "quota/app-e")]);
    const won = outcomes.filter((outcome) => outcome.status === "fulfilled");
    assert.equal(won.length, 1, JSON.stringify(outcomes.map((outcome) => outcome.status)));
    const lost = outcomes.find((outcome) => outcome.status === "rejected");
    assert.match(String(lost.reason.result?.stderr ?? lost.reason), /quota exceeded/);
    const winner = outcomes[0].status === "fulfilled" ? images.d : images.e;
    const report = await usage();
    assert.equal(report.bytes, sum(images.b.blobs) + sum(images.c.blobs) + sum(winner.blobs));
    assert.ok(report.bytes <= LIMIT);
    assert.equal(report.reservations, 0);
  });

  it("npm run verify counts the same usage from the links", async () => {
    const result = await run(
      process.execPath,
      [join(ROOT, "scripts", "verify.mjs"), "--url", registry.url, "--no-rehash"],
      {
        env: { ...process.env, ADMIN_TOKEN },
        cwd: ROOT,
        timeoutMs: 120_000,
        check: false,
        context: () => registry.logTail(),
      },
    );
    const text = result.stdout.toString("utf8");
    assert.equal(result.code, 0, `verify exited ${result.code}:\n${text}\n${result.stderr}`);
    const { bytes } = await usage();
    assert.match(text, new RegExp(`^usage ${NAMESPACE}: ${bytes} bytes`, "m"), text);
    assert.match(text, /^ok: nothing inconsistent$/m, text);
  });
});
