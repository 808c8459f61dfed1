// End-to-end: immutable tags (IMMUTABLE_TAGS; docs/configuration.md, "Immutable tags")
// with skopeo against `npm start`. `v*` is immutable in team/** except `v*-rc`: skopeo
// re-pushing a changed v1 gets DENIED naming the rule and the tag still names the first
// manifest; the same manifest again succeeds; `latest` (and `v1-rc`) move freely; deleting
// v1 is refused; and 16 concurrent skopeo pushes of different images to a new immutable
// tag leave exactly one winner, the tag naming it. The images are tiny OCI layouts
// written directly (one config, one layer), so the file spends its time in the clients.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  createClients,
  fetchWithTimeout,
  haveCommand,
  makeTempDir,
  removeTempDir,
  skopeoCopy,
  startRegistry,
  writeBlob,
} from "./harness.mjs";

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const RULES = [{ repositories: ["team/**"], tags: ["v*"], except: ["v*-rc"] }];
const skip = haveCommand("skopeo") ? false : "no skopeo on this machine";

let registry;
let clients;
let work;

/** A one-layer OCI layout of its own (distinct bytes): returns its path and manifest digest. */
async function tinyImage(name) {
  const layout = join(work, name);
  await mkdir(join(layout, "blobs", "sha256"), { recursive: true });
  await writeFile(join(layout, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  const layer = await writeBlob(layout, randomBytes(512));
  const config = await writeBlob(
    layout,
    Buffer.from(
      JSON.stringify({ architecture: "amd64", os: "linux", rootfs: { type: "layers", diff_ids: [layer.digest] } }),
    ),
  );
  const manifest = await writeBlob(
    layout,
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
        layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", ...layer }],
      }),
    ),
  );
  await writeFile(
    join(layout, "index.json"),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: OCI_MANIFEST, ...manifest, annotations: { "org.opencontainers.image.ref.name": "x" } }],
    }),
  );
  return { source: `oci:${layout}:x`, digest: manifest.digest };
}

function push(image, repository, tag) {
  return skopeoCopy(clients, image.source, `docker://${registry.host}/${repository}:${tag}`, { timeoutMs: 60_000 });
}

async function digestOf(repository, tag) {
  const answer = await fetchWithTimeout(`${registry.url}/v2/${repository}/manifests/${tag}`, {
    method: "HEAD",
    headers: { Accept: OCI_MANIFEST },
  });
  return answer.status === 200 ? answer.headers.get("docker-content-digest") : null;
}

describe("immutable tags with skopeo", { skip, timeout: 120_000 }, () => {
  before(async () => {
    registry = await startRegistry({ env: { IMMUTABLE_TAGS: JSON.stringify(RULES) } });
    clients = await createClients(registry);
    work = await makeTempDir("immutable-work");
  });

  after(async () => {
    const stops = [registry?.stop(), clients?.dispose(), work && removeTempDir(work)].filter(Boolean);
    const failed = (await Promise.allSettled(stops)).find((outcome) => outcome.status === "rejected");
    if (failed) throw failed.reason;
  });

  it("a changed v1 is refused, the same v1 again accepted, latest moves, v1 cannot be deleted", async () => {
    const [first, second] = await Promise.all([tinyImage("first"), tinyImage("second")]);
    await push(first, "team/app", "v1");
    assert.equal(await digestOf("team/app", "v1"), first.digest);

    const refused = await push(second, "team/app", "v1").then(
      () => assert.fail("skopeo pushed a changed immutable tag"),
      (error) => error,
    );
    const stderr = refused.result?.stderr?.toString("utf8") ?? String(refused);
    assert.match(stderr, /denied/i, stderr);
    // skopeo quotes the message (`\"v1\"`).
    assert.match(stderr, /tag \\?"v1\\?" of team\/app is immutable \(IMMUTABLE_TAGS\[0\]/, stderr);
    assert.equal(await digestOf("team/app", "v1"), first.digest, "v1 still names the first manifest");

    await push(first, "team/app", "v1");
    assert.equal(await digestOf("team/app", "v1"), first.digest);

    for (const tag of ["latest", "v1-rc"]) {
      await push(first, "team/app", tag);
      await push(second, "team/app", tag);
      assert.equal(await digestOf("team/app", tag), second.digest, `${tag} moved`);
    }

    const deleted = await clients.skopeo("delete", "--tls-verify=false", `docker://${registry.host}/team/app:v1`, {
      check: false,
    });
    assert.notEqual(deleted.code, 0, "skopeo delete of an immutable tag fails");
    assert.match(deleted.stderr.toString("utf8"), /immutable/);
    assert.equal(await digestOf("team/app", "v1"), first.digest);
  });

  it("16 concurrent pushes of different images to a new immutable tag: one wins, the tag names it", async () => {
    const images = await Promise.all(Array.from({ length: 16 }, (_, index) => tinyImage(`race-${index}`)));
    const outcomes = await Promise.allSettled(images.map((image) => push(image, "team/race", "v2")));
    const won = outcomes.flatMap((outcome, index) => (outcome.status === "fulfilled" ? [images[index]] : []));
    assert.equal(won.length, 1, `winners: ${won.length}`);
    for (const outcome of outcomes.filter((outcome) => outcome.status === "rejected")) {
      assert.match(outcome.reason.result?.stderr?.toString("utf8") ?? String(outcome.reason), /immutable/);
    }
    assert.equal(await digestOf("team/race", "v2"), won[0].digest);
  });
});
