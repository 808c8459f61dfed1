import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MediaTypes, pushBlob, pushImage, randomBytes, registry, expectError, transport } from "./helpers";
import { expectBlob, multipartCommit, runWithFaults, scenarios } from "./fault-scenarios";
import { faultWhere, installStorage, restoreStorage } from "./storage-faults";

// Hundreds of requests in one file: see helpers.transport.
beforeAll(() => {
  transport.direct = true;
});
afterAll(() => {
  transport.direct = false;
});

describe("a storage call that fails part-way through a write", () => {
  for (const scenario of scenarios) {
    it(
      `${scenario.name}: a retryable error, nothing half-written, and the retry succeeds`,
      { timeout: 120_000 },
      async () => {
        expect(await runWithFaults(scenario, "throw")).toBeGreaterThanOrEqual(2);
      },
    );
  }
  it(`${multipartCommit.name}: the same, at every step`, { timeout: 300_000 }, async () => {
    expect(await runWithFaults(multipartCommit, "throw")).toBeGreaterThanOrEqual(2);
  });
});

describe("a KV that fails every call", () => {
  it("push and pull work from R2 alone; a delete waits (503) until KV is back, since a KV copy must not outlive it", async () => {
    installStorage(faultWhere((call) => call.store === "kv"));
    const name = "faults/kv-down";
    const image = await pushImage(name, "v1");
    const pulled = await registry(`/v2/${name}/manifests/v1`, { headers: { Accept: MediaTypes.ociManifest } });
    expect(pulled.status).toBe(200);
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(image.bytes);
    const bytes = randomBytes(10_000);
    const digest = await pushBlob(name, bytes);
    await expectBlob(name, digest, bytes);
    await expectError(await registry(`/v2/${name}/blobs/${digest}`, { method: "DELETE" }), 503, "UNAVAILABLE");
    await expectBlob(name, digest, bytes);
    restoreStorage();
    expect((await registry(`/v2/${name}/blobs/${digest}`, { method: "DELETE" })).status).toBe(202);
    await expectError(await registry(`/v2/${name}/blobs/${digest}`), 404, "BLOB_UNKNOWN");
  });
});
