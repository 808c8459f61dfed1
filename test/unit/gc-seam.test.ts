import { env } from "cloudflare:test";
import { afterEach, describe, expect, it, vi } from "vitest";
import { RegistryError } from "../../src/oci/errors";
import {
  changeHooks,
  type Change,
  type ChangeContext,
  type ChangeListener,
  type ChangePolicy,
} from "../../src/registry/changes";
import { MediaTypes, pushBlob, putManifest, registry, sha256, utf8 } from "./helpers";
import {
  collect,
  deleteManifest,
  descriptorExists,
  digestsOf,
  expectPulls,
  expectVerifyClean,
  pushImageOf,
  type Image,
} from "./gc-helpers";

/**
 * The collector's removals go through the change seam (src/registry/changes.ts, through
 * CollectorStore): each is a `collect` change the policies may refuse and the listeners
 * hear of once it is made. Retention under gc-seam/** (vitest.config.ts) keeps the newest
 * tag and removes untagged manifests.
 */

const registered: { policies: ChangePolicy[]; listeners: ChangeListener[] } = { policies: [], listeners: [] };

/** Removes the hooks this file registered. */
function unregister(): void {
  for (const policy of registered.policies) changeHooks.policies.splice(changeHooks.policies.indexOf(policy), 1);
  for (const listener of registered.listeners) {
    changeHooks.listeners.splice(changeHooks.listeners.indexOf(listener), 1);
  }
  registered.policies = [];
  registered.listeners = [];
}

afterEach(unregister);

/** Registers a listener that records every change it hears of. */
function listen(): { change: Change; context: ChangeContext }[] {
  const heard: { change: Change; context: ChangeContext }[] = [];
  const listener: ChangeListener = { name: "test", changed: (change, context) => void heard.push({ change, context }) };
  changeHooks.listeners.push(listener);
  registered.listeners.push(listener);
  return heard;
}

/** Registers a policy that refuses the `collect` changes `refuses` says. */
function refuse(refuses: (change: Change & { action: "collect" }) => boolean): void {
  const policy: ChangePolicy = {
    name: "test",
    check: (change) => {
      if (change.action === "collect" && refuses(change)) throw new RegistryError("DENIED", "kept by a test policy");
    },
  };
  changeHooks.policies.push(policy);
  registered.policies.push(policy);
}

/** `kind repository digest tag`, one line per collect change. */
function describeChange(change: Change): string {
  if (change.action !== "collect") return change.action;
  return [change.kind, change.repository ?? "-", change.digest.value, change.tag ?? "-"].join(" ");
}

/** Pushes, under `name`: an image tagged "old", then one tagged "new", then an untagged one. */
async function pushThree(name: string): Promise<{ old: Image; current: Image; untagged: Image }> {
  const old = await pushImageOf(name, `${name} old`, "old");
  // R2 times have millisecond resolution: "new" is the newer tag.
  await new Promise((resolve) => setTimeout(resolve, 5));
  const current = await pushImageOf(name, `${name} new`, "new");
  const untagged = await pushImageOf(name, `${name} untagged`);
  return { old, current, untagged };
}

