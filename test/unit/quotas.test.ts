import { createExecutionContext, env, runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { afterEach, describe, expect, it } from "vitest";
import worker from "../../src/index";
import { RegistryError } from "../../src/oci/errors";
import { parseDigest } from "../../src/oci/digest";
import { QuotaKeeper, usageOf } from "../../src/quotas/quota-keeper";
import { checkUsage } from "../../src/quotas/usage-reports";
import { changeHooks, type ChangeListener, type ChangePolicy } from "../../src/registry/changes";
import { verifyStorage } from "../../src/registry/integrity";
import { Paths } from "../../src/registry/paths";
import { parseQuotas, quotasOf, type Quota } from "../../src/settings/quotas";
import { collect, deleteManifest, descriptorExists, expectVerifyClean } from "./gc-helpers";
import {
  BASE,
  expectError,
  imageManifest,
  MediaTypes,
  PART_SIZE,
  pushBlob,
  pushManifest,
  randomBytes,
  registry,
  sha256,
  startUpload,
  streamOf,
  utf8,
  withDigest,
} from "./helpers";

/**
 * Storage quotas per namespace (src/quotas; docs/architecture.md, "Storage quotas"): the
 * quota keeper is registered on the change seam as QUOTAS would register it, for the
 * namespaces each test names, and every push goes through the real upload engine, the
 * NamespaceUsage objects and R2.
 */

/** The hooks a test registered. */
const registered: { policies: ChangePolicy[]; listeners: ChangeListener[] } = { policies: [], listeners: [] };

/** Registers the quota keeper (policy and listener) for `quotas`, as QUOTAS would. */
function useQuotas(quotas: { namespace: string; bytes: number | string }[]): Quota[] {
  const parsed = parseQuotas(JSON.stringify(quotas));
  const keeper = new QuotaKeeper(env, { quotas: parsed, mirrors: { upstreams: [] } });
  changeHooks.policies.push(keeper);
  changeHooks.listeners.push(keeper);
  registered.policies.push(keeper);
  registered.listeners.push(keeper);
  return parsed;
}

afterEach(() => {
  for (const policy of registered.policies) changeHooks.policies.splice(changeHooks.policies.indexOf(policy), 1);
  for (const listener of registered.listeners) {
    changeHooks.listeners.splice(changeHooks.listeners.indexOf(listener), 1);
  }
  registered.policies = [];
  registered.listeners = [];
});

async function usage(namespace: string) {
  return usageOf(env, namespace).report(namespace, { limit: 100 });
}

/** A chunked upload as docker, podman and skopeo send it: POST, one PATCH of unknown length, PUT without a body. */
async function pushChunked(name: string, bytes: Uint8Array<ArrayBuffer>): Promise<Response> {
  const { location } = await startUpload(name);
  const patched = await registry(location, { method: "PATCH", body: streamOf(bytes) });
  expect(patched.status).toBe(202);
  return registry(withDigest(patched.headers.get("Location") ?? location, await sha256(bytes)), { method: "PUT" });
}

/** Pushes a config and `layer` to `name` (helpers.imageManifest); returns the manifest naming them (not pushed) and their bytes. */
async function pushImageBlobs(name: string, seed: string, layer: Uint8Array<ArrayBuffer>) {
  const manifest = await imageManifest(name, { seed, layer });
  const config = manifest.config as { size: number };
  return { layerDigest: await sha256(layer), manifest, bytes: config.size + layer.byteLength };
}

/** The config helpers.imageManifest pushes for `seed`. */
function configOf(seed: string): Uint8Array<ArrayBuffer> {
  return utf8(JSON.stringify({ architecture: "amd64", os: "linux", seed }));
}

/** The upload data objects (`data/…`) in the bucket. */
async function dataObjects(): Promise<number> {
  return (await env.BLOBS.list({ prefix: "data/" })).objects.length;
}

/** The refusal: 403 DENIED, "quota exceeded", with the namespace's usage and limit. */
async function expectQuotaExceeded(response: Response, namespace: string, limit: number): Promise<void> {
  expect(response.status).toBe(403);
  const body = (await response.json()) as { errors: { code: string; message: string; detail: unknown }[] };
  expect(body.errors[0]?.code).toBe("DENIED");
  expect(body.errors[0]?.message).toMatch(/^quota exceeded: namespace /);
  expect(body.errors[0]?.detail).toMatchObject({ namespace, limit, usage: expect.any(Number) });
}

describe("QUOTAS", () => {
  it("parses namespaces with sizes in bytes or units, and refuses what it cannot follow", () => {
    expect(parseQuotas('[{"namespace":"team","bytes":"100MiB"},{"namespace":"team/ci","bytes":5}]')).toEqual([
      { namespace: "team", bytes: 100 * 1024 * 1024 },
      { namespace: "team/ci", bytes: 5 },
    ]);
    expect(parseQuotas('[{"namespace":"a","bytes":"2GB"},{"namespace":"b","bytes":"1.5KiB"}]')).toEqual([
      { namespace: "a", bytes: 2e9 },
      { namespace: "b", bytes: 1536 },
    ]);
    expect(parseQuotas("")).toEqual([]);
    for (const bad of [
      "{}",
      '[{"namespace":"Team","bytes":1}]',
      '[{"namespace":"team"}]',
      '[{"namespace":"team","bytes":"lots"}]',
      '[{"namespace":"team","bytes":-1}]',
      '[{"namespace":"team","bytes":1,"files":3}]',
      '[{"namespace":"team","bytes":1},{"namespace":"team","bytes":2}]',
    ]) {
      expect(() => parseQuotas(bad), bad).toThrow(/QUOTAS/);
    }
  });

  it("a namespace covers itself and the names under it, never a longer name; the mirror's stores are outside", () => {
    const settings = {
      quotas: parseQuotas('[{"namespace":"team","bytes":10},{"namespace":"team/ci","bytes":5}]'),
      mirrors: { upstreams: [] },
    };
    const names = (name: string) => quotasOf(settings, name).map((quota) => quota.namespace);
    expect(names("team")).toEqual(["team"]);
    expect(names("team/app")).toEqual(["team"]);
    expect(names("team/ci/job")).toEqual(["team", "team/ci"]);
    expect(names("teams/app")).toEqual([]);
    const mirrored = { ...settings, quotas: parseQuotas('[{"namespace":"docker.io","bytes":1}]') };
    const upstream = { prefix: "docker.io", url: "https://x", tagTtlSeconds: 1, library: true, timeoutMs: 1 };
    expect(quotasOf({ ...mirrored, mirrors: { upstreams: [upstream] } }, "docker.io/library/alpine")).toEqual([]);
  });
});

describe("a push into a namespace with a quota", () => {
  it("pushes up to the limit succeed; the next layer is refused (DENIED) and nothing of it is stored", async () => {
    useQuotas([{ namespace: "quota-fill", bytes: 1000 }]);
    for (const seed of ["a", "b", "c"]) {
      expect((await pushChunked("quota-fill/app", utf8(seed.repeat(300)))).status).toBe(201);
    }
    // Exactly at the limit.
    expect((await pushChunked("quota-fill/other", utf8("d".repeat(100)))).status).toBe(201);
    expect(await usage("quota-fill")).toMatchObject({ bytes: 1000, counted: true, reservations: 0 });

    const objects = await dataObjects();
    const layer = utf8("e".repeat(10));
    const { location } = await startUpload("quota-fill/app");
    const patched = await registry(location, { method: "PATCH", body: streamOf(layer) });
    const refused = await registry(withDigest(location, await sha256(layer)), { method: "PUT" });
    expect(patched.status).toBe(202);
    await expectQuotaExceeded(refused, "quota-fill", 1000);
    // Nothing of it: no blob, no object, and the upload is gone (its staged bytes with it).
    expect(await descriptorExists(await sha256(layer))).toBe(false);
    expect(await dataObjects()).toBe(objects);
    expect((await registry(location)).status).toBe(404);
    expect((await usage("quota-fill")).bytes).toBe(1000);
  });

  it("a monolithic POST declaring its length is refused before its body is read", async () => {
    useQuotas([{ namespace: "quota-mono", bytes: 100 }]);
    const objects = await dataObjects();
    const bytes = utf8("m".repeat(101));
    const digest = await sha256(bytes);
    const response = await registry(`/v2/quota-mono/app/blobs/uploads/?digest=${digest}`, {
      method: "POST",
      body: bytes,
    });
    await expectQuotaExceeded(response, "quota-mono", 100);
    expect(await descriptorExists(digest)).toBe(false);
    expect(await dataObjects()).toBe(objects);
    expect((await usage("quota-mono")).bytes).toBe(0);
    expect(await pushBlob("quota-mono/app", utf8("m".repeat(100)))).toMatch(/^sha256:/);
  });

  it("a body of unknown length is refused when published, and its bytes (a multipart object) are deleted", async () => {
    useQuotas([{ namespace: "quota-stream", bytes: PART_SIZE }]);
    const objects = await dataObjects();
    const bytes = randomBytes(PART_SIZE + 1234);
    const digest = await sha256(bytes);
    const response = await registry(`/v2/quota-stream/app/blobs/uploads/?digest=${digest}`, {
      method: "POST",
      body: streamOf(bytes.subarray(0, PART_SIZE), bytes.subarray(PART_SIZE)),
    });
    await expectQuotaExceeded(response, "quota-stream", PART_SIZE);
    expect(await descriptorExists(digest)).toBe(false);
    expect(await dataObjects()).toBe(objects);
    expect(await usage("quota-stream")).toMatchObject({ bytes: 0, reservations: 0 });
  });

  it("counts manifests, and each blob once however many repositories of the namespace link it", async () => {
    useQuotas([{ namespace: "quota-image", bytes: 2000 }]);
    const { layerDigest, manifest, bytes } = await pushImageBlobs("quota-image/a", "image", utf8("l".repeat(500)));
    const pushed = await pushManifest("quota-image/a", "v1", manifest);
    const image = bytes + pushed.size;
    expect((await usage("quota-image")).bytes).toBe(image);

    // The same image in another repository of the namespace: free (blobs and manifest held already).
    await pushBlob("quota-image/b", configOf("image"));
    const mounted = await registry(`/v2/quota-image/b/blobs/uploads/?mount=${layerDigest}&from=quota-image/a`, {
      method: "POST",
    });
    expect(mounted.status).toBe(201);
    await pushManifest("quota-image/b", "v1", manifest);
    const report = await usage("quota-image");
    expect(report.bytes).toBe(image);
    expect(report.repositories).toEqual([
      { name: "quota-image/a", bytes: image },
      { name: "quota-image/b", bytes: image },
    ]);

    // Deleting one repository's links frees nothing the other still links.
    await deleteManifest("quota-image/b", pushed.digest);
    expect((await registry(`/v2/quota-image/b/blobs/${layerDigest}`, { method: "DELETE" })).status).toBe(202);
    expect((await usage("quota-image")).bytes).toBe(image);
    await deleteManifest("quota-image/a", pushed.digest);
    expect((await usage("quota-image")).bytes).toBe(image - pushed.size);
  });

  it("a manifest over the quota is refused and nothing of it is written; a mount from outside counts", async () => {
    useQuotas([{ namespace: "quota-manifest", bytes: 600 }]);
    const layer = utf8("x".repeat(600 - configOf("manifest").byteLength));
    const { manifest } = await pushImageBlobs("quota-manifest/app", "manifest", layer);
    const bytes = utf8(JSON.stringify(manifest));
    const put = await registry("/v2/quota-manifest/app/manifests/v1", {
      method: "PUT",
      headers: { "Content-Type": MediaTypes.ociManifest },
      body: bytes,
    });
    await expectQuotaExceeded(put, "quota-manifest", 600);
    expect(await descriptorExists(await sha256(bytes))).toBe(false);
    expect((await registry("/v2/quota-manifest/app/manifests/v1")).status).toBe(404);

    // A blob stored outside the namespace costs its size when mounted in.
    const outside = await pushBlob("quota-outside/app", utf8("o".repeat(10)));
    const mount = await registry(`/v2/quota-manifest/app/blobs/uploads/?mount=${outside}&from=quota-outside/app`, {
      method: "POST",
    });
    await expectQuotaExceeded(mount, "quota-manifest", 600);
    expect((await registry(`/v2/quota-manifest/app/blobs/${outside}`, { method: "HEAD" })).status).toBe(404);
    expect((await usage("quota-manifest")).bytes).toBe(600);
  });

  it("nested quotas: a push must fit both, and what the outer reserved is given back when the inner refuses", async () => {
    useQuotas([
      { namespace: "quota-outer", bytes: 1000 },
      { namespace: "quota-outer/inner", bytes: 100 },
    ]);
    await pushBlob("quota-outer/inner/app", utf8("i".repeat(100)));
    const refused = await registry(`/v2/quota-outer/inner/app/blobs/uploads/?digest=${await sha256(utf8("j"))}`, {
      method: "POST",
      body: utf8("j"),
    });
    await expectQuotaExceeded(refused, "quota-outer/inner", 100);
    expect(await usage("quota-outer")).toMatchObject({ bytes: 100, reservations: 0 });
    await pushBlob("quota-outer/app", utf8("k".repeat(900)));
    expect((await usage("quota-outer")).bytes).toBe(1000);
  });

  it("a reservation is given back when a later policy refuses the push", async () => {
    useQuotas([{ namespace: "quota-later", bytes: 1000 }]);
    const refuse: ChangePolicy = {
      name: "test",
      check: (change) => {
        if (change.action === "blob.commit") throw new RegistryError("DENIED", "refused by a test policy");
      },
    };
    changeHooks.policies.push(refuse);
    registered.policies.push(refuse);
    const bytes = utf8("r".repeat(10));
    const response = await registry(`/v2/quota-later/app/blobs/uploads/?digest=${await sha256(bytes)}`, {
      method: "POST",
      body: bytes,
    });
    await expectError(response, 403, "DENIED");
    expect(await usage("quota-later")).toMatchObject({ bytes: 0, reservations: 0 });
  });

  it("a reservation nobody came back for (its Worker ended) is settled from R2 by the object's alarm", async () => {
    useQuotas([{ namespace: "quota-stale", bytes: 1000 }]);
    const linked = await pushBlob("quota-stale/app", utf8("s".repeat(100)));
    const object = usageOf(env, "quota-stale");
    // Two pushes checked and never heard of again: one whose link was written, one whose was not.
    const ghost = (await sha256(utf8("never written"))).toString();
    await object.claim(
      "quota-stale",
      { repository: "quota-stale/app", kind: "layer", digest: linked, size: 100 },
      1000,
      true,
    );
    await object.claim(
      "quota-stale",
      { repository: "quota-stale/app", kind: "layer", digest: ghost, size: 300 },
      1000,
      true,
    );
    expect(await usage("quota-stale")).toMatchObject({ bytes: 400, reservations: 2 });
    await runInDurableObject(object, (_instance, state) => {
      state.storage.sql.exec("UPDATE holds SET reserved_at = 0");
    });
    expect(await runDurableObjectAlarm(object)).toBe(true);
    expect(await usage("quota-stale")).toMatchObject({ bytes: 100, reservations: 0, repositoryCount: 1 });
  });

  it("concurrent pushes racing for the last bytes: only as many as fit win, and the losers leave nothing", async () => {
    useQuotas([{ namespace: "quota-race", bytes: 1000 }]);
    await pushBlob("quota-race/base", utf8("b".repeat(400)));
    const objects = await dataObjects();
    const layers = ["1", "2", "3", "4", "5"].map((seed) => utf8(seed.repeat(300)));
    // Each upload's bytes are in before the commits race (PATCH first), as clients send them.
    const locations = await Promise.all(
      layers.map(async (layer, index) => {
        const { location } = await startUpload(`quota-race/app${index}`);
        const patched = await registry(location, { method: "PATCH", body: streamOf(layer) });
        expect(patched.status).toBe(202);
        return withDigest(patched.headers.get("Location") ?? location, await sha256(layer));
      }),
    );
    const answers = await Promise.all(locations.map((location) => registry(location, { method: "PUT" })));
    const statuses = answers.map((answer) => answer.status);
    expect(statuses.filter((status) => status === 201)).toHaveLength(2);
    expect(statuses.filter((status) => status === 403)).toHaveLength(3);
    expect(await usage("quota-race")).toMatchObject({ bytes: 1000, reservations: 0 });
    expect(await dataObjects()).toBe(objects + 2);
    for (const [index, layer] of layers.entries()) {
      expect(await descriptorExists(await sha256(layer))).toBe(statuses[index] === 201);
    }
  });

  it("deleting an image and collecting brings usage down, and the push then succeeds", async () => {
    useQuotas([{ namespace: "quota-gc", bytes: 1500 }]);
    const blobs = await pushImageBlobs("quota-gc/app", "gc", utf8("g".repeat(700)));
    const manifest = await pushManifest("quota-gc/app", "v1", blobs.manifest);
    const next = utf8("n".repeat(500));
    const image = blobs.bytes + manifest.size;
    expect((await usage("quota-gc")).bytes).toBe(image);
    await expectQuotaExceeded(await pushChunked("quota-gc/app", next), "quota-gc", 1500);

    await deleteManifest("quota-gc/app", manifest.digest);
    expect((await usage("quota-gc")).bytes).toBe(blobs.bytes);
    const run = await collect({});
    expect(run.removed.links).toBeGreaterThanOrEqual(2);
    expect(await usage("quota-gc")).toMatchObject({ bytes: 0, repositoryCount: 0 });
    expect((await pushChunked("quota-gc/app", next)).status).toBe(201);
    expect((await usage("quota-gc")).bytes).toBe(500);
    await expectVerifyClean({ rehash: false });
  });
});

describe("counting what a namespace holds", () => {
  it("a namespace that held data before its quota is counted on first use, blob by blob", async () => {
    const a = await pushBlob("quota-pre/a", utf8("p".repeat(50)));
    await pushBlob("quota-pre/b", utf8("p".repeat(50)));
    await pushBlob("quota-pre/b", utf8("q".repeat(70)));
    await pushBlob("quota-preview/c", utf8("not in the namespace"));
    useQuotas([{ namespace: "quota-pre", bytes: 200 }]);
    expect(await usage("quota-pre")).toMatchObject({ bytes: 120, counted: true, repositoryCount: 2 });
    await expectQuotaExceeded(await pushChunked("quota-pre/a", utf8("z".repeat(81))), "quota-pre", 200);
    expect((await pushChunked("quota-pre/a", utf8("z".repeat(80)))).status).toBe(201);
    expect(
      (await registry(`/v2/quota-pre/b/blobs/uploads/?mount=${a}&from=quota-pre/a`, { method: "POST" })).status,
    ).toBe(201);
  });

  it("npm run verify recounts each namespace and reports drift; --repair counts it again", async () => {
    const quotas = useQuotas([{ namespace: "quota-verify", bytes: 10_000 }]);
    await pushBlob("quota-verify/app", utf8("v".repeat(40)));
    const lost = await pushBlob("quota-verify/app", utf8("w".repeat(60)));
    const verify = async (repair: boolean) => {
      const report = await verifyStorage(
        { bucket: env.BLOBS, kv: env.META },
        {
          rehash: false,
          usage: {
            namespaces: quotas.map((quota) => quota.namespace),
            of: (name) => quotasOf({ quotas, mirrors: { upstreams: [] } }, name).map((quota) => quota.namespace),
          },
        },
      );
      await checkUsage(env, report, repair);
      return report;
    };
    const clean = await verify(false);
    expect(clean.usage).toEqual([{ namespace: "quota-verify", bytes: 100, blobs: 2 }]);
    expect(clean.findings.filter((finding) => finding.kind === "usage-drift")).toEqual([]);

    // A change the object was never told of (a lost listener call): the records drift.
    await usageOf(env, "quota-verify").unlinked("quota-verify", {
      repository: "quota-verify/app",
      kind: "layer",
      digest: lost,
    });
    const drifted = await verify(false);
    expect(drifted.ok).toBe(false);
    expect(drifted.findings).toContainEqual(
      expect.objectContaining({ severity: "error", kind: "usage-drift", key: "usage:quota-verify" }),
    );
    const repaired = await verify(true);
    expect(repaired.findings.find((finding) => finding.kind === "usage-drift")?.repaired).toMatch(/counted again: 100/);
    expect(repaired.ok).toBe(true);
    expect((await usage("quota-verify")).bytes).toBe(100);
  });
});

describe("GET /_admin/usage and the pages", () => {
  const quotaEnv = (): Env =>
    ({
      ...env,
      QUOTAS: JSON.stringify([{ namespace: "quota-pages", bytes: "1KiB" }]),
      ADMIN_TOKEN: "admin-token",
    }) as Env;
  const request = (target: Env, path: string, init: RequestInit = {}) =>
    worker.fetch(new Request(new URL(path, BASE), init), target, createExecutionContext());

  it("lists each quota's usage, limit and largest repositories, for the admin token only", async () => {
    useQuotas([{ namespace: "quota-pages", bytes: 1024 }]);
    await pushBlob("quota-pages/app", utf8("u".repeat(300)));
    await pushBlob("quota-pages/tool", utf8("t".repeat(200)));
    const target = quotaEnv();
    expect((await request(target, "/_admin/usage")).status).toBe(403);
    const answer = await request(target, "/_admin/usage", { headers: { Authorization: "Bearer admin-token" } });
    expect(answer.status).toBe(200);
    expect(await answer.json()).toEqual({
      namespaces: [
        {
          namespace: "quota-pages",
          limit: 1024,
          bytes: 500,
          counted: true,
          reservations: 0,
          repositoryCount: 2,
          repositories: [
            { name: "quota-pages/app", bytes: 300 },
            { name: "quota-pages/tool", bytes: 200 },
          ],
        },
      ],
    });
    const unknown = await request(target, "/_admin/usage?namespace=nope", {
      headers: { Authorization: "Bearer admin-token" },
    });
    await expectError(unknown, 404, "NAME_UNKNOWN");

    const page = await request(target, "/usage");
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain("quota-pages");
    expect(html).toContain("500 B of 1.00 KiB");
    expect(html).toContain("quota-pages/tool");
    const repositoryPage = await (await request(target, "/repositories/quota-pages/app")).text();
    expect(repositoryPage).toMatch(/quota-pages.*500 B of 1\.00 KiB/s);
    expect(repositoryPage).toContain("This repository holds 300 B.");
  });
});

describe("counting a large namespace", () => {
  it("a namespace of many links is counted in steps (one listing page each)", async () => {
    // Written straight to R2, as a registry that held them before: 3 repositories × 150
    // layer links over 300 distinct blobs of 10 bytes each (their descriptors name one
    // object, and their digests are made up: the last test of the file, no check after it).
    const key = "data/quota-many";
    const digest = (blob: number) => parseDigest(`sha256:${blob.toString(16).padStart(64, "0")}`);
    const writes: [string, string, Record<string, string>?][] = [[key, "0123456789"]];
    for (let blob = 0; blob < 300; blob++) {
      const record = JSON.stringify({ digest: digest(blob).value, size: 10, key });
      writes.push([Paths.blobDescriptor(digest(blob)), record, { key, size: "10" }]);
    }
    for (const [repository, from] of [
      ["quota-many/a", 0],
      ["quota-many/b", 100],
      ["quota-many/c", 150],
    ] as const) {
      for (let blob = from; blob < from + 150; blob++) writes.push([Paths.layerLink(repository, digest(blob)), "{}"]);
    }
    for (let start = 0; start < writes.length; start += 50) {
      await Promise.all(
        writes
          .slice(start, start + 50)
          .map(([name, body, metadata]) => env.BLOBS.put(name, body, metadata ? { customMetadata: metadata } : {})),
      );
    }
    expect(await usage("quota-many")).toMatchObject({ bytes: 3000, counted: true, repositoryCount: 3 });
  });
});
