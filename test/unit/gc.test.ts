import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import type { GcOptions, GcRun } from "../../src/gc/collector";
import { verifyStorage } from "../../src/registry/integrity";
import {
  digestStream,
  imageManifest,
  MediaTypes,
  pushBlob,
  pushManifest,
  registry,
  sha256,
  utf8,
  type PushedManifest,
} from "./helpers";

const collector = () => env.GC.get(env.GC.idFromName("registry"));

/** Runs a collection to its end, stepping it by hand; `before(k)` runs before step k. */
async function collect(options: GcOptions, before?: (step: number) => Promise<void>): Promise<GcRun> {
  // R2 times have millisecond resolution: what the test wrote is strictly older than the run.
  await new Promise((resolve) => setTimeout(resolve, 5));
  const { started } = await collector().start({ graceSeconds: 0, drive: false, ...options });
  expect(started).toBe(true);
  for (let step = 0; step < 2000; step++) {
    if (before) await before(step);
    const run = await collector().step();
    if (!run || run.status !== "running") {
      expect(run?.status).toBe("done");
      return (await collector().status({ items: true })) as GcRun;
    }
  }
  throw new Error("the run did not finish in 2000 steps");
}

/** The blobs (config, layers) and the manifest digest of a pushed image. */
function digestsOf(manifest: Record<string, unknown>): string[] {
  const config = manifest.config as { digest: string };
  const layers = manifest.layers as { digest: string }[];
  return [config.digest, ...layers.map((layer) => layer.digest)];
}

interface Image {
  name: string;
  manifest: Record<string, unknown>;
  pushed: PushedManifest;
}

/** Pushes an image whose blobs are determined by `seed` (the same seed, the same bytes). */
async function pushImageOf(name: string, seed: string, tag?: string): Promise<Image> {
  const manifest = await imageManifest(name, { seed });
  const digest = await sha256(utf8(JSON.stringify(manifest)));
  const pushed = await pushManifest(name, tag ?? digest, manifest);
  return { name, manifest, pushed };
}

/** The image pulls whole: its manifest by digest, and every blob byte-identical. */
async function expectPulls(image: Image, reference = image.pushed.digest): Promise<void> {
  const response = await registry(`/v2/${image.name}/manifests/${reference}`, {
    headers: { Accept: MediaTypes.ociManifest },
  });
  expect(response.status, `${image.name}@${reference}`).toBe(200);
  expect(new Uint8Array(await response.arrayBuffer())).toEqual(image.pushed.bytes);
  const config = image.manifest.config as { digest: string; size: number };
  const layers = image.manifest.layers as { digest: string; size: number }[];
  for (const blob of [config, ...layers]) {
    const blobResponse = await registry(`/v2/${image.name}/blobs/${blob.digest}`);
    expect(blobResponse.status, `${image.name} blob ${blob.digest}`).toBe(200);
    expect(await digestStream(blobResponse.body as ReadableStream<Uint8Array>)).toEqual({
      digest: blob.digest,
      size: blob.size,
    });
  }
}

async function expectVerifyClean(): Promise<void> {
  const report = await verifyStorage({ bucket: env.BLOBS, kv: env.META });
  expect(report.findings.filter((finding) => finding.severity === "error")).toEqual([]);
}

async function deleteManifest(name: string, digest: string): Promise<void> {
  expect((await registry(`/v2/${name}/manifests/${digest}`, { method: "DELETE" })).status).toBe(202);
}

async function descriptorExists(digest: string): Promise<boolean> {
  const [algorithm, hex] = digest.split(":");
  return (await env.BLOBS.head(`blobs/${algorithm}/${hex}`)) !== null;
}

describe("garbage collection", () => {
  it("reclaims exactly the blobs nothing links, reports them, and a dry run names the same set", async () => {
    const shared = utf8("a layer both images share");
    const sharedDigest = await pushBlob("gc/one", shared);
    await pushBlob("gc/two", shared);
    const build = async (name: string, seed: string) => {
      const manifest = await imageManifest(name, { seed });
      (manifest.layers as object[]).push({
        mediaType: MediaTypes.ociLayer,
        digest: sharedDigest,
        size: shared.byteLength,
      });
      return { name, manifest, pushed: await pushManifest(name, "latest", manifest) };
    };
    const one = await build("gc/one", "one");
    const two = await build("gc/two", "two");
    await deleteManifest("gc/one", one.pushed.digest);
    const gone = [...digestsOf(one.manifest).filter((digest) => digest !== sharedDigest), one.pushed.digest].sort();

    const dry = await collect({ dryRun: true });
    const dryBlobs = (dry.items ?? []).filter((item) => item.kind === "blob").map((item) => item.name);
    expect(dryBlobs.sort()).toEqual(gone);
    for (const digest of gone) expect(await descriptorExists(digest)).toBe(true);

    const run = await collect({});
    const removed = (run.items ?? []).filter((item) => item.kind === "blob");
    expect(removed.map((item) => item.name).sort()).toEqual(gone);
    expect(run.blobsRemoved).toBe(gone.length);
    expect(run.bytesReclaimed).toBe(removed.reduce((sum, item) => sum + (item.size ?? 0), 0));
    expect(run.bytesReclaimed).toBe(dry.bytesReclaimed);
    // gc/one's three links (config, own layer, shared layer) went; the shared blob stays (gc/two links it).
    expect(run.removed.links).toBe(3);
    for (const digest of gone) expect(await descriptorExists(digest)).toBe(false);
    expect(await descriptorExists(sharedDigest)).toBe(true);
    await expectPulls(two, "latest");
    await expectVerifyClean();
    expect(await env.BLOBS.head("gc/active")).toBeNull();

    const again = await collect({});
    expect(again.blobsRemoved).toBe(0);
    expect(again.bytesReclaimed).toBe(0);
    expect(again.maxStepOperations).toBeGreaterThan(0);
  });

  it("retention: keeping the 3 newest of 10 tags removes the rest and their blobs", async () => {
    // vitest.config.ts: RETENTION keeps the 3 newest tags under gc-retention/**.
    const name = "gc-retention/app";
    const images: Image[] = [];
    for (let index = 0; index < 10; index++) images.push(await pushImageOf(name, `retention ${index}`, `v${index}`));
    const run = await collect({});
    const tags = (await (await registry(`/v2/${name}/tags/list`)).json()) as { tags: string[] };
    expect(tags.tags.sort()).toEqual(["v7", "v8", "v9"]);
    expect(run.removed.tags).toBe(7);
    expect(run.removed.manifests).toBe(7);
    for (const [index, image] of images.entries()) {
      if (index >= 7) {
        await expectPulls(image, `v${index}`);
        continue;
      }
      for (const digest of [...digestsOf(image.manifest), image.pushed.digest]) {
        expect(await descriptorExists(digest)).toBe(false);
      }
    }
    await expectVerifyClean();
  });
});
