// End-to-end: pull records and retention by last pull, against `npm start` with
// RETENTION `pulledWithin` (3s) for pulls/**. Two tags are pushed (plain HTTP); once both
// are older than pulledWithin, skopeo pulls one of them: a recorded pull counts as a use
// until one PULL_RECORD_INTERVAL (1m here) after it, so however slow the machine, that tag
// was used within pulledWithin when the runs start, and the other was not.
// `npm run gc -- --url` (scripts/gc.mjs, as an operator runs it) in a dry run lists only
// the other tag, the run removes exactly it, the pulled tag still pulls with skopeo, and
// the repository's web page shows its pulls.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { after, before, describe, it } from "node:test";
import {
  createClients,
  descriptorFor,
  fetchWithTimeout,
  haveCommand,
  makeTempDir,
  removeTempDir,
  ROOT,
  run,
  skopeoCopy,
  startRegistry,
} from "./harness.mjs";

const ADMIN_TOKEN = randomBytes(24).toString("hex");
const REPOSITORY = "pulls/app";
const PULLED_WITHIN_MS = 3000;
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";

let registry;
let clients;
let work;
/** Per tag: the pushed manifest's digest. */
const pushed = new Map();
let pushedAt;

const sha256 = (bytes) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

async function pushBlob(bytes) {
  const digest = sha256(bytes);
  const answer = await fetchWithTimeout(`${registry.url}/v2/${REPOSITORY}/blobs/uploads/?digest=${digest}`, {
    method: "POST",
    body: bytes,
    headers: { "Content-Type": "application/octet-stream" },
  });
  assert.equal(answer.status, 201, `POST blob: ${answer.body.toString()}`);
  return { digest, size: bytes.length };
}

/** Pushes a one-layer image (random bytes) under `tag`, through the HTTP API. */
async function pushImage(tag) {
  const config = await pushBlob(Buffer.from(JSON.stringify({ architecture: "amd64", os: "linux", tag })));
  const layer = await pushBlob(randomBytes(2048));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
      layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", ...layer }],
    }),
  );
  const answer = await fetchWithTimeout(`${registry.url}/v2/${REPOSITORY}/manifests/${tag}`, {
    method: "PUT",
    body: manifest,
    headers: { "Content-Type": OCI_MANIFEST },
  });
  assert.equal(answer.status, 201, `PUT manifest: ${answer.body.toString()}`);
  pushed.set(tag, sha256(manifest));
}

/** A skopeo pull of `tag` into an OCI layout; resolves the pulled manifest's digest. */
async function pull(tag) {
  const out = join(work, `pulled-${tag}-${Date.now()}`);
  await skopeoCopy(clients, `docker://${registry.clientHost}/${REPOSITORY}:${tag}`, `oci:${out}:${tag}`, {
    timeoutMs: 60_000,
  });
  return (await descriptorFor(out, tag)).digest;
}

/** `npm run gc -- --url … --grace 0 --json [--dry-run]`: the run's report, which must have finished. */
async function gc(...args) {
  const { stdout } = await run(
    process.execPath,
    [join(ROOT, "scripts", "gc.mjs"), "--url", registry.url, "--grace", "0", "--json", ...args],
    { env: { ...process.env, ADMIN_TOKEN }, cwd: ROOT, timeoutMs: 60_000, context: () => registry.logTail() },
  );
  const report = JSON.parse(stdout.toString("utf8"));
  assert.equal(report.status, "done", `gc run did not finish: ${stdout}`);
  return report;
}

async function tags() {
  const answer = await fetchWithTimeout(`${registry.url}/v2/${REPOSITORY}/tags/list`);
  assert.equal(answer.status, 200);
  return JSON.parse(answer.body.toString("utf8")).tags.sort();
}

describe("pull records and retention by last pull (real clients)", { timeout: 180_000 }, () => {
  before(async () => {
    const missing = ["skopeo", "unshare"].filter((command) => !haveCommand(command));
    assert.deepEqual(missing, [], `missing client tools (see .ci/run): ${missing.join(", ")}`);
    registry = await startRegistry({
      env: {
        ADMIN_TOKEN,
        PULL_RECORD_INTERVAL: "1m",
        RETENTION: JSON.stringify([{ repositories: "pulls/**", pulledWithin: `${PULLED_WITHIN_MS / 1000}s` }]),
      },
    });
    clients = await createClients(registry);
    work = await makeTempDir("pulls-work");
    await pushImage("used");
    await pushImage("unused");
    pushedAt = Date.now();
  });

  after(async () => {
    await clients?.dispose();
    await registry?.stop();
    if (work) await removeTempDir(work);
  });

  it("of two tags older than pulledWithin, the one skopeo pulled stays and the other goes; a dry run lists it first", async () => {
    // Both tags' pushes must be older than pulledWithin when the run starts.
    await delay(Math.max(0, pushedAt + PULLED_WITHIN_MS + 200 - Date.now()));
    assert.equal(await pull("used"), pushed.get("used"));

    const dry = await gc("--dry-run");
    const tagItems = (report) => report.items.filter((item) => item.kind === "tag").map((item) => item.name);
    assert.deepEqual(tagItems(dry), [`${REPOSITORY}:unused`], JSON.stringify(dry.items));
    assert.deepEqual(await tags(), ["unused", "used"], "a dry run removes nothing");

    const report = await gc();
    assert.deepEqual(tagItems(report), [`${REPOSITORY}:unused`], JSON.stringify(report.items));
    assert.equal(report.removed.manifests, 1);
    assert.deepEqual(await tags(), ["used"]);
    const gone = await fetchWithTimeout(`${registry.url}/v2/${REPOSITORY}/manifests/${pushed.get("unused")}`, {
      method: "HEAD",
      headers: { Accept: OCI_MANIFEST },
    });
    assert.equal(gone.status, 404);
    assert.equal(await pull("used"), pushed.get("used"));
  });

  it("the repository page shows when the pulled tag was last pulled, and how often", async () => {
    const page = await fetchWithTimeout(`${registry.url}/repositories/${REPOSITORY}`);
    assert.equal(page.status, 200);
    const html = page.body.toString("utf8");
    const row = /<tr data-tag="used">.*?<\/tr>/s.exec(html)?.[0] ?? "";
    assert.match(row, /<td class="optional last-pulled"><time datetime="[^"]+">/, row);
    const pulls = Number(/<td class="num pulls">(\d+)<\/td>/.exec(row)?.[1]);
    assert.ok(pulls >= 1, `pulls shown: ${row}`);
  });
});
