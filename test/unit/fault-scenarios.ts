import { expect } from "vitest";
import {
  descriptorOf,
  expectBlobReads,
  expectError,
  imageManifest,
  MediaTypes,
  MiB,
  PART_SIZE,
  pushBlob,
  pushImage,
  pushManifest,
  randomBytes,
  registry,
  sha256,
  startUpload,
  utf8,
  withDigest,
} from "./helpers";
import { expectConsistent, faultAt, installStorage, restoreStorage, wipeStorage, type Fault } from "./storage-faults";

/**
 * Every write a client can make, with a storage fault injected at each storage call it
 * makes in turn (the 1st, the 2nd, … until one runs with no fault left to hit). After
 * each faulted attempt: the client got a retryable OCI error (5xx) or, when the fault
 * only hit the KV cache, success; nothing is half-written (the integrity check finds no
 * tag without its manifest, no link without its blob, no descriptor without its bytes);
 * and the client's retry succeeds and reads back what it wrote.
 */
export interface Scenario<Context> {
  name: string;
  setup(id: string): Promise<Context>;
  /** The client's request; run again, unchanged, as its retry. */
  run(context: Context): Promise<Response>;
  /** Statuses of success; a retry may also meet the effect of a first attempt whose answer was lost. */
  success: number[];
  retrySuccess?: number[];
  check(context: Context): Promise<void>;
}

async function expectRetryableError(response: Response): Promise<void> {
  expect(response.status).toBeGreaterThanOrEqual(500);
  const body = (await response.json()) as { errors: { code: string }[] };
  expect(body.errors[0]?.code).toMatch(/^(UNAVAILABLE|UNKNOWN)$/);
  if (response.status === 503) expect(response.headers.get("Retry-After")).not.toBeNull();
}

export async function expectBlob(name: string, digest: string, bytes: Uint8Array): Promise<void> {
  await expectBlobReads(name, digest, bytes.byteLength);
}

export async function runWithFaults<Context>(scenario: Scenario<Context>, fault: Fault): Promise<number> {
  for (let step = 1; step <= 80; step++) {
    restoreStorage();
    await wipeStorage();
    const context = await scenario.setup(`${fault}-${step}`);
    const faulty = installStorage(faultAt(step, fault));
    const response = await scenario.run(context);
    restoreStorage();
    if (faulty.fired.length === 0) {
      // The request made fewer than `step` storage calls: every step has been tried.
      expect(scenario.success).toContain(response.status);
      await scenario.check(context);
      await expectConsistent({ rehash: true });
      return step - 1;
    }
    if (scenario.success.includes(response.status)) {
      // Only the KV cache was hit (best effort), or the fault came after the last write.
      await scenario.check(context);
      await expectConsistent();
      continue;
    }
    await expectRetryableError(response);
    await expectConsistent();
    const retry = await scenario.run(context);
    expect(scenario.retrySuccess ?? scenario.success, `retry after a fault at ${faulty.fired[0]?.method}`).toContain(
      retry.status,
    );
    await scenario.check(context);
    await expectConsistent();
  }
  throw new Error(`${scenario.name}: still faulting after 80 steps`);
}

export const smallChunkedCommit: Scenario<{ name: string; location: string; digest: string; bytes: Uint8Array }> = {
  name: "PUT ?digest= committing a chunked upload",
  async setup(id) {
    const name = `faults/chunked-${id}`;
    const bytes = randomBytes(300_000);
    const { location } = await startUpload(name);
    const patched = await registry(location, { method: "PATCH", body: bytes });
    expect(patched.status).toBe(202);
    return {
      name,
      location: withDigest(patched.headers.get("Location") ?? location, await sha256(bytes)),
      digest: await sha256(bytes),
      bytes,
    };
  },
  run: (context) => registry(context.location, { method: "PUT" }),
  success: [201],
  check: (context) => expectBlob(context.name, context.digest, context.bytes),
};

export const multipartCommit: Scenario<{ name: string; location: string; digest: string; bytes: Uint8Array }> = {
  ...smallChunkedCommit,
  name: "PUT ?digest= committing a multipart upload with a staged tail",
  async setup(id) {
    const name = `faults/multipart-${id}`;
    const bytes = randomBytes(PART_SIZE + MiB);
    const { location } = await startUpload(name);
    const patched = await registry(location, { method: "PATCH", body: bytes });
    expect(patched.status).toBe(202);
    return { name, location: withDigest(location, await sha256(bytes)), digest: await sha256(bytes), bytes };
  },
};

export const lastChunkCommit: Scenario<{
  name: string;
  location: string;
  digest: string;
  bytes: Uint8Array<ArrayBuffer>;
}> = {
  name: "PUT ?digest= carrying the last chunk",
  async setup(id) {
    const name = `faults/last-chunk-${id}`;
    const bytes = randomBytes(300_000);
    const { location } = await startUpload(name);
    const patched = await registry(location, { method: "PATCH", body: bytes.slice(0, 200_000) });
    expect(patched.status).toBe(202);
    return { name, location: withDigest(location, await sha256(bytes)), digest: await sha256(bytes), bytes };
  },
  // No Content-Range: a retry that appended the chunk again would corrupt the upload.
  run: (context) => registry(context.location, { method: "PUT", body: context.bytes.slice(200_000) }),
  success: [201],
  check: (context) => expectBlob(context.name, context.digest, context.bytes),
};

