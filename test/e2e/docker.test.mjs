// End-to-end: the Docker engine (dockerd, Debian's docker.io) as a client of the registry.
// One private daemon for the file (harness.mjs startDockerd: vfs storage, no network setup,
// everything in a temp dir), and three registries as `npm start` runs them:
// - `registry`, open: docker push, rmi and pull; a classic `docker build` FROM a pushed
//   image, pushed again (its base layers mounted or found, never uploaded twice);
// - `authed`, with users: docker login (a wrong password refused) and a push with its
//   credentials;
// - `mirror`, the daemon's `registry-mirrors` entry, with docker/distribution as its
//   default upstream `docker.io`: `docker pull NAME:TAG` of a Docker Hub name comes through
//   it, and what it stored still pulls with the upstream stopped.
// Images are built offline with umoci and put into the daemon with skopeo (docker-daemon:).
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gunzipSync } from "node:zlib";
import bcrypt from "bcryptjs";
import {
  buildOciImage,
  createClients,
  expectFailure,
  fetchWithTimeout,
  haveCommand,
  makeTempDir,
  parseServerTiming,
  readBlob,
  removeTempDir,
  sha256,
  skopeoCopy,
  startDistribution,
  startDockerd,
  startRegistry,
} from "./harness.mjs";

const KiB = 1024;
const MiB = 1 << 20;
const MANIFEST_ACCEPT = [
  "application/vnd.docker.distribution.manifest.v2+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.oci.image.index.v1+json",
].join(", ");

const missing = ["dockerd", "docker"].filter((command) => !haveCommand(command));
const skip = missing.length > 0 ? `no ${missing.join(" or ")} on this machine (Debian: docker.io)` : false;

/** This run's names: the daemon and the registries are fresh, but names say which run made them. */
const runId = randomBytes(4).toString("hex");
const pusher = { username: "pusher", password: "pusher-password" };

let registry;
let authed;
let dist;
let mirror;
let daemon;
let clients;
let work;
let baseImage;

/** The digest docker push reports (`TAG: digest: sha256:… size: N`). */
function pushedDigest({ stdout }) {
  const found = /: digest: (sha256:[0-9a-f]{64}) size: \d+/.exec(stdout.toString("utf8"));
  assert.ok(found, `no digest in docker push's output:\n${stdout}`);
  return found[1];
}

/** How many of docker push's progress lines end with `status`. */
function progressLines({ stdout }, status) {
  return stdout
    .toString("utf8")
    .split("\n")
    .filter((line) => /^[0-9a-f]{12}: /.test(line) && line.endsWith(`: ${status}`)).length;
}

async function inspectImage(reference) {
  const { stdout } = await daemon.docker("image", "inspect", reference);
  return JSON.parse(stdout.toString("utf8"))[0];
}

/** GET a manifest from `server` (no credentials); checks its Docker-Content-Digest. Returns it parsed with its digest. */
async function getManifest(server, repository, reference) {
  const got = await fetchWithTimeout(`${server.url}/v2/${repository}/manifests/${reference}`, {
    headers: { Accept: MANIFEST_ACCEPT },
  });
  assert.equal(got.status, 200, `GET ${repository}:${reference}: ${got.body.toString("utf8")}`);
  const digest = got.headers.get("docker-content-digest");
  assert.equal(digest, `sha256:${sha256(got.body)}`);
  return { digest, manifest: JSON.parse(got.body.toString("utf8")), headers: got.headers };
}

async function getBlob(server, repository, digest) {
  const got = await fetchWithTimeout(`${server.url}/v2/${repository}/blobs/${digest}`);
  assert.equal(got.status, 200, `GET blob ${digest} of ${repository}`);
  assert.equal(`sha256:${sha256(got.body)}`, digest);
  return got.body;
}

/** Blob uploads the registry finished (PUT …/blobs/uploads/…?digest=) among access log entries: their digests. */
function uploadedDigests(entries) {
  return entries
    .filter((entry) => entry.method === "PUT" && entry.status === 201 && entry.path.includes("/blobs/uploads/"))
    .map((entry) => new URL(entry.path, "http://registry").searchParams.get("digest"));
}

/** Cross-repository mounts the registry granted (POST …/blobs/uploads/?mount=&from= answered 201): their digests. */
function mountedDigests(entries) {
  return entries
    .filter((entry) => entry.method === "POST" && entry.status === 201 && entry.path.includes("mount="))
    .map((entry) => new URL(entry.path, "http://registry").searchParams.get("mount"));
}

