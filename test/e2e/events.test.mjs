// End-to-end: change events delivered to webhook receivers, with real clients against the
// registry as `npm start` runs it (the EVENTS queue, its dead-letter queue and the D1
// database run in Miniflare, from wrangler.toml). The receivers are small node servers on
// 127.0.0.1 that check every delivery's Standard Webhooks signature with the
// standardwebhooks package. Covered: a skopeo push and a docker push each tell one signed
// CloudEvent naming the repository, tag, digest and the user; a tag delete and a manifest
// delete; an endpoint filtered to team/** hears nothing of other/; a distribution-format
// endpoint gets distribution's envelope (test/fixtures/distribution-notification.json); a
// receiver down for 5 s (a few failed attempts) gets every event once it is back, each
// once; one that always answers 500 ends in the dead-letter queue, listed by the admin API,
// and a redrive after the fix delivers each exactly once. Retry delays are 1 s here (an
// attempt every ~2 s with the queue's 1 s batch timeout: the 11 attempts of max_retries
// take ~20 s), which is what this file's run time is made of.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import bcrypt from "bcryptjs";
import { Webhook } from "standardwebhooks";
import {
  ROOT,
  buildOciImage,
  createClients,
  fetchWithTimeout,
  haveCommand,
  makeTempDir,
  removeTempDir,
  skopeoCopy,
  startDockerd,
  startRegistry,
} from "./harness.mjs";

const KiB = 1024;
const SECRET = `whsec_${randomBytes(32).toString("base64")}`;
const ADMIN_TOKEN = randomBytes(24).toString("hex");
const pusher = { username: "pusher", password: "pusher-password" };
const creds = `${pusher.username}:${pusher.password}`;
const basic = { Authorization: `Basic ${Buffer.from(creds).toString("base64")}` };
const admin = { Authorization: `Bearer ${ADMIN_TOKEN}` };

/**
 * Webhook receivers on one 127.0.0.1 port: `/<name>` records what each endpoint got
 * (verified), answering `status(name)`. `close()` takes the port down (connections
 * refused); `listen()` brings it back on the same port.
 */
async function startReceivers() {
  const verifier = new Webhook(SECRET);
  const got = new Map();
  const failing = new Set();
  const badSignatures = [];
  const server = createServer((request, response) => {
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => {
      const name = request.url.slice(1);
      const body = Buffer.concat(chunks).toString("utf8");
      if (failing.has(name)) {
        response.writeHead(500).end();
        return;
      }
      let payload;
      try {
        payload = verifier.verify(body, request.headers);
      } catch (error) {
        badSignatures.push(`${name}: ${error.message}`);
        response.writeHead(400).end();
        return;
      }
      const list = got.get(name) ?? [];
      list.push({ id: request.headers["webhook-id"], contentType: request.headers["content-type"], payload });
      got.set(name, list);
      response.writeHead(204).end();
    });
  });
  const listen = (port = 0) =>
    new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => resolve(server.address().port));
    });
  const port = await listen();
  return {
    port,
    url: (name) => `http://127.0.0.1:${port}/${name}`,
    got: (name) => got.get(name) ?? [],
    failing,
    badSignatures,
    close: () =>
      new Promise((resolve) => {
        server.close(resolve);
        server.closeAllConnections();
      }),
    listen: () => listen(port),
  };
}

let receivers;
let flakyReceiver;
let registry;
let clients;
let work;
let layout;

/** The CloudEvents `all` got, of one repository, their payloads. */
function cloudEventsOf(repository) {
  return receivers
    .got("all")
    .map(({ payload }) => payload)
    .filter((event) => event.data.repository === repository);
}

/** Waits until `check()` returns a truthy value (or the deadline passes); returns it. */
async function eventually(check, { timeoutMs = 30_000, what = "the condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) assert.fail(`${what} did not hold within ${timeoutMs} ms`);
    await delay(200);
  }
}

/** Waits until `count()` stops growing for `quietMs` (deliveries of one change arrive together). */
async function settled(count, quietMs = 1500) {
  let last = -1;
  while (count() !== last) {
    last = count();
    await delay(quietMs);
  }
  return last;
}

/** The digest the registry serves for a tag. */
async function servedDigest(repository, tag) {
  const response = await fetchWithTimeout(`${registry.url}/v2/${repository}/manifests/${tag}`, {
    method: "HEAD",
    headers: { ...basic, Accept: "application/vnd.oci.image.manifest.v1+json" },
  });
  assert.equal(response.status, 200);
  return response.headers.get("docker-content-digest");
}

