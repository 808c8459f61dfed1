import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MediaTypes, pushBlob, putManifest, registry, sha256, transport, utf8 } from "./helpers";
import { collect, deleteManifest, expectPulls, expectVerifyClean, pushImageOf, type Image } from "./gc-helpers";

/**
 * The collector's protocol against concurrent writers (docs/architecture.md, "Garbage
 * collection"): before each step of a run in turn, a client pushes, mounts or PUTs a
 * manifest whose blobs the run is collecting (an image deleted just before the run).
 * After the run the image pulls byte-identical and the integrity check is clean.
 */

type Writer = (garbage: Image, target: string) => Promise<Image>;

/** Pushes the image's blobs (by their bytes) into `name`, then its manifest under `tag`. */
async function pushAgain(image: Image, name: string, tag: string): Promise<Image> {
  const { config, layers } = image.manifest as { config: { digest: string }; layers: { digest: string }[] };
  for (const digest of [config.digest, ...layers.map((layer) => layer.digest)]) {
    await pushBlob(name, bytesOf(image, digest));
  }
  const response = await putManifest(name, tag, image.pushed.bytes, MediaTypes.ociManifest);
  expect(response.status).toBe(201);
  return { ...image, name };
}

/** The bytes imageManifest pushed for a digest (helpers.imageManifest: config and one layer from the seed). */
function bytesOf(image: Image, digest: string): Uint8Array<ArrayBuffer> {
  const known = image.blobs.get(digest);
  if (!known) throw new Error(`no bytes for ${digest}`);
  return known;
}

const tags: Record<string, string> = { push: "pushed", mount: "mounted", "manifest PUT": "again", index: "index" };

/** An index listing one manifest. */
function indexOf(child: Image): Uint8Array<ArrayBuffer> {
  return utf8(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.ociIndex,
      manifests: [
        {
          mediaType: MediaTypes.ociManifest,
          digest: child.pushed.digest,
          size: child.pushed.size,
          platform: { architecture: "amd64", os: "linux" },
        },
      ],
    }),
  );
}

const writers: Record<string, Writer> = {
  // A full push of the same image into another repository.
  push: (garbage, target) => pushAgain(garbage, target, "pushed"),
  // Cross-repository mounts from the repository that held it (201 while its links last,
  // else 202 and an upload), then the manifest.
  mount: async (garbage, target) => {
    const { config, layers } = garbage.manifest as { config: { digest: string }; layers: { digest: string }[] };
    for (const digest of [config.digest, ...layers.map((layer) => layer.digest)]) {
      const mounted = await registry(`/v2/${target}/blobs/uploads/?mount=${digest}&from=${garbage.name}`, {
        method: "POST",
      });
      if (mounted.status === 201) continue;
      expect(mounted.status).toBe(202);
      await pushBlob(target, bytesOf(garbage, digest));
    }
    const response = await putManifest(target, "mounted", garbage.pushed.bytes, MediaTypes.ociManifest);
    expect(response.status).toBe(201);
    return { ...garbage, name: target };
  },
  // An index over an untagged manifest that retention removes (RETENTION in
  // vitest.config.ts): the index is accepted while the child lasts, else the child is
  // pushed again first. The child and its blobs must survive with the index.
  index: async (garbage) => {
    let response = await putManifest(garbage.name, "index", indexOf(garbage), MediaTypes.ociIndex);
    if (response.status !== 201) {
      expect(response.status).toBe(400);
      await pushAgain(garbage, garbage.name, garbage.pushed.digest);
      response = await putManifest(garbage.name, "index", indexOf(garbage), MediaTypes.ociIndex);
    }
    expect(response.status).toBe(201);
    return garbage;
  },
  // The manifest PUT again into its own repository: accepted while the links last, else
  // refused (MANIFEST_BLOB_UNKNOWN) and pushed again after its blobs.
  "manifest PUT": async (garbage) => {
    const response = await putManifest(garbage.name, "again", garbage.pushed.bytes, MediaTypes.ociManifest);
    if (response.status === 201) return garbage;
    expect(response.status).toBe(400);
    return pushAgain(garbage, garbage.name, "again");
  },
};

describe("garbage collection against concurrent writers", () => {
  // Thousands of requests: see helpers.transport.
  beforeAll(() => {
    transport.direct = true;
  });
  afterAll(() => {
    transport.direct = false;
  });

  // ~50 s alone (a collection run per step, ~16 steps); the timeout only guards against a
  // hang: on a machine loaded by other test runs this took over 120 s (as the fault loops,
  // test/unit/faults-*.test.ts, which have 300 s).
  it(
    "a push, a mount, a manifest PUT and an index PUT before any step of a run keep their images whole",
    { timeout: 300_000 },
    async () => {
      let steps = Infinity;
      // Each iteration injects the three writers (each with an image of its own) before
      // step `at`, until `at` passes the run's last step.
      for (let at = 0; at < steps && at < 100; at++) {
        const garbage = new Map<string, Image>();
        for (const kind of Object.keys(writers)) {
          // The same names and bytes every iteration: each run meets the state the last one
          // left (the tombstones of the last run's blobs are replaced, not piled up).
          const name = `gc-race/${kind.replace(" ", "-").toLowerCase()}`;
          if (kind === "index") {
            // Untagged, so retention removes it (and then its blobs) unless the index keeps it.
            garbage.set(kind, await pushImageOf(`${name}/src`, kind));
            continue;
          }
          const image = await pushImageOf(`${name}/src`, kind, "old");
          await deleteManifest(image.name, image.pushed.digest);
          garbage.set(kind, image);
        }
        const written: { image: Image; tag: string }[] = [];
        const run = await collect({ batch: 5 }, async (step) => {
          if (step !== at) return;
          for (const [kind, write] of Object.entries(writers)) {
            const image = garbage.get(kind) as Image;
            written.push({ image: await write(image, image.name.replace(/src$/, "dst")), tag: tags[kind] ?? "" });
          }
        });
        steps = run.steps;
        expect(written.length, `step ${at} of ${run.steps}`).toBe(4);
        for (const { image, tag } of written) {
          if (tag === "index") {
            const index = await registry(`/v2/${image.name}/manifests/index`, {
              headers: { Accept: MediaTypes.ociIndex },
            });
            expect(index.status).toBe(200);
            expect(new Uint8Array(await index.arrayBuffer())).toEqual(indexOf(image));
            await expectPulls(image);
            continue;
          }
          await expectPulls(image, tag);
          await expectPulls(image);
        }
        await expectVerifyClean({ rehash: false });
        // Left for the next run to collect: each run starts with garbage of its own.
        for (const { image, tag } of written) {
          if (tag === "index") await deleteManifest(image.name, await sha256(indexOf(image)));
          await deleteManifest(image.name, image.pushed.digest);
        }
      }
      expect(steps).toBeGreaterThan(15);
    },
  );
});