/**
 * A two-layer image built with umoci, put into the daemon with skopeo (docker-daemon:) and
 * pushed with docker push to `registry` as e2e/base-<run>:v1. Built on first use, so each
 * test runs alone too (--test-name-pattern). Returns { repository, reference, digest,
 * imageId, diffIds }.
 */
function pushedBase() {
  baseImage ??= (async () => {
    const { layout, descriptor } = await buildOciImage(clients, work, "base", [1 * MiB, 256 * KiB], { tag: "v1" });
    const { config } = JSON.parse(await readBlob(layout, descriptor.digest));
    const { rootfs } = JSON.parse(await readBlob(layout, config.digest));
    const repository = `e2e/base-${runId}`;
    const reference = `${registry.host}/${repository}:v1`;
    await clients.skopeo("copy", "--dest-daemon-host", daemon.host, `oci:${layout}:v1`, `docker-daemon:${reference}`);
    const loaded = await inspectImage(reference);
    assert.deepEqual(loaded.RootFS.Layers, rootfs.diff_ids, "the daemon holds the layers umoci wrote");
    const pushed = await daemon.docker("push", reference);
    assert.equal(progressLines(pushed, "Pushed"), 2, pushed.stdout.toString("utf8"));
    return { repository, reference, digest: pushedDigest(pushed), imageId: loaded.Id, diffIds: rootfs.diff_ids };
  })();
  return baseImage;
}

