import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { app } from "../../src/app";
import { verifyStorage, type FindingKind } from "../../src/registry/integrity";
import { expectError, MediaTypes, pushBlob, pushImage, randomBytes, registry, utf8 } from "./helpers";

const storage = () => ({ bucket: env.BLOBS, kv: env.META });

function descriptorKey(digest: string): string {
  const [algorithm, hex] = digest.split(":");
  return `blobs/${algorithm}/${hex}`;
}

async function descriptorOf(digest: string): Promise<{ digest: string; size: number; key: string }> {
  const record = await env.BLOBS.get(descriptorKey(digest));
  if (!record) throw new Error(`no descriptor for ${digest}`);
  return record.json();
}

function kinds(findings: { kind: FindingKind; key: string }[], key: string): FindingKind[] {
  return findings.filter((finding) => finding.key === key).map((finding) => finding.kind);
}

/**
 * Each case damages storage the way a bug, a failed write or bit rot could, then checks
 * that the integrity check reports exactly that, and that repair leaves a registry whose
 * check is clean and which serves nothing wrong.
 */
describe("the integrity check (npm run verify)", () => {
  it("a registry written through the API is consistent", async () => {
    await pushImage("integrity/clean", "v1");
    const report = await verifyStorage(storage());
    expect(report.findings.filter((finding) => finding.kind !== "orphan-data")).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.counts.descriptors).toBeGreaterThanOrEqual(3);
    expect(report.counts.bytesRehashed).toBeGreaterThan(0);
  });

  it("bytes that no longer hash to their digest are reported, and repair withdraws the blob", async () => {
    const name = "integrity/rot";
    const digest = await pushBlob(name, randomBytes(5000));
    const { key } = await descriptorOf(digest);
    await env.BLOBS.put(key, randomBytes(5000));
    const report = await verifyStorage(storage());
    expect(kinds(report.findings, descriptorKey(digest))).toEqual(["digest-mismatch"]);
    expect(report.ok).toBe(false);
    // Sizes only: the rot is invisible without re-hashing.
    expect(kinds((await verifyStorage(storage(), { rehash: false })).findings, descriptorKey(digest))).toEqual([]);

    const repaired = await verifyStorage(storage(), { repair: true, settleMs: 0 });
    expect(repaired.ok).toBe(true);
    // Nothing is served under a digest its bytes do not match.
    expect((await registry(`/v2/${name}/blobs/${digest}`)).status).toBe(404);
    // The object is kept, quarantined, and not swept as an orphan even when old.
    expect(await env.BLOBS.head(`quarantine/${key}`)).not.toBeNull();
    const later = await verifyStorage(storage(), { repair: true, now: Date.now() + 30 * 24 * 3600 * 1000 });
    expect(later.findings.find((finding) => finding.key === key)?.detail).toMatch(/quarantined/);
    expect(await env.BLOBS.head(key)).not.toBeNull();
    const after = await verifyStorage(storage());
    expect(after.findings.filter((finding) => finding.severity === "error")).toEqual([]);
  });

  it("a descriptor whose object is missing or of another size is reported and withdrawn", async () => {
    const gone = await pushBlob("integrity/gone", utf8("bytes that will vanish"));
    await env.BLOBS.delete((await descriptorOf(gone)).key);
    const resized = await pushBlob("integrity/resized", utf8("bytes that will change size"));
    await env.BLOBS.put((await descriptorOf(resized)).key, utf8("short"));
    const report = await verifyStorage(storage(), { repair: true, settleMs: 0 });
    expect(kinds(report.findings, descriptorKey(gone))).toEqual(["descriptor-without-bytes"]);
    expect(kinds(report.findings, descriptorKey(resized))).toEqual(["size-mismatch"]);
    // The links to them are now links to nothing: removed in the same pass.
    expect(kinds(report.findings, `repositories/integrity/gone/_layers/${gone.replace(":", "/")}`)).toEqual([
      "link-without-descriptor",
    ]);
    expect((await verifyStorage(storage())).findings.filter((finding) => finding.severity === "error")).toEqual([]);
  });

  it("a tag whose revision link was lost is restored from the stored manifest", async () => {
    const name = "integrity/lost-link";
    const image = await pushImage(name, "v1");
    // Lost everywhere: the link in R2 and its KV copy at the edge.
    await env.BLOBS.delete(`repositories/${name}/_manifests/revisions/${image.digest.replace(":", "/")}`);
    await env.META.delete(`link:${name}/_manifests/${image.digest}`);
    // By digest the manifest is gone; by tag its record still carries it (tags.ts).
    expect((await registry(`/v2/${name}/manifests/${image.digest}`)).status).toBe(404);
    const report = await verifyStorage(storage(), { repair: true, settleMs: 0 });
    const finding = report.findings.find((entry) => entry.key === `repositories/${name}/_manifests/tags/v1`);
    expect(finding?.kind).toBe("tag-without-manifest");
    expect(finding?.repaired).toMatch(/restored/);
    const pulled = await registry(`/v2/${name}/manifests/${image.digest}`, {
      headers: { Accept: MediaTypes.ociManifest },
    });
    expect(pulled.status).toBe(200);
    expect(new Uint8Array(await pulled.arrayBuffer())).toEqual(image.bytes);
  });

  it("a KV copy of a link R2 no longer holds is reported, and removed by repair", async () => {
    const name = "integrity/stale-link-copy";
    const bytes = utf8("linked, then lost from R2 only");
    const digest = await pushBlob(name, bytes);
    await env.BLOBS.delete(`repositories/${name}/_layers/${digest.replace(":", "/")}`);
    const report = await verifyStorage(storage(), { repair: true, settleMs: 0 });
    const finding = report.findings.find((entry) => entry.key === `kv:link:${name}/_layers/${digest}`);
    expect(finding).toMatchObject({ kind: "kv-link-stale", repaired: "KV copy removed" });
    expect(await env.META.get(`link:${name}/_layers/${digest}`)).toBeNull();
    await expectError(await registry(`/v2/${name}/blobs/${digest}`), 404, "BLOB_UNKNOWN");
  });

  it("a tag naming a manifest that is stored nowhere is removed; a referrer record without its manifest too", async () => {
    const name = "integrity/dangling";
    const missing = `sha256:${"b".repeat(64)}`;
    await env.BLOBS.put(`repositories/${name}/_manifests/tags/ghost`, missing);
    await env.BLOBS.put(`repositories/${name}/_referrers/sha256/${"c".repeat(64)}/${missing}`, "{}");
    await env.BLOBS.put(`catalog/${name}`, "");
    const report = await verifyStorage(storage(), { repair: true, settleMs: 0 });
    expect(kinds(report.findings, `repositories/${name}/_manifests/tags/ghost`)).toEqual(["tag-without-manifest"]);
    expect(kinds(report.findings, `repositories/${name}/_referrers/sha256/${"c".repeat(64)}/${missing}`)).toEqual([
      "referrer-without-manifest",
    ]);
    expect(await env.BLOBS.head(`repositories/${name}/_manifests/tags/ghost`)).toBeNull();
  });

  it("records younger than the settle window are reported but not repaired (a push may be writing them)", async () => {
    const name = "integrity/recent";
    const missing = `sha256:${"e".repeat(64)}`;
    await env.BLOBS.put(`repositories/${name}/_manifests/tags/fresh`, missing);
    await env.BLOBS.put(`repositories/${name}/_layers/sha256/${"e".repeat(64)}`, "{}");
    const report = await verifyStorage(storage(), { repair: true });
    const fresh = report.findings.filter((finding) => finding.key.startsWith(`repositories/${name}/`));
    expect(fresh.map((finding) => finding.kind).sort()).toEqual(["link-without-descriptor", "tag-without-manifest"]);
    expect(fresh.every((finding) => finding.repaired === undefined)).toBe(true);
    expect(await env.BLOBS.head(`repositories/${name}/_manifests/tags/fresh`)).not.toBeNull();
    // Once settled they are repaired; a link whose blob a push stored meanwhile is not.
    const bytes = utf8("stored meanwhile");
    const digest = await pushBlob("integrity/elsewhere", bytes);
    await env.BLOBS.put(`repositories/${name}/_layers/${digest.replace(":", "/")}`, "{}");
    const settled = await verifyStorage(storage(), { repair: true, settleMs: 0 });
    expect(settled.findings.find((finding) => finding.key.endsWith(digest.replace(":", "/")))).toBeUndefined();
    expect(await env.BLOBS.head(`repositories/${name}/_manifests/tags/fresh`)).toBeNull();
  });

  it("a repository missing from the catalog is listed again; a stale KV copy is dropped", async () => {
    const name = "integrity/unlisted";
    const digest = await pushBlob(name, utf8("listed blob"));
    await env.BLOBS.delete(`catalog/${name}`);
    await env.META.put(`blob:${digest}`, JSON.stringify({ digest, size: 1, key: "data/elsewhere" }));
    const report = await verifyStorage(storage(), { repair: true });
    expect(kinds(report.findings, `catalog/${name}`)).toEqual(["repository-not-in-catalog"]);
    expect(kinds(report.findings, `kv:blob:${digest}`)).toEqual(["kv-descriptor-stale"]);
    expect(await env.BLOBS.head(`catalog/${name}`)).not.toBeNull();
    expect(await env.META.get(`blob:${digest}`)).toBeNull();
  });

  it("an object no descriptor points at is deleted only once no upload can still be using it", async () => {
    await env.BLOBS.put("data/11111111-1111-4111-8111-111111111111", utf8("left over"));
    const young = await verifyStorage(storage(), { repair: true });
    const finding = young.findings.find((entry) => entry.key === "data/11111111-1111-4111-8111-111111111111");
    expect(finding).toMatchObject({ kind: "orphan-data", severity: "info" });
    expect(finding?.repaired).toBeUndefined();
    const later = await verifyStorage(storage(), { repair: true, now: Date.now() + 8 * 24 * 3600 * 1000 });
    expect(later.findings.find((entry) => entry.key === "data/11111111-1111-4111-8111-111111111111")?.repaired).toBe(
      "object deleted",
    );
    expect(await env.BLOBS.head("data/11111111-1111-4111-8111-111111111111")).toBeNull();
  });
});

describe("POST /_admin/verify", () => {
  it("does not exist unless ADMIN_TOKEN is set", async () => {
    expect((await registry("/_admin/verify", { method: "POST" })).status).toBe(404);
  });

  it("refuses a request without the token, and answers the report with it", async () => {
    const withToken = { ...env, ADMIN_TOKEN: "s3cret-admin-token" };
    const denied = await app.request("/_admin/verify", { method: "POST" }, withToken);
    expect(denied.status).toBe(403);
    const wrong = await app.request(
      "/_admin/verify",
      { method: "POST", headers: { Authorization: "Bearer s3cret-admin-tokem" } },
      withToken,
    );
    expect(wrong.status).toBe(403);
    const answered = await app.request(
      "/_admin/verify?rehash=0",
      { method: "POST", headers: { Authorization: "Bearer s3cret-admin-token" } },
      withToken,
    );
    expect(answered.status).toBe(200);
    const report = (await answered.json()) as { counts: { descriptors: number }; findings: unknown[] };
    expect(report.counts.descriptors).toBeGreaterThan(0);
  });
});
