// End-to-end: pull-through mirroring (UPSTREAMS, UPSTREAM_DEFAULT) with real clients and
// real upstreams, all on 127.0.0.1:
// - docker/distribution (`docker-registry serve`) as the upstream `up.dist` (tag TTL 3 s);
// - a second instance of this registry with authentication on, as `up.auth` (the mirror's
//   own credentials, through the token flow; the default upstream, Docker Hub's `library/`
//   rule on) and as `up.anon` (no credentials: what anonymous clients may pull, and an
//   anonymous token that does not grant the rest);
// - a small fake upstream in this file (`up.fake`, timeout 1 s) for the error answers: 429
//   with Retry-After, 5xx, 401/403, a blob whose bytes are not its digest, no answer at all.
// skopeo, podman and containerd's ctr pull through the mirror by tag and by digest
// (an image, a two-platform index, a 40 MiB layer) and get exactly what was pushed to the
// upstream; ctr also through a hosts.toml mirror entry (containerd's `?ns=`). A tag moved
// upstream is served as stored until its TTL passes, then as moved; eight concurrent cold
// pulls store every blob once (read from the mirror's R2 store on disk); mirrored names are
// read-only; a mirror with authentication applies its access rules to mirrored names; and
// with the upstream stopped, what was pulled before still pulls (stale tags included) while
// anything else fails at once with 503 UNAVAILABLE.
//
// Images are written by hand as OCI layouts with uncompressed tar layers of random bytes
// (so a layer's digest is also its diff ID, which podman reports).
import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { once } from "node:events";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import http from "node:http";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import bcrypt from "bcryptjs";
import {
  createClients,
  descriptorFor,
  expectFailure,
  fetchHashed,
  fetchWithTimeout,
  haveCommand,
  layoutBlobs,
  makeTempDir,
  r2Objects,
  removeTempDir,
  sha256,
  skopeoCopy,
  startContainerd,
  startDistribution,
  startRegistry,
  writeBlob,
  writeImage,
  addRef,
} from "./harness.mjs";

const KiB = 1024;
const MiB = 1 << 20;
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const MANIFEST_ACCEPT = [OCI_MANIFEST, OCI_INDEX].join(", ");

/** up.dist's tag TTL: a tag confirmed by the upstream less than this long ago is served as stored. */
const DIST_TAG_TTL_SECONDS = 3;

const authedUsers = { pusher: "pusher-password", mirror: "mirror-password" };
const guardUsers = { reader: "reader-password" };

let dist;
let authed;
let fake;
let mirror;
let guarded;
/** Client sandboxes: for pulls through the mirror, and for pushes to the upstreams. */
let clients;
let pushers;
let containerd;
let work;
/** Images by name: { layout, tag, descriptor, manifest, blobs: Map digest -> size }. */
const images = {};

// ---------------------------------------------------------------------------------------
// Images, written by hand.

/**
 * An image with one uncompressed layer per entry of `layerSizes` (harness.mjs writeImage),
 * in its own layout under the work dir unless `layout` says.
 */
function makeImage(name, layerSizes, { layout = join(work, name), ...options } = {}) {
  return writeImage(layout, name, layerSizes, options);
}

/** A two-platform OCI index (amd64, arm64), each platform an image of one small layer. */
async function makeIndex(name) {
  const layout = join(work, name);
  const children = [];
  for (const [offset, arch] of ["amd64", "arm64"].entries()) {
    children.push(await makeImage(name, [200 * KiB + offset], { tag: null, arch, layout }));
  }
  const index = {
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: children.map((child) => ({
      ...child.descriptor,
      platform: { architecture: child.arch, os: "linux" },
    })),
  };
  const descriptor = { mediaType: OCI_INDEX, ...(await writeBlob(layout, Buffer.from(JSON.stringify(index)))) };
  await addRef(layout, "v1", descriptor);
  const blobs = new Map([[descriptor.digest, descriptor.size]]);
  for (const child of children) for (const [digest, size] of child.blobs) blobs.set(digest, size);
  return { layout, tag: "v1", descriptor, manifest: index, blobs, children };
}

// ---------------------------------------------------------------------------------------
// Pushing to the upstreams, pulling through the mirror, checking.

function pushToDist(image, repository, { tag = image.tag, all = false } = {}) {
  return skopeoCopy(pushers, `oci:${image.layout}:${image.tag}`, `docker://${dist.host}/${repository}:${tag}`, { all });
}

function pushToAuthed(image, repository) {
  return pushers.skopeo(
    "copy",
    "--dest-tls-verify=false",
    "--preserve-digests",
    "--retry-times",
    "0",
    "--dest-creds",
    `pusher:${authedUsers.pusher}`,
    `oci:${image.layout}:${image.tag}`,
    `docker://${authed.host}/${repository}:${image.tag}`,
  );
}

/**
 * skopeo copy `docker://<mirror>/<reference>` to a fresh layout (tag `pulled`), then checks
 * it holds exactly `image`: the same top manifest and the same blobs (each file verified
 * against its digest). Returns the layout.
 */
async function pullWithSkopeo(reference, image, { all = false, registry = mirror, timeoutMs } = {}) {
  const out = join(work, `pulled-${randomUUID()}`);
  await skopeoCopy(clients, `docker://${registry.host}/${reference}`, `oci:${out}:pulled`, { all, timeoutMs });
  const pulled = await descriptorFor(out, "pulled");
  assert.equal(pulled.digest, image.descriptor.digest, `${reference}: manifest digest`);
  assert.equal(pulled.mediaType, image.descriptor.mediaType, `${reference}: manifest media type`);
  const expected = all || !image.children ? image.blobs : platformBlobs(image, "amd64");
  assert.deepEqual(sorted(await layoutBlobs(out)), sorted(expected), `${reference}: blobs (digest, size)`);
  return out;
}

