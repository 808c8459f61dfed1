import { env } from "cloudflare:test";
import { afterEach, describe, expect, it } from "vitest";
import { storageHooks, type Storage } from "../../src/registry/storage";
import { expectError, imageManifest, MediaTypes, pushBlob, pushManifest, putManifest, registry, utf8 } from "./helpers";

/**
 * What one manifest PUT may cost: references are checked once per distinct digest with a
 * bounded number of storage reads in flight, a manifest lists at most
 * MANIFEST_MAX_REFERENCES descriptors, and one PUT sets at most MANIFEST_MAX_TAGS tags.
 */
const MAX_REFERENCES = Number(env.MANIFEST_MAX_REFERENCES);
const MAX_TAGS = Number(env.MANIFEST_MAX_TAGS);

/** Counts R2 reads of link records, and the most in flight at once, while installed. */
function countLinkReads(): { reads: () => number; maxInFlight: () => number } {
  let reads = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  storageHooks.wrap = (storage: Storage): Storage => {
    const bucket = new Proxy(storage.bucket, {
      get(target, property) {
        const value: unknown = Reflect.get(target, property, target);
        if (property !== "get" || typeof value !== "function") {
          return typeof value === "function" ? value.bind(target) : value;
        }
        return async (key: string, ...rest: unknown[]) => {
          const isLink = key.includes("/_layers/") || key.includes("/_manifests/revisions/");
          if (isLink) {
            reads++;
            inFlight++;
            maxInFlight = Math.max(maxInFlight, inFlight);
          }
          try {
            // Let every started read overlap the others, as slow storage would.
            await new Promise((resolve) => setTimeout(resolve, 1));
            return (await Reflect.apply(value, target, [key, ...rest])) as unknown;
          } finally {
            if (isLink) inFlight--;
          }
        };
      },
    });
    return { ...storage, bucket };
  };
  return { reads: () => reads, maxInFlight: () => maxInFlight };
}

afterEach(() => {
  delete storageHooks.wrap;
});

describe("manifest references", () => {
  it("a manifest listing one layer MANIFEST_MAX_REFERENCES times is checked with one read of its link", async () => {
    const name = "limits/repeated";
    const manifest = await imageManifest(name);
    const [layer] = manifest.layers as object[];
    const repeated = { ...manifest, layers: Array.from({ length: MAX_REFERENCES - 1 }, () => layer) };
    const counter = countLinkReads();
    await pushManifest(name, "repeated", repeated);
    // One layer link and one config link.
    expect(counter.reads()).toBe(2);
  });

  it("distinct references are checked with at most 6 reads in flight", async () => {
    const name = "limits/distinct";
    const layers = [];
    for (let index = 0; index < 30; index++) {
      const bytes = utf8(`layer ${index}`);
      layers.push({ mediaType: MediaTypes.ociLayer, digest: await pushBlob(name, bytes), size: bytes.byteLength });
    }
    const manifest = { ...(await imageManifest(name)), layers };
    const counter = countLinkReads();
    await pushManifest(name, "distinct", manifest);
    expect(counter.reads()).toBe(31);
    expect(counter.maxInFlight()).toBeLessThanOrEqual(6);
    expect(counter.maxInFlight()).toBeGreaterThan(1);
  });

  it("a missing blob among many stops the checks early with MANIFEST_BLOB_UNKNOWN", async () => {
    const name = "limits/missing";
    const manifest = await imageManifest(name);
    const missing = Array.from({ length: 500 }, (_, index) => ({
      mediaType: MediaTypes.ociLayer,
      digest: `sha256:${index.toString(16).padStart(64, "0")}`,
      size: 1,
    }));
    const counter = countLinkReads();
    const response = await putManifest(name, "missing", { ...manifest, layers: missing }, MediaTypes.ociManifest);
    await expectError(response, 400, "MANIFEST_BLOB_UNKNOWN");
    expect(counter.reads()).toBeLessThan(20);
  });

  it("one more descriptor than MANIFEST_MAX_REFERENCES is MANIFEST_INVALID, before any storage read", async () => {
    const name = "limits/too-many";
    const manifest = await imageManifest(name);
    const [layer] = manifest.layers as object[];
    const tooMany = { ...manifest, layers: Array.from({ length: MAX_REFERENCES }, () => layer) };
    const counter = countLinkReads();
    const response = await putManifest(name, "too-many", tooMany, MediaTypes.ociManifest);
    expect(response.status).toBe(400);
    const body = (await response.json()) as { errors: { code: string; message: string }[] };
    expect(body.errors[0]?.code).toBe("MANIFEST_INVALID");
    expect(body.errors[0]?.message).toContain(`at most ${MAX_REFERENCES}`);
    expect(counter.reads()).toBe(0);
  });

  it("an index with more children than the limit is refused the same way", async () => {
    const child = { mediaType: MediaTypes.ociManifest, digest: `sha256:${"c".repeat(64)}`, size: 10 };
    const index = {
      schemaVersion: 2,
      mediaType: MediaTypes.ociIndex,
      manifests: Array(MAX_REFERENCES + 1).fill(child),
    };
    await expectError(await putManifest("limits/index", "i", index, MediaTypes.ociIndex), 400, "MANIFEST_INVALID");
  });

  it("every size declared for a repeated digest is checked", async () => {
    const name = "limits/sizes";
    const manifest = await imageManifest(name);
    const [layer] = manifest.layers as { size: number }[];
    if (!layer) throw new Error("no layer");
    const response = await putManifest(
      name,
      "sizes",
      { ...manifest, layers: [layer, layer, { ...layer, size: layer.size + 1 }] },
      MediaTypes.ociManifest,
    );
    await expectError(response, 400, "MANIFEST_INVALID");
  });
});

describe("?tag= on a manifest PUT", () => {
  it(`sets up to MANIFEST_MAX_TAGS tags, the reference's included, each once`, async () => {
    const name = "limits/tags";
    const manifest = await imageManifest(name);
    const tags = Array.from({ length: MAX_TAGS - 1 }, (_, index) => `t${index}`);
    const query = [...tags, "t0"].map((tag) => `tag=${tag}`).join("&");
    const response = await registry(`/v2/${name}/manifests/main?${query}`, {
      method: "PUT",
      headers: { "Content-Type": MediaTypes.ociManifest },
      body: JSON.stringify(manifest),
    });
    expect(response.status).toBe(201);
    expect(response.headers.get("OCI-Tag")?.split(", ").sort()).toEqual(["main", ...tags].sort());
  });

  it("one tag more is TAG_INVALID, and nothing is stored", async () => {
    const name = "limits/too-many-tags";
    const manifest = await imageManifest(name);
    const query = Array.from({ length: MAX_TAGS }, (_, index) => `tag=t${index}`).join("&");
    const response = await registry(`/v2/${name}/manifests/main?${query}`, {
      method: "PUT",
      headers: { "Content-Type": MediaTypes.ociManifest },
      body: JSON.stringify(manifest),
    });
    await expectError(response, 400, "TAG_INVALID");
    const listed = (await (await registry(`/v2/${name}/tags/list`)).json()) as { tags: string[] };
    expect(listed.tags).toEqual([]);
  });
});
