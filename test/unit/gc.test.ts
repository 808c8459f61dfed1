import { createExecutionContext, env, waitOnExecutionContext } from "cloudflare:test";
import worker from "../../src/index";
import { parseDigest } from "../../src/oci/digest";
import { BlobStore } from "../../src/registry/blob-store";
import { describe, expect, it } from "vitest";
import { expectBlobReads, imageManifest, MediaTypes, pushBlob, pushManifest, registry, utf8 } from "./helpers";
import {
  collect,
  collector,
  deleteManifest,
  descriptorExists,
  digestsOf,
  expectPulls,
  expectVerifyClean,
  pushImageOf,
  type Image,
} from "./gc-helpers";

/** Every R2 key with its etag and write time, and every KV key. */
async function snapshot(): Promise<string[]> {
  const entries: string[] = [];
  let cursor: string | undefined;
  for (let page = 0; page < 100; page++) {
    const listing = await env.BLOBS.list({ ...(cursor ? { cursor } : {}) });
    for (const object of listing.objects) entries.push(`${object.key} ${object.etag} ${object.uploaded.getTime()}`);
    if (!listing.truncated) break;
    cursor = listing.cursor;
  }
  const kv = await env.META.list();
  return [...entries, ...kv.keys.map((key) => `kv ${key.name}`)];
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
      return { name, manifest, pushed: await pushManifest(name, "latest", manifest), blobs: new Map() };
    };
    const one = await build("gc/one", "one");
    const two = await build("gc/two", "two");
    await deleteManifest("gc/one", one.pushed.digest);
    const gone = [...digestsOf(one.manifest).filter((digest) => digest !== sharedDigest), one.pushed.digest].sort();

    const before = await snapshot();
    const dry = await collect({ dryRun: true });
    // A dry run changes nothing in R2 or KV.
    expect(await snapshot()).toEqual(before);
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
    // The run marker stays, saying no run is active (Manifests.put reads it).
    expect((await env.BLOBS.head("gc/active"))?.customMetadata?.state).toBe("idle");

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

describe("the cron trigger", () => {
  it("starts a run that drives itself with alarms to the end", async () => {
    const ctx = createExecutionContext();
    await worker.scheduled({ cron: "17 3 * * *", scheduledTime: Date.now(), noRetry: () => undefined }, env, ctx);
    await waitOnExecutionContext(ctx);
    let run = await collector().status();
    expect(run?.trigger).toBe("cron");
    for (let poll = 0; poll < 200 && run?.status === "running"; poll++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      run = await collector().status();
    }
    expect(run?.status).toBe("done");
    expect(run?.steps).toBeGreaterThanOrEqual(11);
    expect((await env.BLOBS.head("gc/active"))?.customMetadata?.state).toBe("idle");
  });
});

describe("the writers' half of the protocol", () => {
  const storage = () => ({ bucket: env.BLOBS, kv: env.META });
  const recordKey = (digest: string) => `blobs/${digest.replace(":", "/")}`;

  it("linking a condemned blob revives it, so the collector's tombstone (conditional) fails", async () => {
    const digest = await pushBlob("gc-writers/a", utf8("condemned then linked"));
    const record = await env.BLOBS.get(recordKey(digest));
    const plain = (await record?.json()) as { digest: string; size: number; key: string };
    const condemned = await env.BLOBS.put(recordKey(digest), JSON.stringify({ ...plain, condemned: "1" }), {
      customMetadata: { key: plain.key, size: String(plain.size), gc: "condemned" },
    });
    // A mount links it into another repository: the link's check revives it.
    const mounted = await registry(`/v2/gc-writers/b/blobs/uploads/?mount=${digest}&from=gc-writers/a`, {
      method: "POST",
    });
    expect(mounted.status).toBe(201);
    const after = await env.BLOBS.head(recordKey(digest));
    expect(after?.customMetadata?.gc).toBeUndefined();
    expect(after?.etag).not.toBe(condemned?.etag);
    const tombstone = await env.BLOBS.put(recordKey(digest), "{}", { onlyIf: { etagMatches: condemned?.etag ?? "" } });
    expect(tombstone).toBeNull();
    await expectVerifyClean();
  });

  it("a tombstoned blob is absent: a link to it fails retryably, and a push stores it again", async () => {
    const bytes = utf8("tombstoned, then pushed again");
    const digest = await pushBlob("gc-writers/c", bytes);
    const record = await env.BLOBS.get(recordKey(digest));
    const plain = (await record?.json()) as { digest: string; size: number; key: string };
    await env.BLOBS.put(recordKey(digest), JSON.stringify({ digest, tombstone: true }), {
      customMetadata: { key: plain.key, size: String(plain.size), gc: "tombstone" },
    });
    // Publishing the very object the tombstone names is refused (its bytes are being deleted).
    await expect(new BlobStore(storage()).publish(parseDigest(digest), plain.size, plain.key)).rejects.toMatchObject({
      code: "BLOB_UPLOAD_INVALID",
    });
    // Mounting it finds no blob (202: upload it), and a push stores new bytes under the digest.
    const mounted = await registry(`/v2/gc-writers/d/blobs/uploads/?mount=${digest}&from=gc-writers/c`, {
      method: "POST",
    });
    expect(mounted.status).toBe(202);
    await pushBlob("gc-writers/d", bytes);
    expect(await descriptorExists(digest)).toBe(true);
    await expectBlobReads("gc-writers/d", digest, bytes.byteLength);
  });
});