function push(repository, tag = "v1") {
  return skopeoCopy(clients, `oci:${layout}:v1`, `docker://${registry.host}/${repository}:${tag}`, { creds });
}

/** Ids delivered more than once. */
function duplicates(deliveries) {
  const seen = new Set();
  return deliveries.filter(({ id }) => (seen.has(id) ? true : (seen.add(id), false))).map(({ id }) => id);
}

describe("webhook events with real clients", { timeout: 300_000 }, () => {
  before(async () => {
    const missing = ["skopeo", "umoci"].filter((command) => !haveCommand(command));
    assert.deepEqual(missing, [], `missing client tools: ${missing.join(", ")}`);
    receivers = await startReceivers();
    flakyReceiver = await startReceivers();
    const endpoints = [
      { name: "all", url: receivers.url("all"), secret: "WEBHOOK_SECRET_E2E" },
      { name: "team", url: receivers.url("team"), secret: SECRET, repositories: ["team/**"] },
      { name: "dist", url: receivers.url("dist"), secret: SECRET, repositories: ["dist/**"], format: "distribution" },
      { name: "flaky", url: flakyReceiver.url("flaky"), secret: SECRET, repositories: ["flaky/**"] },
      { name: "broken", url: receivers.url("broken"), secret: SECRET, repositories: ["dead/**"] },
    ];
    registry = await startRegistry({
      env: {
        AUTH_USERS: `${pusher.username}:${bcrypt.hashSync(pusher.password, 5)}`,
        TOKEN_SECRET: "e2e events token key",
        ADMIN_TOKEN,
        WEBHOOKS: JSON.stringify(endpoints),
        WEBHOOK_SECRET_E2E: SECRET,
        WEBHOOK_RETRY_BASE_SECONDS: "1",
        WEBHOOK_RETRY_MAX_SECONDS: "1",
        WEBHOOK_TIMEOUT_SECONDS: "2",
      },
    });
    clients = await createClients(registry);
    work = await makeTempDir("events-work");
    ({ layout } = await buildOciImage(clients, work, "events", [64 * KiB], { tag: "v1" }));
  });

  after(async () => {
    const stops = [registry?.stop(), clients?.dispose(), work && removeTempDir(work)];
    stops.push(receivers?.close(), flakyReceiver?.close());
    const failed = (await Promise.allSettled(stops)).find((outcome) => outcome.status === "rejected");
    if (failed) throw failed.reason;
  });

  it("a skopeo push tells one signed CloudEvent of its manifest: repository, tag, digest and the user", async () => {
    await push("team/app");
    const digest = await servedDigest("team/app", "v1");
    const pushes = await eventually(
      () => {
        const found = cloudEventsOf("team/app").filter((event) => event.type === "io.edge-registry.manifest.put");
        return found.length > 0 && found;
      },
      { what: "the manifest.put event" },
    );
    await settled(() => receivers.got("all").length);
    assert.equal(cloudEventsOf("team/app").filter((event) => event.type === "io.edge-registry.manifest.put").length, 1);
    const [event] = pushes;
    assert.equal(event.specversion, "1.0");
    assert.equal(event.source, `${registry.url}/v2/team/app`);
    assert.equal(event.subject, digest);
    assert.equal(event.data.digest, digest);
    assert.deepEqual(event.data.tags, ["v1"]);
    assert.deepEqual(event.data.actor, { kind: "user", name: "pusher" });
    assert.match(event.data.userAgent, /skopeo/);
    // Its blobs too, once each; the endpoint filtered to team/** had the same.
    const blobs = cloudEventsOf("team/app").filter((e) => e.type !== "io.edge-registry.manifest.put");
    assert.ok(blobs.length >= 2, `blob events: ${blobs.map((e) => e.type)}`);
    assert.deepEqual(
      receivers
        .got("team")
        .map(({ payload }) => payload.id)
        .sort(),
      cloudEventsOf("team/app")
        .map((e) => e.id)
        .sort(),
    );
    assert.equal(receivers.got("all")[0].contentType, "application/cloudevents+json");
    assert.deepEqual(receivers.badSignatures, []);
  });

  it("a tag delete and a manifest delete tell theirs", async () => {
    const digest = await servedDigest("team/app", "v1");
    await push("team/app", "v2");
    const untag = await fetchWithTimeout(`${registry.url}/v2/team/app/manifests/v2`, {
      method: "DELETE",
      headers: basic,
    });
    assert.equal(untag.status, 202);
    const removed = await fetchWithTimeout(`${registry.url}/v2/team/app/manifests/${digest}`, {
      method: "DELETE",
      headers: basic,
    });
    assert.equal(removed.status, 202);
    const tagDeleted = await eventually(
      () => cloudEventsOf("team/app").find((event) => event.type === "io.edge-registry.tag.delete"),
      { what: "the tag.delete event" },
    );
    assert.equal(tagDeleted.subject, "v2");
    assert.deepEqual(tagDeleted.data.tags, ["v2"]);
    const manifestDeleted = await eventually(
      () => cloudEventsOf("team/app").find((event) => event.type === "io.edge-registry.manifest.delete"),
      { what: "the manifest.delete event" },
    );
    assert.equal(manifestDeleted.data.digest, digest);
    assert.deepEqual(manifestDeleted.data.tags, ["v1"]);
    assert.deepEqual(manifestDeleted.data.actor, { kind: "user", name: "pusher" });
  });

  it("an endpoint filtered to team/** hears nothing of other/", async () => {
    const before = receivers.got("team").length;
    await push("other/app");
    await eventually(() => cloudEventsOf("other/app").some((event) => event.type === "io.edge-registry.manifest.put"), {
      what: "other/app's push at the unfiltered endpoint",
    });
    await settled(() => receivers.got("all").length);
    assert.equal(receivers.got("team").length, before);
    assert.ok(receivers.got("team").every(({ payload }) => payload.data.repository.startsWith("team/")));
  });

  it("a distribution-format endpoint gets the envelope docker/distribution sends", async () => {
    await push("dist/app");
    const digest = await servedDigest("dist/app", "v1");
    await eventually(() => receivers.got("dist").some(({ payload }) => payload.events[0].target.tag === "v1"), {
      what: "the distribution push event",
    });
    const fixture = JSON.parse(await readFile(join(ROOT, "test/fixtures/distribution-notification.json"), "utf8"));
    const theirs = fixture.envelopes.flatMap((envelope) => envelope.body.events);
    const ours = receivers.got("dist").flatMap(({ payload }) => payload.events);
    assert.ok(receivers.got("dist").every(({ contentType }) => contentType === fixture.envelopes[0].contentType));
    // Field names and structure, not ids or times.
    const keys = (value) =>
      value && typeof value === "object" && !Array.isArray(value)
        ? Object.fromEntries(
            Object.keys(value)
              .sort()
              .map((key) => [key, keys(value[key])]),
          )
        : typeof value;
    const manifestPush = (event) => event.action === "push" && event.target.mediaType !== "application/octet-stream";
    const blobPush = (event) => event.action === "push" && event.target.mediaType === "application/octet-stream";
    // The capture's pushes were anonymous (`actor: {}`); ours name the user (`{name}`, distribution's ActorRecord).
    const anonymous = (event) => ({ ...event, actor: {} });
    const oursManifest = ours.find(manifestPush);
    assert.deepEqual(keys(anonymous(oursManifest)), keys(theirs.find(manifestPush)));
    assert.deepEqual(keys(anonymous(ours.find(blobPush))), keys(theirs.find(blobPush)));
    assert.deepEqual(oursManifest.actor, { name: "pusher" });
    assert.equal(oursManifest.target.digest, digest);
    assert.equal(oursManifest.target.repository, "dist/app");
    assert.equal(oursManifest.request.method, "PUT");
    assert.equal(oursManifest.target.url, `${registry.url}/v2/dist/app/manifests/${digest}`);
  });

  // The slow ones side by side: retries over 5 s, the dead-letter queue after ~20 s, and a
  // private Docker engine started for one push. What each asserts is of its own repository.
  describe("deliveries that fail, and a docker push beside them", { concurrency: true }, () => {
    it("a receiver down for 5 s gets every event once it is back, each once", async () => {
      await flakyReceiver.close();
      await push("flaky/app");
      const expected = await eventually(
        () => cloudEventsOf("flaky/app").some((event) => event.type === "io.edge-registry.manifest.put"),
        { what: "flaky/app's events at the healthy endpoint" },
      ).then(() => settled(() => cloudEventsOf("flaky/app").length));
      // Attempts ~2 s apart: two or three of the 11 fail meanwhile, the rest are left.
      await delay(5000);
      assert.equal(flakyReceiver.got("flaky").length, 0);
      await flakyReceiver.listen();
      await eventually(() => flakyReceiver.got("flaky").length >= expected, {
        timeoutMs: 60_000,
        what: `all ${expected} events at the receiver that came back`,
      });
      await delay(3000);
      const got = flakyReceiver.got("flaky");
      assert.deepEqual(duplicates(got), []);
      assert.deepEqual(
        got.map(({ id }) => id).sort(),
        cloudEventsOf("flaky/app")
          .map((event) => event.id)
          .sort(),
      );
      assert.deepEqual(flakyReceiver.badSignatures, []);
    });

    it("a receiver that always fails: the dead-letter queue, the admin API's list, a redrive delivers each once", async () => {
      receivers.failing.add("broken");
      await push("dead/app");
      const expected = await eventually(
        () => cloudEventsOf("dead/app").some((event) => event.type === "io.edge-registry.manifest.put"),
        { what: "dead/app's events at the healthy endpoint" },
      ).then(() => settled(() => cloudEventsOf("dead/app").length));
      const listed = await eventually(
        async () => {
          const response = await fetchWithTimeout(`${registry.url}/_admin/deliveries?status=failed&endpoint=broken`, {
            headers: admin,
          });
          assert.equal(response.status, 200);
          const { deliveries } = JSON.parse(response.body.toString("utf8"));
          return deliveries.length >= expected && deliveries;
        },
        { timeoutMs: 90_000, what: `${expected} failed deliveries listed` },
      );
      assert.deepEqual(
        listed.map((delivery) => delivery.eventId).sort(),
        cloudEventsOf("dead/app")
          .map((event) => event.id)
          .sort(),
      );
      for (const delivery of listed) {
        assert.equal(delivery.endpoint, "broken");
        assert.equal(delivery.lastStatus, 500);
        assert.equal(delivery.attempts, 11, "the first attempt and max_retries (10)");
      }

      receivers.failing.delete("broken");
      const redrive = await fetchWithTimeout(`${registry.url}/_admin/deliveries/redrive`, {
        method: "POST",
        headers: admin,
      });
      assert.equal(redrive.status, 202, redrive.body.toString("utf8"));
      assert.deepEqual(JSON.parse(redrive.body.toString("utf8")), {
        redriven: expected,
        events: expected,
        remaining: 0,
      });
      await eventually(() => receivers.got("broken").length >= expected, {
        what: `the ${expected} redriven deliveries`,
      });
      const again = await fetchWithTimeout(`${registry.url}/_admin/deliveries/redrive`, {
        method: "POST",
        headers: admin,
      });
      assert.deepEqual(JSON.parse(again.body.toString("utf8")), { redriven: 0, events: 0, remaining: 0 });
      await delay(3000);
      const got = receivers.got("broken");
      assert.deepEqual(duplicates(got), []);
      assert.equal(got.length, expected);
      // The healthy endpoint had them once, at the first attempt: the redrive did not resend.
      assert.deepEqual(duplicates(receivers.got("all")), []);
    });

    it(
      "a docker push tells one signed CloudEvent of its manifest, with the user who logged in",
      { skip: !haveCommand("dockerd") && "no dockerd" },
      async () => {
        const daemon = await startDockerd();
        try {
          const reference = `${registry.host}/team/docker:v1`;
          await clients.skopeo(
            "copy",
            "--dest-daemon-host",
            daemon.host,
            `oci:${layout}:v1`,
            `docker-daemon:${reference}`,
          );
          const configDir = join(work, "docker-config");
          await daemon.docker("login", "--username", pusher.username, "--password-stdin", registry.host, {
            configDir,
            input: `${pusher.password}\n`,
          });
          await daemon.docker("push", reference, { configDir });
          const digest = await servedDigest("team/docker", "v1");
          await eventually(
            () => cloudEventsOf("team/docker").some((event) => event.type === "io.edge-registry.manifest.put"),
            {
              what: "docker push's manifest.put event",
            },
          );
          await settled(() => receivers.got("all").length);
          const pushes = cloudEventsOf("team/docker").filter((event) => event.type === "io.edge-registry.manifest.put");
          assert.equal(pushes.length, 1);
          assert.equal(pushes[0].data.digest, digest);
          assert.deepEqual(pushes[0].data.tags, ["v1"]);
          assert.deepEqual(pushes[0].data.actor, { kind: "user", name: "pusher" });
          assert.match(pushes[0].data.userAgent, /docker/);
          assert.deepEqual(receivers.badSignatures, []);
        } finally {
          await daemon.stop();
        }
      },
    );
  });
});