/** An index's blobs a single-platform pull fetches: the index, and that platform's image. */
function platformBlobs(index, arch) {
  const child = index.children.find((image) => image.arch === arch);
  return new Map([[index.descriptor.digest, index.descriptor.size], ...child.blobs]);
}

function sorted(map) {
  return [...map.entries()].sort(([a], [b]) => a.localeCompare(b));
}

/** `skopeo inspect --raw` through the mirror: must be the manifest bytes pushed upstream. */
async function assertRawManifest(reference, image) {
  const { stdout } = await clients.skopeo(
    "inspect",
    "--raw",
    "--tls-verify=false",
    `docker://${mirror.host}/${reference}`,
  );
  const expected = await readFile(join(image.layout, "blobs", "sha256", image.descriptor.digest.slice(7)));
  assert.ok(stdout.equals(expected), `${reference}: skopeo inspect --raw differs from the pushed manifest`);
}

/** podman pull through the mirror; the image's digest and layers (uncompressed: diff IDs) must be what was pushed. */
async function pullWithPodman(reference, image, platformImage = image) {
  const full = `${mirror.host}/${reference}`;
  await clients.podman("pull", "--tls-verify=false", full, { timeoutMs: 180_000 });
  const [inspected] = JSON.parse((await clients.podman("image", "inspect", full)).stdout.toString("utf8"));
  assert.equal(inspected.Digest, image.descriptor.digest, `podman ${reference}: digest`);
  assert.deepEqual(
    inspected.RootFS.Layers,
    platformImage.manifest.layers.map((layer) => layer.digest),
    `podman ${reference}: layers`,
  );
}

/**
 * ctr pulls `reference` (a full reference) in a namespace of its own (so every blob is
 * fetched), and the image it records has `image`'s digest; every blob of `expected` is in
 * its content store with exactly those bytes.
 */
async function pullWithCtr(namespace, reference, image, expected, ...flags) {
  const ctr = (...args) => containerd.ctr("--namespace", namespace, ...args);
  await ctr("images", "pull", ...flags, reference, { timeoutMs: 180_000 });
  const listed = (await ctr("images", "ls")).stdout.toString("utf8");
  const row = listed
    .split("\n")
    .map((line) => line.trim().split(/\s+/))
    .find((columns) => columns[0] === reference);
  assert.ok(row, `ctr images ls has no ${reference}:\n${listed}`);
  assert.equal(row[2], image.descriptor.digest, `ctr ${reference}: digest`);
  for (const [digest, size] of expected) {
    const { stdout } = await ctr("content", "get", digest);
    assert.equal(stdout.length, size, `ctr content ${digest}: size`);
    assert.equal(`sha256:${sha256(stdout)}`, digest, `ctr content ${digest}: bytes`);
  }
}

/** A plain request to a server (127.0.0.1), with the body read. */
function request(server, path, init = {}, timeoutMs = 30_000) {
  return fetchWithTimeout(`${server.url}${path}`, init, timeoutMs);
}

/** The OCI error code of an answer (its first error). */
function errorCode(answer) {
  try {
    return JSON.parse(answer.body.toString("utf8")).errors?.[0]?.code;
  } catch {
    return `(not OCI error JSON: ${answer.body.toString("utf8").slice(0, 200)})`;
  }
}

/** An answer must be the OCI error `code` with `status`. */
function assertError(answer, status, code, what) {
  assert.equal(answer.status, status, `${what}: status (${answer.body.toString("utf8").slice(0, 300)})`);
  assert.equal(errorCode(answer), code, `${what}: error code`);
}

/**
 * A server's access-log entries since `mark`, once the log has settled: the front writes an
 * entry when an answer is written out, which may be a moment after the client has it.
 */
async function loggedSince(server, mark) {
  let count = -1;
  for (let attempt = 0; attempt < 40; attempt++) {
    const entries = server.accessLog.since(mark);
    if (entries.length === count) return entries;
    count = entries.length;
    await delay(75);
  }
  return server.accessLog.since(mark);
}

/** A mark (accessLog.mark) taken once the log has settled: what came before is not counted after it. */
async function settledMark(server) {
  return (await loggedSince(server, 0)).length;
}

/** Requests the mirror made to upstreams while answering `entries` (Server-Timing `upstream`). */
function upstreamCalls(entries) {
  return entries.reduce(
    (sum, entry) => sum + (typeof entry.timing.upstream === "number" ? entry.timing.upstream : 0),
    0,
  );
}

function describeEntries(entries) {
  return entries.map((entry) => `${entry.method} ${entry.path} ${entry.status} ${entry.serverTiming}`).join("\n");
}

/**
 * The mirror's R2 bucket: descriptors (`blobs/sha256/<hex>` -> the data object it names) and
 * data objects (`data/<id>` -> size).
 */
async function mirrorStorage() {
  const { objects, multipartUploads } = await r2Objects(mirror);
  const descriptors = new Map();
  const data = new Map();
  for (const object of objects) {
    if (object.key.startsWith("blobs/sha256/")) descriptors.set(`sha256:${object.key.slice(13)}`, object.metadata);
    if (object.key.startsWith("data/")) data.set(object.key, object.size);
  }
  return { descriptors, data, multipartUploads };
}

/**
 * What is wrong with the mirror's storage of `blobs` (Map digest -> size), or null: each
 * has a descriptor naming a data object of its size, and no data object is named by no
 * descriptor, or by two (every blob's bytes stored exactly once).
 */
function storageProblems({ descriptors, data }, blobs) {
  const problems = [];
  for (const [digest, size] of blobs) {
    const descriptor = descriptors.get(digest);
    if (!descriptor) problems.push(`${digest}: no descriptor`);
    else if (data.get(descriptor.key) !== size) {
      problems.push(`${digest}: its data object ${descriptor.key} has size ${data.get(descriptor.key)}, not ${size}`);
    }
  }
  const named = [...descriptors.values()].map((descriptor) => descriptor.key);
  if (new Set(named).size !== named.length) problems.push("two descriptors name the same data object");
  const orphans = [...data.keys()].filter((key) => !named.includes(key));
  if (orphans.length > 0) {
    problems.push(`data objects no descriptor names: ${orphans.map((key) => `${key} (${data.get(key)} bytes)`)}`);
  }
  return problems.length > 0 ? problems.join("\n") : null;
}