export const monolithic: Scenario<{ name: string; digest: string; bytes: Uint8Array<ArrayBuffer> }> = {
  name: "POST ?digest= with the whole blob",
  async setup(id) {
    const bytes = randomBytes(200_000);
    return { name: `faults/monolithic-${id}`, digest: await sha256(bytes), bytes };
  },
  run: (context) =>
    registry(`/v2/${context.name}/blobs/uploads/?digest=${context.digest}`, { method: "POST", body: context.bytes }),
  success: [201],
  check: (context) => expectBlob(context.name, context.digest, context.bytes),
};

export const manifestPush: Scenario<{ name: string; bytes: Uint8Array<ArrayBuffer>; digest: string }> = {
  name: "PUT /manifests/<tag>",
  async setup(id) {
    const name = `faults/manifest-${id}`;
    const bytes = utf8(JSON.stringify(await imageManifest(name)));
    return { name, bytes, digest: await sha256(bytes) };
  },
  run: (context) =>
    registry(`/v2/${context.name}/manifests/latest`, {
      method: "PUT",
      headers: { "Content-Type": MediaTypes.ociManifest },
      body: context.bytes,
    }),
  success: [201],
  async check(context) {
    const response = await registry(`/v2/${context.name}/manifests/latest`, {
      headers: { Accept: MediaTypes.ociManifest },
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("Docker-Content-Digest")).toBe(context.digest);
    expect(new Uint8Array(await response.arrayBuffer())).toEqual(context.bytes);
  },
};

export const tagMove: Scenario<{ name: string; bytes: Uint8Array<ArrayBuffer>; digest: string }> = {
  ...manifestPush,
  name: "PUT /manifests/<tag> moving an existing tag",
  async setup(id) {
    const name = `faults/tag-move-${id}`;
    await pushImage(name, "latest");
    const bytes = utf8(JSON.stringify(await imageManifest(name)));
    return { name, bytes, digest: await sha256(bytes) };
  },
};

export const manifestDelete: Scenario<{ name: string; subject: string; digest: string }> = {
  name: "DELETE /manifests/<digest> of a tagged referrer",
  async setup(id) {
    const name = `faults/delete-${id}`;
    const subject = await pushImage(name, "subject");
    const artifact = await imageManifest(name);
    const referrer = await pushManifest(name, "signature", { ...artifact, subject: descriptorOf(subject) });
    return { name, subject: subject.digest, digest: referrer.digest };
  },
  run: (context) => registry(`/v2/${context.name}/manifests/${context.digest}`, { method: "DELETE" }),
  success: [202],
  // A retried DELETE whose first attempt removed the manifest but lost the answer.
  retrySuccess: [202, 404],
  async check(context) {
    await expectError(await registry(`/v2/${context.name}/manifests/${context.digest}`), 404, "MANIFEST_UNKNOWN");
    await expectError(await registry(`/v2/${context.name}/manifests/signature`), 404, "MANIFEST_UNKNOWN");
    const referrers = (await (await registry(`/v2/${context.name}/referrers/${context.subject}`)).json()) as {
      manifests: unknown[];
    };
    expect(referrers.manifests).toEqual([]);
    expect((await registry(`/v2/${context.name}/manifests/subject`)).status).toBe(200);
  },
};

export const blobDelete: Scenario<{ name: string; other: string; digest: string; bytes: Uint8Array }> = {
  name: "DELETE /blobs/<digest>",
  async setup(id) {
    const name = `faults/blob-delete-${id}`;
    const other = `faults/blob-keep-${id}`;
    const bytes = utf8(`shared blob ${id}`);
    const digest = await pushBlob(name, bytes);
    await pushBlob(other, bytes);
    return { name, other, digest, bytes };
  },
  run: (context) => registry(`/v2/${context.name}/blobs/${context.digest}`, { method: "DELETE" }),
  success: [202],
  retrySuccess: [202, 404],
  async check(context) {
    await expectError(await registry(`/v2/${context.name}/blobs/${context.digest}`), 404, "BLOB_UNKNOWN");
    await expectBlob(context.other, context.digest, context.bytes);
  },
};

export const mount: Scenario<{ name: string; from: string; digest: string; bytes: Uint8Array }> = {
  name: "POST ?mount=&from=",
  async setup(id) {
    const from = `faults/mount-from-${id}`;
    const bytes = utf8(`mounted blob ${id}`);
    return { name: `faults/mount-to-${id}`, from, digest: await pushBlob(from, bytes), bytes };
  },
  run: (context) =>
    registry(`/v2/${context.name}/blobs/uploads/?mount=${context.digest}&from=${context.from}`, { method: "POST" }),
  success: [201],
  check: (context) => expectBlob(context.name, context.digest, context.bytes),
};

/** Every scenario but the multipart one (which uploads a part per step, so runs on its own). */
export const scenarios = [
  smallChunkedCommit,
  lastChunkCommit,
  monolithic,
  manifestPush,
  tagMove,
  manifestDelete,
  blobDelete,
  mount,
] as Scenario<unknown>[];