describe("the Docker engine (dockerd) against the registry", { skip, timeout: 300_000 }, () => {
  before(async () => {
    const users = `${pusher.username}:${bcrypt.hashSync(pusher.password, 5)}`;
    const access = [{ repositories: ["**"], users: [pusher.username], actions: ["pull", "push"] }];
    // The registries start side by side; the mirror once its upstream is up.
    [registry, authed, mirror] = await Promise.all([
      // `v*` immutable in e2e/immutable-* (docs/configuration.md, "Immutable tags").
      startRegistry({ env: { IMMUTABLE_TAGS: JSON.stringify([{ repositories: ["e2e/immutable-*"], tags: ["v*"] }]) } }),
      startRegistry({
        env: { AUTH_USERS: users, AUTH_ACCESS: JSON.stringify(access), TOKEN_SECRET: "e2e docker token key" },
      }),
      startDistribution().then((server) => {
        dist = server;
        const upstreams = [{ prefix: "docker.io", url: dist.url, tagTtlSeconds: 3600 }];
        return startRegistry({ env: { UPSTREAMS: JSON.stringify(upstreams), UPSTREAM_DEFAULT: "docker.io" } });
      }),
    ]);
    clients = await createClients(registry);
    work = await makeTempDir("docker-work");
    daemon = await startDockerd({ mirrors: [mirror.url] });
  });

  after(async () => {
    // Each one stopped even if another fails to; the first failure is reported.
    const stops = [daemon, registry, authed, mirror, dist].filter(Boolean).map((server) => server.stop());
    if (clients) stops.push(clients.dispose());
    if (work) stops.push(removeTempDir(work));
    const failed = (await Promise.allSettled(stops)).find((outcome) => outcome.status === "rejected");
    if (failed) throw failed.reason;
  });

  it("docker push, rmi and pull: the image comes back with the digest the registry serves", async () => {
    const base = await pushedBase();
    const served = await getManifest(registry, base.repository, "v1");
    assert.equal(served.digest, base.digest, "docker push reported the digest the registry serves");

    await daemon.docker("rmi", base.reference);
    const gone = await daemon.docker("image", "inspect", base.reference, { check: false });
    assert.notEqual(gone.code, 0, "the image is gone from the daemon");

    const pulled = await daemon.docker("pull", base.reference);
    assert.match(pulled.stdout.toString("utf8"), new RegExp(`Digest: ${base.digest}`));
    const image = await inspectImage(base.reference);
    assert.deepEqual(image.RepoDigests, [`${registry.host}/${base.repository}@${base.digest}`]);
    assert.equal(image.Id, base.imageId, "the same image (its config) came back");
    assert.deepEqual(image.RootFS.Layers, base.diffIds, "the same layers came back");
  });

  it("docker build (classic builder) FROM a pushed image: pushed again, its base layers are mounted or found, never uploaded", async () => {
    const base = await pushedBase();
    const baseLayers = (await getManifest(registry, base.repository, "v1")).manifest.layers.map(
      (layer) => layer.digest,
    );
    const context = join(work, "build");
    await mkdir(context);
    const note = `built by the docker e2e test, run ${runId}\n`;
    await writeFile(join(context, "note.txt"), note);
    await writeFile(
      join(context, "Dockerfile"),
      [`FROM ${base.reference}`, "COPY note.txt /note.txt", `LABEL org.example.e2e.run="${runId}"`, ""].join("\n"),
    );
    const appRepository = `e2e/app-${runId}`;
    const app = `${registry.host}/${appRepository}:v2`;
    await daemon.docker("build", "--tag", app, context);

    // Another repository: the base layers are mounted from the base's.
    let mark = registry.accessLog.mark();
    const pushed = await daemon.docker("push", app);
    let entries = await registry.accessLog.settledSince(mark);
    const output = pushed.stdout.toString("utf8");
    assert.equal(progressLines(pushed, `Mounted from ${base.repository}`), baseLayers.length, output);
    assert.equal(progressLines(pushed, "Pushed"), 1, output);
    assert.deepEqual(mountedDigests(entries).sort(), [...baseLayers].sort());
    const uploaded = uploadedDigests(entries);
    assert.equal(uploaded.length, 2, `the new layer and the config only: ${uploaded}`);
    assert.deepEqual(
      uploaded.filter((digest) => baseLayers.includes(digest)),
      [],
    );

    const { digest, manifest } = await getManifest(registry, appRepository, "v2");
    assert.equal(digest, pushedDigest(pushed));
    assert.deepEqual(
      manifest.layers.map((layer) => layer.digest),
      [...baseLayers, manifest.layers.at(-1).digest],
    );
    const config = JSON.parse(await getBlob(registry, appRepository, manifest.config.digest));
    assert.equal(config.config.Labels["org.example.e2e.run"], runId);
    const newLayer = gunzipSync(await getBlob(registry, appRepository, manifest.layers.at(-1).digest));
    assert.ok(newLayer.includes("note.txt") && newLayer.includes(note), "the COPY layer holds note.txt");

    // The base's repository, another tag: its layers are there already, the new one is mounted.
    const again = `${registry.host}/${base.repository}:with-note`;
    await daemon.docker("tag", app, again);
    mark = registry.accessLog.mark();
    const pushedAgain = await daemon.docker("push", again);
    entries = await registry.accessLog.settledSince(mark);
    const outputAgain = pushedAgain.stdout.toString("utf8");
    assert.equal(progressLines(pushedAgain, "Layer already exists"), baseLayers.length, outputAgain);
    assert.equal(progressLines(pushedAgain, `Mounted from ${appRepository}`), 1, outputAgain);
    assert.ok(
      uploadedDigests(entries).every((uploadedDigest) => uploadedDigest === manifest.config.digest),
      `no layer uploaded: ${uploadedDigests(entries)}`,
    );
    assert.equal(pushedDigest(pushedAgain), digest);
  });

  it("docker login: refused with a wrong password; with the right one, docker push works", async () => {
    const base = await pushedBase();
    const configDir = join(work, "login-config");
    await mkdir(configDir);
    const target = `${authed.host}/team/docker-${runId}:v1`;
    await daemon.docker("tag", base.reference, target);

    // Refused at once: docker 20.10 retries a layer for ~50 s on an UNAUTHORIZED it takes for a passing one.
    const started = Date.now();
    await expectFailure(daemon.docker("push", target, { configDir }), /unauthorized: authentication required/i);
    assert.ok(Date.now() - started < 15_000, `the refused push took ${Date.now() - started} ms (retried?)`);
    await expectFailure(
      daemon.docker("login", "--username", pusher.username, "--password-stdin", authed.host, {
        configDir,
        input: "wrong\n",
      }),
      /unauthorized|incorrect username or password/i,
    );
    const login = await daemon.docker("login", "--username", pusher.username, "--password-stdin", authed.host, {
      configDir,
      input: `${pusher.password}\n`,
    });
    assert.match(login.stdout.toString("utf8"), /Login Succeeded/);

    const pushed = await daemon.docker("push", target, { configDir });
    const { stdout } = await clients.skopeo(
      "inspect",
      "--raw",
      "--tls-verify=false",
      "--creds",
      `${pusher.username}:${pusher.password}`,
      `docker://${target}`,
    );
    assert.equal(`sha256:${sha256(stdout)}`, pushedDigest(pushed), "the registry holds what docker pushed");
  });

  it("immutable tags: docker push of a changed v1 is denied naming the rule, the same v1 again succeeds, latest moves", async () => {
    const base = await pushedBase();
    const repository = `e2e/immutable-${runId}`;
    const v1 = `${registry.host}/${repository}:v1`;
    const latest = `${registry.host}/${repository}:latest`;
    await daemon.docker("tag", base.reference, v1);
    await daemon.docker("push", v1);

    // Another image under the same name: refused at once (no retries), the tag unchanged.
    const { layout } = await buildOciImage(clients, work, `changed-${runId}`, [64 * KiB], { tag: "v1" });
    await clients.skopeo("copy", "--dest-daemon-host", daemon.host, `oci:${layout}:v1`, `docker-daemon:${v1}`);
    const started = Date.now();
    await expectFailure(
      daemon.docker("push", v1),
      new RegExp(`denied: tag "v1" of ${repository} is immutable \\(IMMUTABLE_TAGS\\[0\\]`),
    );
    assert.ok(Date.now() - started < 15_000, `the refused push took ${Date.now() - started} ms (retried?)`);
    assert.equal((await getManifest(registry, repository, "v1")).digest, base.digest);

    // The same manifest again: accepted. latest moves both ways.
    await daemon.docker("tag", base.reference, v1);
    assert.equal(pushedDigest(await daemon.docker("push", v1)), base.digest);
    await daemon.docker("tag", `${registry.host}/${repository}:v1`, latest);
    await daemon.docker("push", latest);
    await clients.skopeo("copy", "--dest-daemon-host", daemon.host, `oci:${layout}:v1`, `docker-daemon:${latest}`);
    const moved = pushedDigest(await daemon.docker("push", latest));
    assert.notEqual(moved, base.digest);
    assert.equal((await getManifest(registry, repository, "latest")).digest, moved);

    const deleted = await fetchWithTimeout(`${registry.url}/v2/${repository}/manifests/v1`, { method: "DELETE" });
    assert.equal(deleted.status, 403);
    assert.match(deleted.body.toString("utf8"), /"code":"DENIED"/);
  });

  it("as the daemon's registry mirror: docker pull of a Docker Hub name comes through it, and is stored there", async () => {
    const name = `pulled-${runId}`;
    const { layout, descriptor } = await buildOciImage(clients, work, name, [512 * KiB], { tag: "v1" });
    const { config } = JSON.parse(await readBlob(layout, descriptor.digest));
    await skopeoCopy(clients, `oci:${layout}:v1`, `docker://${dist.host}/library/${name}:v1`);

    const mark = mirror.accessLog.mark();
    const pulled = await daemon.docker("pull", `${name}:v1`);
    const entries = await mirror.accessLog.settledSince(mark);
    assert.match(pulled.stdout.toString("utf8"), new RegExp(`Digest: ${descriptor.digest}`));
    const image = await inspectImage(`${name}:v1`);
    assert.equal(image.Id, config.digest);
    assert.deepEqual(image.RepoDigests, [`${name}@${descriptor.digest}`]);
    // The daemon resolves the tag (HEAD), then reads the manifest by digest, from the mirror.
    const asked = entries.map((entry) => `${entry.method} ${entry.path} ${entry.status}`);
    assert.ok(asked.includes(`HEAD /v2/library/${name}/manifests/v1 200`), asked.join("\n"));
    assert.ok(asked.includes(`GET /v2/library/${name}/manifests/${descriptor.digest} 200`), asked.join("\n"));

    // Stored under the upstream's prefix, served from there without asking the upstream.
    const stored = await getManifest(mirror, `docker.io/library/${name}`, "v1");
    assert.equal(stored.digest, descriptor.digest);
    const timing = stored.headers.get("server-timing");
    assert.equal(parseServerTiming(timing).upstream ?? 0, 0, `asked the upstream: ${timing}`);

    // With the upstream gone, the daemon still pulls it from what the mirror stored.
    await dist.stop();
    await daemon.docker("rmi", `${name}:v1`);
    const again = await daemon.docker("pull", `${name}:v1`);
    assert.match(again.stdout.toString("utf8"), new RegExp(`Digest: ${descriptor.digest}`));
    assert.equal((await inspectImage(`${name}:v1`)).Id, config.digest);
  });
});