// ---------------------------------------------------------------------------------------
// A fake upstream: scripted answers, and a record of what it was asked.

async function startFakeUpstream() {
  const requests = [];
  /** path -> bytes served with 200 (blobs and manifests). */
  const served = new Map();
  const server = http.createServer((incoming, response) => {
    if (requests.length < 10_000) requests.push({ method: incoming.method, path: incoming.url });
    const path = incoming.url ?? "";
    const head = incoming.method === "HEAD";
    const answer = (status, body, headers = {}) => {
      const bytes = Buffer.isBuffer(body) ? body : Buffer.from(JSON.stringify(body));
      response.writeHead(status, { "Content-Type": "application/json", "Content-Length": bytes.length, ...headers });
      response.end(head ? undefined : bytes);
    };
    const oci = (code) => ({ errors: [{ code, message: `fake upstream: ${code}` }] });
    if (path.startsWith("/v2/limited/")) return answer(429, oci("TOOMANYREQUESTS"), { "Retry-After": "7" });
    if (path.startsWith("/v2/broken/")) return answer(500, oci("UNKNOWN"));
    if (path.startsWith("/v2/refused/")) return answer(403, oci("DENIED"));
    if (path.startsWith("/v2/unauthorized/")) return answer(401, oci("UNAUTHORIZED"));
    // Never answers: the mirror's timeout (1 s) must end the wait. Closed in close().
    if (path.startsWith("/v2/hang/")) return undefined;
    const bytes = served.get(path);
    if (bytes?.chunked && !head) {
      // No Content-Length: Node sends it chunked, in pieces (its HEAD says the length).
      response.writeHead(200, { "Content-Type": bytes.type });
      for (let offset = 0; offset < bytes.body.length; offset += 256 * KiB) {
        response.write(bytes.body.subarray(offset, offset + 256 * KiB));
      }
      return response.end();
    }
    if (bytes) return answer(200, bytes.body, { "Content-Type": bytes.type });
    return answer(404, oci(path.includes("/blobs/") ? "BLOB_UNKNOWN" : "MANIFEST_UNKNOWN"));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const host = `127.0.0.1:${server.address().port}`;
  return {
    host,
    url: `http://${host}`,
    served,
    /** How many requests were made for `path`. */
    count: (path) => requests.filter((entry) => entry.path === path).length,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, "close");
    },
  };
}

/**
 * Makes the fake upstream serve, for `/v2/<name>/blobs/<digest>`, bytes of the right length
 * that are not the digest's (`chunked`: without a Content-Length). Returns { digest, size,
 * real (the digest's bytes), path }.
 */
function lyingBlob(name, { chunked = false } = {}) {
  const size = 2 * MiB + 77;
  const real = randomBytes(size);
  const digest = `sha256:${sha256(real)}`;
  const path = `/v2/${name}/blobs/${digest}`;
  fake.served.set(path, { body: randomBytes(size), type: "application/octet-stream", chunked });
  return { digest, size, real, path };
}

/**
 * A GET as a plain HTTP/1.1 client sees it: the status, the bytes, and whether the message
 * arrived complete (its Content-Length met, or a chunked body's terminating chunk read)
 * rather than cut off by the connection closing.
 */
function rawGet(url) {
  return new Promise((resolveGet) => {
    const outgoing = http.get(url, { agent: false }, (incoming) => {
      let bytes = 0;
      let settled = false;
      const settle = (error) => {
        if (settled) return;
        settled = true;
        resolveGet({
          status: incoming.statusCode,
          headers: incoming.headers,
          bytes,
          complete: incoming.complete,
          error,
        });
      };
      incoming.on("data", (chunk) => (bytes += chunk.length));
      incoming.on("end", () => settle(null));
      incoming.on("error", settle);
      incoming.on("close", () => settle(null));
    });
    outgoing.on("error", (error) => resolveGet({ status: 0, bytes: 0, complete: false, error }));
  });
}

/** GETs a blob from the mirror; says how it ended: "complete and correct", "a complete 200 with other bytes", "failed (…)". */
async function getBlob(path, digest, size) {
  try {
    const got = await fetchHashed(`${mirror.url}${path}`, {}, 30_000);
    if (got.status === 200 && got.size === size) {
      return `sha256:${got.hex}` === digest ? "complete and correct" : "a complete 200 with other bytes";
    }
    return `failed (${got.status}, ${got.size} bytes)`;
  } catch (error) {
    return `failed (${error.cause?.message ?? error.message})`;
  }
}

// ---------------------------------------------------------------------------------------

