#!/usr/bin/env node
// Captures what docker/distribution (Debian's docker-registry) posts to a notification
// endpoint, as the reference the `distribution` webhook format is checked against
// (test/fixtures/distribution-notification.json; test/unit/events.test.ts and
// test/e2e/events.test.mjs compare field names and structure, not ids or times).
//
// It runs docker-registry with `notifications.endpoints` pointing at a receiver on
// 127.0.0.1, pushes a one-layer image with skopeo, copies it to a second repository (blob
// mounts), pulls it, and deletes the manifest by digest; then writes every envelope it got
// with its Content-Type. The machine's host name in `source.addr` is replaced by
// `localhost` (nothing else is changed).
//
// Usage: node scripts/capture-distribution-notification.mjs [--out test/fixtures/distribution-notification.json]
import { writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import { hostname } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import {
  buildOciImage,
  createClients,
  fetchWithTimeout,
  makeTempDir,
  removeTempDir,
  skopeoCopy,
  startDistribution,
} from "../test/e2e/harness.mjs";

const args = process.argv.slice(2);
const outIndex = args.indexOf("--out");
const out = outIndex >= 0 ? args[outIndex + 1] : "test/fixtures/distribution-notification.json";

const envelopes = [];
const receiver = createServer((request, response) => {
  const chunks = [];
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("end", () => {
    envelopes.push({
      contentType: request.headers["content-type"],
      body: JSON.parse(Buffer.concat(chunks).toString("utf8")),
    });
    response.writeHead(200).end();
  });
});
await new Promise((resolve) => receiver.listen(0, "127.0.0.1", resolve));
const notify = `http://127.0.0.1:${receiver.address().port}/events`;

const dist = await startDistribution({ notify });
const clients = await createClients({ clientHost: dist.host, logTail: dist.logTail });
const work = await makeTempDir("capture");
try {
  const { layout } = await buildOciImage(clients, work, "capture", [64 * 1024], { tag: "v1" });
  await skopeoCopy(clients, `oci:${layout}:v1`, `docker://${dist.host}/team/app:v1`);
  await skopeoCopy(clients, `docker://${dist.host}/team/app:v1`, `docker://${dist.host}/other/app:v1`);
  await skopeoCopy(clients, `docker://${dist.host}/team/app:v1`, `oci:${join(work, "pulled")}:v1`);
  const head = await fetchWithTimeout(`${dist.url}/v2/team/app/manifests/v1`, {
    method: "HEAD",
    headers: { Accept: "application/vnd.oci.image.manifest.v1+json" },
  });
  const digest = head.headers.get("docker-content-digest");
  const deleted = await fetchWithTimeout(`${dist.url}/v2/team/app/manifests/${digest}`, { method: "DELETE" });
  if (deleted.status !== 202) throw new Error(`DELETE answered ${deleted.status}`);
  // distribution posts from a queue of its own: wait until nothing more arrives.
  let seen = -1;
  while (seen !== envelopes.length) {
    seen = envelopes.length;
    await delay(2000);
  }
  const machine = hostname();
  const scrubbed = JSON.parse(JSON.stringify(envelopes).replaceAll(`"${machine}:`, '"localhost:'));
  const capture = {
    note: "What Debian's docker-registry (docker/distribution 2.8) posted to a notification endpoint for a skopeo push, a copy to another repository, a pull and a manifest delete; made by scripts/capture-distribution-notification.mjs",
    envelopes: scrubbed,
  };
  await writeFile(out, `${JSON.stringify(capture, null, 2)}\n`);
  console.log(
    `${envelopes.length} envelopes, ${scrubbed.reduce((n, e) => n + e.body.events.length, 0)} events -> ${out}`,
  );
} finally {
  await dist.stop();
  await clients.dispose();
  await removeTempDir(work);
  receiver.close();
}