describe("the collector's removals through the change seam", () => {
  it("tells the listeners of each removal once, as the collector, and a dry run tells them nothing", async () => {
    const name = "gc-seam/app";
    const { old, current, untagged } = await pushThree(name);
    const heard = listen();

    await collect({ dryRun: true });
    expect(heard).toEqual([]);

    const run = await collect({});
    const expected = [`tag ${name} ${old.pushed.digest} old`];
    for (const image of [old, untagged]) {
      expected.push(`manifest ${name} ${image.pushed.digest} -`);
      for (const digest of digestsOf(image.manifest)) {
        expected.push(`layer ${name} ${digest} -`, `blob - ${digest} -`);
      }
      expected.push(`blob - ${image.pushed.digest} -`);
    }
    expect(heard.map(({ change }) => describeChange(change)).sort()).toEqual(expected.sort());
    for (const { context } of heard) {
      expect(context.actor).toEqual({ kind: "collector", name: "collector" });
      expect(context.requestId).toBe(run.id);
    }
    expect(run.removed).toMatchObject({ tags: 1, manifests: 2, links: 4, blobs: 6 });
    expect(run.refused).toEqual({ tags: 0, manifests: 0, links: 0, blobs: 0 });
    await expectPulls(current, "new");
    await expectVerifyClean();
  });

  it("a policy refusing every collect change: nothing is removed, the refusals are counted, the run ends", async () => {
    const name = "gc-seam/refused";
    const images = await pushThree(name);
    const deleted = await pushImageOf("gc-seam/deleted", "deleted", "latest");
    await deleteManifest(deleted.name, deleted.pushed.digest);
    const lonely = await pushBlob("gc-seam/lonely", utf8("a blob no repository links"));
    expect((await registry(`/v2/gc-seam/lonely/blobs/${lonely}`, { method: "DELETE" })).status).toBe(202);
    refuse(() => true);
    const heard = listen();

    const run = await collect({});
    expect(run.status).toBe("done");
    expect(heard).toEqual([]);
    expect(run.removed).toEqual({ tags: 0, manifests: 0, links: 0, blobs: 0, orphans: 0 });
    // The tag "old"; the untagged manifest; the deleted image's two links; the blobs no
    // repository links (the deleted manifest's, and the one whose link was deleted).
    expect(run.refused).toEqual({ tags: 1, manifests: 1, links: 2, blobs: 2 });
    for (const image of Object.values(images)) await expectPulls(image);
    await expectPulls(images.old, "old");
    for (const digest of [...digestsOf(deleted.manifest), deleted.pushed.digest, lonely]) {
      expect(await descriptorExists(digest)).toBe(true);
    }
    // The refused blob was revived, not left condemned.
    const [algorithm, hex] = lonely.split(":");
    expect((await env.BLOBS.head(`blobs/${algorithm}/${hex}`))?.customMetadata?.gc).toBeUndefined();
    await expectVerifyClean();

    // Without the policy, the next run removes them.
    unregister();
    const next = await collect({});
    expect(next.removed).toMatchObject({ tags: 1, manifests: 2, links: 6, blobs: 10 });
    expect(await descriptorExists(lonely)).toBe(false);
  });

  it("a refused tag keeps its manifest whole while the rest of the run goes on", async () => {
    const name = "gc-seam/kept";
    const { old, current, untagged } = await pushThree(name);
    const deleted = await pushImageOf("gc-seam/gone", "gone", "latest");
    await deleteManifest(deleted.name, deleted.pushed.digest);
    refuse((change) => change.kind === "tag" && change.repository === name && change.tag === "old");
    const heard = listen();

    const run = await collect({ batch: 2 });
    expect(run.refused).toEqual({ tags: 1, manifests: 0, links: 0, blobs: 0 });
    await expectPulls(old, "old");
    await expectPulls(current, "new");
    // Nothing of the refused tag's image was touched.
    const touched = heard.map(({ change }) => describeChange(change)).join("\n");
    for (const digest of [...digestsOf(old.manifest), old.pushed.digest]) expect(touched).not.toContain(digest);
    // The untagged manifest and the deleted image went.
    for (const digest of [...digestsOf(untagged.manifest), untagged.pushed.digest, ...digestsOf(deleted.manifest)]) {
      expect(await descriptorExists(digest)).toBe(false);
    }
    expect(run.removed).toMatchObject({ tags: 0, manifests: 1, links: 4 });
    await expectVerifyClean();
  });

  it("a refused index brings back the child removed before the refusal (the check links it again)", async () => {
    const name = "gc-seam/index";
    // A child whose digest sorts before its index's: the prune removes it first.
    let seed = 0;
    while ((await sha256(await childBytes(seed))) > (await sha256(await indexBytes(seed)))) seed++;
    const child = await pushImageOf(name, `child ${seed}`);
    expect(child.pushed.bytes).toEqual(await childBytes(seed));
    const index = await indexBytes(seed);
    const indexDigest = await sha256(index);
    expect((await putManifest(name, indexDigest, index, MediaTypes.ociIndex)).status).toBe(201);
    refuse((change) => change.kind === "manifest" && change.digest.value === indexDigest);
    const heard = listen();

    // The run starts two minutes "later" (the collector shares this isolate's clock): the
    // index is no write made during the run, which the check looks at anyway.
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(Date.now() + 2 * 60_000);
    const run = await collect({}).finally(() => vi.useRealTimers());
    expect(run.refused).toEqual({ tags: 0, manifests: 1, links: 0, blobs: 0 });
    // The child went before the index was refused, and came back. (The run also collects
    // what the tests before left, e.g. the tag they refused.)
    const here = heard.filter(({ change }) => change.action === "collect" && change.repository === name);
    expect(here.map(({ change }) => describeChange(change))).toEqual([`manifest ${name} ${child.pushed.digest} -`]);
    const pulled = await registry(`/v2/${name}/manifests/${indexDigest}`, { headers: { Accept: MediaTypes.ociIndex } });
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(index);
    await expectPulls(child);
    await expectVerifyClean();
  });
});

/** The bytes of the manifest pushImageOf pushes for the seed `child <seed>` (helpers.imageManifest). */
async function childBytes(seed: number): Promise<Uint8Array<ArrayBuffer>> {
  const config = utf8(JSON.stringify({ architecture: "amd64", os: "linux", seed: `child ${seed}` }));
  const layer = utf8(`layer bytes for child ${seed}`);
  const manifest = {
    schemaVersion: 2,
    mediaType: MediaTypes.ociManifest,
    config: { mediaType: MediaTypes.ociConfig, digest: await sha256(config), size: config.byteLength },
    layers: [{ mediaType: MediaTypes.ociLayer, digest: await sha256(layer), size: layer.byteLength }],
  };
  return utf8(JSON.stringify(manifest));
}

/** An index listing that child. */
async function indexBytes(seed: number): Promise<Uint8Array<ArrayBuffer>> {
  const child = await childBytes(seed);
  const entry = { mediaType: MediaTypes.ociManifest, digest: await sha256(child), size: child.byteLength };
  return utf8(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [entry] }));
}
