import { env } from "cloudflare:test";
import { expect } from "vitest";
import type { GcOptions, GcRun } from "../../src/gc/collector";
import { verifyStorage } from "../../src/registry/integrity";
import {
  digestStream,
  imageManifest,
  MediaTypes,
  pushManifest,
  registry,
  sha256,
  utf8,
  type PushedManifest,
} from "./helpers";

/** Helpers of the garbage collection tests (gc.test.ts, gc-concurrency.test.ts). */

export const collector = () => env.GC.get(env.GC.idFromName("registry"));

/** Runs a collection to its end, stepping it by hand; `before(k)` runs before step k. */
export async function collect(options: GcOptions, before?: (step: number) => Promise<void>): Promise<GcRun> {
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
export function digestsOf(manifest: Record<string, unknown>): string[] {
  const config = manifest.config as { digest: string };
  const layers = manifest.layers as { digest: string }[];
  return [config.digest, ...layers.map((layer) => layer.digest)];
}

export interface Image {
  name: string;
  manifest: Record<string, unknown>;
  pushed: PushedManifest;
  /** The bytes of its config and layer, by digest. */
  blobs: Map<string, Uint8Array<ArrayBuffer>>;
}

/**
 * Pushes an image whose blobs are determined by `seed` (the same seed, the same bytes:
 * helpers.imageManifest makes the config and the one layer from it).
 */
export async function pushImageOf(name: string, seed: string, tag?: string): Promise<Image> {
  const manifest = await imageManifest(name, { seed });
  const digest = await sha256(utf8(JSON.stringify(manifest)));
  const pushed = await pushManifest(name, tag ?? digest, manifest);
  const config = utf8(JSON.stringify({ architecture: "amd64", os: "linux", seed }));
  const layer = utf8(`layer bytes for ${seed}`);
  const blobs = new Map([
    [await sha256(config), config],
    [await sha256(layer), layer],
  ]);
  expect([...blobs.keys()]).toEqual(digestsOf(manifest));
  return { name, manifest, pushed, blobs };
}

/** The image pulls whole: its manifest by digest, and every blob byte-identical. */
export async function expectPulls(image: Image, reference = image.pushed.digest): Promise<void> {
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

export async function expectVerifyClean(options: { rehash?: boolean } = {}): Promise<void> {
  const report = await verifyStorage({ bucket: env.BLOBS, kv: env.META }, options);
  expect(report.findings.filter((finding) => finding.severity === "error")).toEqual([]);
}

export async function deleteManifest(name: string, digest: string): Promise<void> {
  expect((await registry(`/v2/${name}/manifests/${digest}`, { method: "DELETE" })).status).toBe(202);
}

/** Whether a blob is stored: a descriptor that is not the collector's tombstone. */
export async function descriptorExists(digest: string): Promise<boolean> {
  const [algorithm, hex] = digest.split(":");
  const head = await env.BLOBS.head(`blobs/${algorithm}/${hex}`);
  return head !== null && head.customMetadata?.gc !== "tombstone";
}