describe("pull-through mirroring with real clients and real upstreams", { timeout: 420_000 }, () => {
  before(async () => {
    const missing = ["skopeo", "podman", "docker-registry", "python3", "unshare"].filter((name) => !haveCommand(name));
    assert.deepEqual(missing, [], `missing tools (see .ci/run): ${missing.join(", ")}`);
    work = await makeTempDir("mirror-work");
    // Each server is kept as soon as it is up, so after() stops it whatever fails next.
    const upstreamsUp = Promise.all([
      startDistribution().then((server) => (dist = server)),
      startRegistry({
        env: {
          AUTH_USERS: Object.entries(authedUsers)
            .map(([name, password]) => `${name}:${bcrypt.hashSync(password, 5)}`)
            .join("\n"),
          AUTH_ACCESS: JSON.stringify([
            { repositories: ["**"], users: ["pusher"], actions: ["pull", "push", "delete"] },
            { repositories: ["**"], users: ["mirror"], actions: ["pull"] },
            { repositories: ["public/**"], anonymous: true, actions: ["pull"] },
          ]),
        },
      }).then((server) => (authed = server)),
      startFakeUpstream().then((server) => (fake = server)),
    ]);
    // The upstreams' content, written meanwhile.
    images.app = await makeImage("app", [MiB + 17, 64 * KiB + 3]);
    images.multi = await makeIndex("multi");
    images.nsApp = await makeImage("ns-app", [128 * KiB + 9]);
    images.concurrent = await makeImage("concurrent", [8 * MiB + 5, 32 * KiB + 1]);
    images.movingA = await makeImage("moving-a", [16 * KiB + 1]);
    images.movingB = await makeImage("moving-b", [16 * KiB + 2]);
    images.never = await makeImage("never", [16 * KiB + 3]);
    images.base = await makeImage("base", [200 * KiB + 1]);
    images.secret = await makeImage("secret", [100 * KiB + 1]);
    images.public = await makeImage("public", [50 * KiB + 1]);
    await upstreamsUp;

    const upstreams = [
      { prefix: "up.dist", url: dist.url, tagTtlSeconds: DIST_TAG_TTL_SECONDS, timeoutSeconds: 5 },
      { prefix: "up.auth", url: authed.url, tagTtlSeconds: 60, library: true, credentials: "UPSTREAM_AUTHED" },
      { prefix: "up.anon", url: authed.url, tagTtlSeconds: 60 },
      { prefix: "up.fake", url: fake.url, tagTtlSeconds: 0, timeoutSeconds: 1 },
    ];
    const guardedUpstreams = [
      { prefix: "up.open", url: dist.url },
      { prefix: "up.closed", url: dist.url },
    ];
    // The mirrors start while the upstreams are filled (by a client sandbox of their own).
    pushers = await createClients({ clientHost: dist.host, logTail: () => `${dist.logTail()}\n${authed.logTail()}` });
    await Promise.all([
      startRegistry({
        env: {
          UPSTREAMS: JSON.stringify(upstreams),
          UPSTREAM_DEFAULT: "up.auth",
          UPSTREAM_AUTHED: `mirror:${authedUsers.mirror}`,
        },
      }).then((server) => (mirror = server)),
      startRegistry({
        env: {
          UPSTREAMS: JSON.stringify(guardedUpstreams),
          AUTH_USERS: `reader:${bcrypt.hashSync(guardUsers.reader, 5)}`,
          AUTH_ACCESS: JSON.stringify([
            { repositories: ["up.open/**"], anonymous: true, actions: ["pull"] },
            { repositories: ["**"], users: ["reader"], actions: ["pull"] },
          ]),
        },
      }).then((server) => (guarded = server)),
      startContainerd().then((daemon) => (containerd = daemon)),
      pushToDist(images.app, "team/app"),
      pushToDist(images.multi, "team/multi", { all: true }),
      pushToDist(images.nsApp, "team/ns-app"),
      pushToDist(images.concurrent, "team/concurrent"),
      pushToDist(images.movingA, "team/moving"),
      // B's blobs upstream already, so moving the tag is one manifest PUT.
      pushToDist(images.movingB, "team/moving", { tag: "next" }),
      pushToDist(images.never, "team/never"),
      pushToAuthed(images.base, "library/base"),
      pushToAuthed(images.secret, "team/secret"),
      pushToAuthed(images.public, "public/base"),
    ]);
    clients = await createClients(mirror);
  });

  after(async () => {
    await Promise.all([
      mirror?.stop(),
      guarded?.stop(),
      authed?.stop(),
      dist?.stop(),
      fake?.close(),
      containerd?.stop(),
    ]);
    for (const sandbox of [clients, pushers]) if (sandbox) await sandbox.dispose();
    if (work) await removeTempDir(work);
  });

  it("skopeo, podman and ctr pull an image through the mirror by tag and by digest, byte for byte", async (t) => {
    const { app } = images;
    const repository = "up.dist/team/app";
    let mark = await settledMark(mirror);
    await pullWithSkopeo(`${repository}:v1`, app);
    const cold = await loggedSince(mirror, mark);
    const manifestGet = cold.find((entry) => entry.path === `/v2/${repository}/manifests/v1`);
    assert.ok(manifestGet && upstreamCalls([manifestGet]) >= 1, `cold pull:\n${describeEntries(cold)}`);

    // By digest, the mirror answers from what it stored: no upstream request at all.
    mark = await settledMark(mirror);
    await pullWithSkopeo(`${repository}@${app.descriptor.digest}`, app);
    const warm = await loggedSince(mirror, mark);
    assert.equal(upstreamCalls(warm), 0, `pull by digest asked the upstream:\n${describeEntries(warm)}`);
    await assertRawManifest(`${repository}:v1`, app);
    await assertRawManifest(`${repository}@${app.descriptor.digest}`, app);

    await pullWithPodman(`${repository}:v1`, app);
    await pullWithPodman(`${repository}@${app.descriptor.digest}`, app);

    if (!containerd) return t.skip("containerd needs root");
    const reference = `${mirror.host}/${repository}`;
    await pullWithCtr("app-tag", `${reference}:v1`, app, app.blobs, "--plain-http");
    await pullWithCtr("app-digest", `${reference}@${app.descriptor.digest}`, app, app.blobs, "--plain-http");
  });

  it("a two-platform index pulls whole (skopeo --all, ctr --all-platforms) and per platform (podman)", async (t) => {
    const { multi } = images;
    const repository = "up.dist/team/multi";
    await pullWithSkopeo(`${repository}:v1`, multi, { all: true });
    await pullWithSkopeo(`${repository}@${multi.descriptor.digest}`, multi, { all: true });
    await assertRawManifest(`${repository}:v1`, multi);
    for (const child of multi.children) await assertRawManifest(`${repository}@${child.descriptor.digest}`, child);
    await pullWithPodman(`${repository}:v1`, multi, multi.children[0]);
    await pullWithPodman(`${repository}@${multi.descriptor.digest}`, multi, multi.children[0]);

    if (!containerd) return t.skip("containerd needs root");
    const reference = `${mirror.host}/${repository}`;
    await pullWithCtr("multi-tag", `${reference}:v1`, multi, multi.blobs, "--plain-http", "--all-platforms");
    await pullWithCtr(
      "multi-digest",
      `${reference}@${multi.descriptor.digest}`,
      multi,
      platformBlobs(multi, "amd64"),
      "--plain-http",
    );
  });

  // 40 MiB: the fill stores it in step with the client's stream, in five whole 8 MiB parts
  // (FILL_PART_BYTES) and a partial last one, the tar's own bytes; larger proves nothing more.
  it("a 40 MiB layer pulls through the mirror intact, and is stored once", { timeout: 300_000 }, async () => {
    const big = await makeImage("big", [40 * MiB]);
    const [layer] = big.manifest.layers;
    await pushToDist(big, "big/layer");
    // layoutBlobs (in pullWithSkopeo) hashes every pulled blob: the layer's sha256 is checked.
    await pullWithSkopeo(`up.dist/big/layer:v1`, big, { timeoutMs: 240_000 });
    let problems;
    for (let attempt = 0; attempt < 60; attempt++) {
      problems = storageProblems(await mirrorStorage(), new Map([[layer.digest, layer.size]]));
      if (!problems) break;
      await delay(250);
    }
    assert.equal(problems, null, `${layer.digest} (${layer.size} bytes) is not stored exactly once`);
  });

  it("an upstream with token authentication: the mirror's credentials, anonymous pulls, a refusal", async () => {
    const scopeOf = (name) => encodeURIComponent(`repository:${name}:pull`);
    const tokenRequests = (entries, name) =>
      entries.filter((entry) => entry.path.startsWith("/token?") && entry.path.includes(scopeOf(name)));
    const manifestRequests = (entries, name) => entries.filter((entry) => entry.path === `/v2/${name}/manifests/v1`);

    // With the mirror's credentials: 401 → a token from the realm → 200, at the upstream.
    let mark = await settledMark(authed);
    await pullWithSkopeo("up.auth/team/secret:v1", images.secret);
    let upstreamSide = await loggedSince(authed, mark);
    assert.ok(
      tokenRequests(upstreamSide, "team/secret").some((entry) => entry.status === 200) &&
        manifestRequests(upstreamSide, "team/secret").some((entry) => entry.status === 401) &&
        manifestRequests(upstreamSide, "team/secret").some((entry) => entry.status === 200),
      `expected 401, a token, then 200 at the upstream:\n${describeEntries(upstreamSide)}`,
    );

    // Without credentials, a repository the upstream lets anonymous clients pull (it answers
    // them without a challenge).
    await pullWithSkopeo("up.anon/public/base:v1", images.public);

    // Without credentials, one it does not: the anonymous token does not grant it, and the
    // mirror says DENIED (403: logging in to the mirror would not help), not 401.
    mark = await settledMark(authed);
    const refused = await request(mirror, "/v2/up.anon/team/secret/manifests/v1", {
      headers: { Accept: MANIFEST_ACCEPT },
    });
    assertError(refused, 403, "DENIED", "GET up.anon/team/secret");
    upstreamSide = await loggedSince(authed, mark);
    assert.ok(
      tokenRequests(upstreamSide, "team/secret").some((entry) => entry.status === 200) &&
        manifestRequests(upstreamSide, "team/secret").filter((entry) => entry.status === 401).length >= 2,
      `expected 401, an anonymous token, 401 again at the upstream:\n${describeEntries(upstreamSide)}`,
    );
    await expectFailure(
      skopeoCopy(clients, `docker://${mirror.host}/up.anon/team/secret:v1`, `oci:${join(work, "refused")}:v1`),
      /denied/i,
    );
  });

  it("the default upstream serves names without a prefix: library/<name> and <name>", async () => {
    const { base } = images;
    await pullWithSkopeo("library/base:v1", base);
    await pullWithSkopeo("base:v1", base);
    await pullWithSkopeo(`base@${base.descriptor.digest}`, base);
    // Stored once, under the upstream's prefix: by digest there, nothing is asked upstream.
    const mark = await settledMark(mirror);
    await pullWithSkopeo(`up.auth/library/base@${base.descriptor.digest}`, base);
    const entries = await loggedSince(mirror, mark);
    assert.equal(upstreamCalls(entries), 0, describeEntries(entries));
    // Its tag list, under the name asked for.
    for (const name of ["library/base", "base"]) {
      const got = await request(mirror, `/v2/${name}/tags/list`);
      assert.equal(got.status, 200, `tags/list of ${name}`);
      assert.deepEqual(JSON.parse(got.body.toString("utf8")), { name, tags: ["v1"] });
    }
  });

  it("containerd's ?ns= names the upstream: ctr through a hosts.toml mirror entry, and plain HTTP", async (t) => {
    const { nsApp } = images;
    const path = "/v2/team/ns-app/manifests/v1";
    // Without ns=, the name is the default upstream's (the authenticated one), which has no such repository.
    assertError(
      await request(mirror, path, { headers: { Accept: MANIFEST_ACCEPT } }),
      404,
      "MANIFEST_UNKNOWN",
      `GET ${path}`,
    );
    // ns= naming the upstream by its prefix (plain HTTP; the tag, then a blob).
    const byPrefix = await request(mirror, `${path}?ns=up.dist`, { headers: { Accept: MANIFEST_ACCEPT } });
    assert.equal(byPrefix.status, 200, `GET ${path}?ns=up.dist: ${byPrefix.body.toString("utf8")}`);
    assert.equal(byPrefix.headers.get("docker-content-digest"), nsApp.descriptor.digest);
    const config = nsApp.manifest.config;
    const blob = await fetchHashed(`${mirror.url}/v2/team/ns-app/blobs/${config.digest}?ns=up.dist`);
    assert.equal(`sha256:${blob.hex}`, config.digest);
    if (!containerd) return t.skip("containerd needs root: ?ns= was checked with plain HTTP only");
    const hostsDir = join(work, "hosts.d");
    await mkdir(join(hostsDir, dist.host), { recursive: true });
    await writeFile(
      join(hostsDir, dist.host, "hosts.toml"),
      [`server = "${dist.url}"`, "", `[host."${mirror.url}"]`, '  capabilities = ["pull", "resolve"]', ""].join("\n"),
    );
    const mark = await settledMark(mirror);
    const reference = `${dist.host}/team/ns-app:v1`;
    await pullWithCtr("ns", reference, nsApp, nsApp.blobs, "--hosts-dir", hostsDir);
    // Everything came through the mirror (no fallback to the upstream itself), named by ns=.
    const entries = (await loggedSince(mirror, mark)).filter((entry) => entry.method === "GET");
    const ns = `ns=${encodeURIComponent(dist.host)}`;
    for (const digest of nsApp.blobs.keys()) {
      const kind = digest === nsApp.descriptor.digest ? "manifests" : "blobs";
      assert.ok(
        entries.some(
          (entry) =>
            entry.status === 200 &&
            entry.path.startsWith(`/v2/team/ns-app/${kind}/${digest}?`) &&
            entry.path.includes(ns),
        ),
        `${kind}/${digest} was not fetched through the mirror with ${ns}:\n${describeEntries(entries)}`,
      );
    }
    // Stored under the upstream's prefix, like any pull of up.dist/team/ns-app.
    const stored = await request(mirror, `/v2/up.dist/team/ns-app/manifests/${nsApp.descriptor.digest}`, {
      headers: { Accept: MANIFEST_ACCEPT },
    });
    assert.equal(stored.status, 200);
  });

  it("GET tags/list of a mirrored name lists the upstream's tags, under the name asked for", async () => {
    const got = await request(mirror, "/v2/up.dist/team/moving/tags/list");
    assert.equal(got.status, 200, got.body.toString("utf8"));
    const listed = JSON.parse(got.body.toString("utf8"));
    assert.equal(listed.name, "up.dist/team/moving");
    assert.deepEqual(listed.tags.sort(), ["next", "v1"]);
    const unknown = await request(mirror, "/v2/up.dist/team/nothing-here/tags/list");
    assertError(unknown, 404, "NAME_UNKNOWN", "tags/list of a name the upstream does not have");
  });

  it("a tag moved upstream is served as stored until its TTL passes, then as moved", async () => {
    const { movingA, movingB } = images;
    const path = "/v2/up.dist/team/moving/manifests/v1";
    const get = () => request(mirror, path, { headers: { Accept: MANIFEST_ACCEPT } });
    const confirmed = Date.now();
    const first = await get();
    assert.equal(first.headers.get("docker-content-digest"), movingA.descriptor.digest);

    // Move v1 to B upstream (B's blobs are there already: one manifest PUT).
    const bBytes = await readFile(join(movingB.layout, "blobs", "sha256", movingB.descriptor.digest.slice(7)));
    const put = await request(dist, "/v2/team/moving/manifests/v1", {
      method: "PUT",
      headers: { "Content-Type": OCI_MANIFEST },
      body: bBytes,
    });
    assert.equal(put.status, 201, put.body.toString("utf8"));

    const mark = await settledMark(mirror);
    const stale = await get();
    const elapsed = Date.now() - confirmed;
    assert.ok(elapsed < DIST_TAG_TTL_SECONDS * 1000 - 200, `too slow to check the TTL (${elapsed} ms)`);
    assert.equal(stale.status, 200);
    assert.equal(stale.headers.get("docker-content-digest"), movingA.descriptor.digest, "served before the TTL passed");
    assert.equal(upstreamCalls(await loggedSince(mirror, mark)), 0, "within the TTL the upstream is not asked");

    await delay(confirmed + DIST_TAG_TTL_SECONDS * 1000 + 300 - Date.now());
    const moved = await get();
    assert.equal(moved.status, 200);
    assert.equal(moved.headers.get("docker-content-digest"), movingB.descriptor.digest, "served after the TTL passed");
    assert.ok(moved.body.equals(bBytes));
    await pullWithSkopeo("up.dist/team/moving:v1", movingB);
    // The old manifest stays pullable by digest.
    await pullWithSkopeo(`up.dist/team/moving@${movingA.descriptor.digest}`, movingA);
  });

  it("8 concurrent cold pulls of one image get correct bytes and store each blob exactly once", async (t) => {
    const { concurrent } = images;
    const repository = "up.dist/team/concurrent";
    const earlier = await mirrorStorage();
    for (const digest of concurrent.blobs.keys())
      assert.ok(!earlier.descriptors.has(digest), `${digest} stored before`);
    const mark = await settledMark(mirror);
    const pullOnce = async (puller) => {
      const manifest = await request(mirror, `/v2/${repository}/manifests/v1`, {
        headers: { Accept: MANIFEST_ACCEPT },
      });
      assert.equal(manifest.status, 200, `puller ${puller}: manifest: ${manifest.body.toString("utf8")}`);
      assert.equal(`sha256:${sha256(manifest.body)}`, concurrent.descriptor.digest, `puller ${puller}: manifest bytes`);
      const parsed = JSON.parse(manifest.body.toString("utf8"));
      await Promise.all(
        [parsed.config, ...parsed.layers].map(async (blob) => {
          const got = await fetchHashed(`${mirror.url}/v2/${repository}/blobs/${blob.digest}`, {}, 120_000);
          assert.equal(got.status, 200, `puller ${puller}: ${blob.digest}`);
          assert.equal(`sha256:${got.hex}`, blob.digest, `puller ${puller}: ${blob.digest} bytes`);
          assert.equal(got.size, blob.size, `puller ${puller}: ${blob.digest} size`);
        }),
      );
    };
    await Promise.all(Array.from({ length: 8 }, (_, puller) => pullOnce(puller)));
    const entries = await loggedSince(mirror, mark);
    const layerGets = entries.filter((entry) => entry.path.endsWith(concurrent.manifest.layers[0].digest));
    assert.equal(layerGets.length, 8, describeEntries(entries));
    // How many of them the upstream served (the others: the stored blob), for the record.
    t.diagnostic(
      `8 MiB layer: ${layerGets.filter((entry) => upstreamCalls([entry]) > 0).length} of 8 GETs from the upstream`,
    );

    // The fill finishes after its answer: wait (bounded) for the storage to settle.
    let problems;
    for (let attempt = 0; attempt < 60; attempt++) {
      problems = storageProblems(await mirrorStorage(), concurrent.blobs);
      if (!problems) break;
      await delay(250);
    }
    assert.equal(problems, null, `after 8 concurrent pulls:\n${describeEntries(entries)}`);
    // And a ninth pull by skopeo gets it all from storage.
    const warm = await settledMark(mirror);
    await pullWithSkopeo(`${repository}@${concurrent.descriptor.digest}`, concurrent);
    assert.equal(upstreamCalls(await loggedSince(mirror, warm)), 0);
  });

  it("mirrored names are read-only: a push is denied, a DELETE is 403 DENIED", async () => {
    const { app } = images;
    for (const name of ["up.dist/team/app", "team/pushed-here"]) {
      await expectFailure(
        skopeoCopy(clients, `oci:${app.layout}:v1`, `docker://${mirror.host}/${name}:v2`),
        /denied|read-only/i,
      );
    }
    const manifestPath = `/v2/up.dist/team/app/manifests/${app.descriptor.digest}`;
    assertError(await request(mirror, manifestPath, { method: "DELETE" }), 403, "DENIED", `DELETE ${manifestPath}`);
    const layer = app.manifest.layers[0].digest;
    const blobPath = `/v2/up.dist/team/app/blobs/${layer}`;
    assertError(await request(mirror, blobPath, { method: "DELETE" }), 403, "DENIED", `DELETE ${blobPath}`);
    assertError(
      await request(mirror, "/v2/up.dist/team/app/blobs/uploads/", { method: "POST" }),
      403,
      "DENIED",
      "POST uploads",
    );
    // Still there, unchanged.
    const still = await request(mirror, manifestPath, { headers: { Accept: MANIFEST_ACCEPT } });
    assert.equal(still.status, 200);
  });

  it("upstream failures map to OCI errors: 404, 429 with Retry-After, 401/403, 5xx, no answer", async () => {
    const mark = await settledMark(mirror);
    const accept = { headers: { Accept: MANIFEST_ACCEPT } };
    const digest = `sha256:${sha256(Buffer.from("nothing"))}`;
    assertError(await request(mirror, "/v2/up.fake/gone/manifests/v1", accept), 404, "MANIFEST_UNKNOWN", "404 tag");
    assertError(await request(mirror, `/v2/up.fake/gone/blobs/${digest}`), 404, "BLOB_UNKNOWN", "404 blob");

    for (const path of ["/v2/up.fake/limited/manifests/v1", `/v2/up.fake/limited/blobs/${digest}`]) {
      const limited = await request(mirror, path, accept);
      assertError(limited, 429, "TOOMANYREQUESTS", path);
      assert.equal(limited.headers.get("retry-after"), "7", `${path}: Retry-After passed on`);
    }
    for (const name of ["refused", "unauthorized"]) {
      assertError(await request(mirror, `/v2/up.fake/${name}/manifests/v1`, accept), 403, "DENIED", name);
    }
    assertError(await request(mirror, "/v2/up.fake/broken/manifests/v1", accept), 503, "UNAVAILABLE", "500 tag");
    assertError(await request(mirror, `/v2/up.fake/broken/blobs/${digest}`), 503, "UNAVAILABLE", "500 blob");

    for (const path of ["/v2/up.fake/hang/manifests/v1", `/v2/up.fake/hang/blobs/${digest}`]) {
      const started = Date.now();
      const hung = await request(mirror, path, accept, 15_000);
      const seconds = (Date.now() - started) / 1000;
      assertError(hung, 503, "UNAVAILABLE", `${path} (no answer upstream)`);
      assert.ok(seconds < 5, `${path}: answered after ${seconds} s`);
    }

    // Every answer carries Server-Timing, the upstream's requests counted.
    const entries = await loggedSince(mirror, mark);
    assert.equal(entries.length, 10, describeEntries(entries));
    for (const entry of entries) assert.ok(entry.serverTiming, `${entry.path}: no Server-Timing`);
    assert.ok(
      entries.every((entry) => upstreamCalls([entry]) >= 1),
      describeEntries(entries),
    );
  });

  it("bytes that do not match their digest are never stored; the next GET asks the upstream again", async () => {
    // A manifest by digest whose upstream bytes are something else.
    const claimed = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, layers: [] }));
    const manifestDigest = `sha256:${sha256(claimed)}`;
    fake.served.set(`/v2/lying/manifests/${manifestDigest}`, {
      body: Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, layers: [], x: 1 })),
      type: OCI_MANIFEST,
    });
    const lyingManifest = await request(mirror, `/v2/up.fake/lying/manifests/${manifestDigest}`, {
      headers: { Accept: MANIFEST_ACCEPT },
    });
    assertError(lyingManifest, 503, "UNAVAILABLE", "manifest not matching its digest");

    // A blob: the same length, other bytes.
    const { digest, size, real, path } = lyingBlob("lying");
    await getBlob(`/v2/up.fake/lying/blobs/${digest}`, digest, size);
    // The fill (after the answer) is over within a moment: nothing is stored under that digest.
    await delay(1000);
    assert.ok(!(await mirrorStorage()).descriptors.has(digest), `${digest} was stored from bytes that are not its own`);
    const asked = fake.count(path);
    await getBlob(`/v2/up.fake/lying/blobs/${digest}`, digest, size);
    assert.equal(fake.count(path), asked + 1, "the second GET went to the upstream");
    await delay(500);
    assert.ok(!(await mirrorStorage()).descriptors.has(digest));

    // The same digest with its right bytes: served, stored, then served from storage.
    const goodPath = `/v2/good/blobs/${digest}`;
    fake.served.set(goodPath, { body: real, type: "application/octet-stream" });
    assert.equal(await getBlob(`/v2/up.fake/good/blobs/${digest}`, digest, size), "complete and correct");
    let problems;
    for (let poll = 0; poll < 40; poll++) {
      problems = storageProblems(await mirrorStorage(), new Map([[digest, size]]));
      if (!problems) break;
      await delay(250);
    }
    assert.equal(problems, null);
    assert.equal(await getBlob(`/v2/up.fake/good/blobs/${digest}`, digest, size), "complete and correct");
    assert.equal(fake.count(goodPath), 1, "served from storage the second time");
  });

  it("a client's GET of a blob whose upstream bytes are not its digest does not end as a success", async () => {
    const { digest, size } = lyingBlob("lying-again");
    const outcome = await getBlob(`/v2/up.fake/lying-again/blobs/${digest}`, digest, size);
    assert.match(outcome, /^failed/, `the client's GET: ${outcome}`);
  });

  it("a blob of unknown length whose bytes are not its digest reaches a plain HTTP client as a cut transfer", async () => {
    // workerd ends a chunked answer whose stream failed with a terminating chunk, as if
    // whole: the mirror sends the body with its length (the upstream's HEAD's), so a
    // mismatch leaves it short and the connection is cut.
    const { digest, size, real } = lyingBlob("chunked-lying", { chunked: true });
    const cut = await rawGet(`${mirror.url}/v2/up.fake/chunked-lying/blobs/${digest}`);
    assert.equal(cut.status, 200);
    assert.equal(cut.complete, false, `a complete message of ${cut.bytes} bytes`);
    assert.ok(cut.bytes < size, `${cut.bytes} bytes`);
    assert.equal(cut.headers["content-length"], String(size), "sent with its length");
    // The same blob with its own bytes, chunked upstream: complete and correct.
    fake.served.set(`/v2/chunked-right/blobs/${digest}`, {
      body: real,
      type: "application/octet-stream",
      chunked: true,
    });
    assert.equal(await getBlob(`/v2/up.fake/chunked-right/blobs/${digest}`, digest, size), "complete and correct");
  });

  it("a mirror with authentication applies its access rules to mirrored names", async () => {
    const { app } = images;
    // Anonymous pull allowed on up.open/** only.
    await pullWithSkopeo("up.open/team/app:v1", app, { registry: guarded });
    const closed = await request(guarded, "/v2/up.closed/team/app/manifests/v1", {
      headers: { Accept: MANIFEST_ACCEPT },
    });
    assertError(closed, 401, "UNAUTHORIZED", "anonymous GET up.closed/team/app");
    assert.match(closed.headers.get("www-authenticate") ?? "", /^Bearer realm=/);
    const tls = ["--src-tls-verify=false", "--retry-times", "0"];
    await expectFailure(
      clients.skopeo(
        "copy",
        ...tls,
        `docker://${guarded.host}/up.closed/team/app:v1`,
        `oci:${join(work, "closed")}:v1`,
      ),
      /unauthorized|authentication required/i,
    );
    await clients.skopeo(
      "copy",
      ...tls,
      "--src-creds",
      `reader:${guardUsers.reader}`,
      `docker://${guarded.host}/up.closed/team/app:v1`,
      `oci:${join(work, "closed-by-reader")}:v1`,
    );
  });

  it("with the upstream stopped, what was pulled still pulls (stale tags too); anything else is 503 at once", async (t) => {
    const { app, multi, never } = images;
    await dist.stop();
    const stopped = Date.now();
    // Never pulled: nothing to serve, and the upstream cannot be asked; a clear error at once.
    for (const path of [
      "/v2/up.dist/team/never/manifests/v1",
      `/v2/up.dist/team/never/manifests/${never.descriptor.digest}`,
      `/v2/up.dist/team/never/blobs/${never.manifest.layers[0].digest}`,
    ]) {
      const started = Date.now();
      const got = await request(mirror, path, { headers: { Accept: MANIFEST_ACCEPT } }, 20_000);
      assertError(got, 503, "UNAVAILABLE", `${path} with the upstream down`);
      assert.ok(Date.now() - started < 5000, `${path}: took ${Date.now() - started} ms`);
    }
    await expectFailure(
      skopeoCopy(clients, `docker://${mirror.host}/up.dist/team/never:v1`, `oci:${join(work, "never")}:v1`),
      /unavailable|503/i,
    );

    // Past the tag TTL (every confirmation came before the stop): the stored tags must be
    // revalidated, the upstream cannot answer, and they are served as stored.
    await delay(Math.max(0, stopped + DIST_TAG_TTL_SECONDS * 1000 + 200 - Date.now()));
    await pullWithSkopeo("up.dist/team/app:v1", app);
    await pullWithSkopeo(`up.dist/team/app@${app.descriptor.digest}`, app);
    await pullWithSkopeo("up.dist/team/multi:v1", multi, { all: true });
    const log = await readFile(mirror.logFile, "utf8");
    assert.match(log, /mirror up\.dist\/team\/app: serving the stored tag/);
    const tags = await request(mirror, "/v2/up.dist/team/app/tags/list");
    assert.equal(tags.status, 200, "tags/list falls back to the stored tags");
    assert.deepEqual(JSON.parse(tags.body.toString("utf8")).tags, ["v1"]);

    if (!containerd) return t.skip("containerd needs root");
    const reference = `${mirror.host}/up.dist/team/app:v1`;
    await pullWithCtr("app-upstream-down", reference, app, app.blobs, "--plain-http");
  });
});
