import { digestOrNull, parseDigest, toHex, webCryptoName, type Digest } from "../oci/digest";
import { parseManifest } from "../oci/manifest";
import { BlobStore, type BlobDescriptor } from "./blob-store";
import { Catalog } from "./catalog";
import { linkCopyOf } from "./linked-blob-store";
import { Paths, splitRepositoryKey } from "./paths";
import { parseTagRecord } from "./tags";
import type { Storage } from "./storage";

/**
 * The integrity check (`npm run verify`): walks every record the registry keeps,
 * re-hashes every blob, and reports what is inconsistent; with `repair`, it fixes what
 * can be fixed without losing anything a client could still use. docker/distribution
 * has no such check (zot calls it scrub).
 *
 * What it checks, family by family (keys as in paths.ts):
 * - descriptors `blobs/…`: well-formed, named by their own digest, pointing at an object
 *   of the recorded size whose bytes hash to the digest (invariant 1), and their KV copy
 *   (if any) agreeing;
 * - links, tags and referrers under `repositories/…`: every link names a stored blob,
 *   every tag a revision of its repository, every referrer record a revision;
 * - the catalog: every repository with links is listed;
 * - `data/…` objects no descriptor points at (an upload in flight, or left over);
 * - KV `blob:` entries with no, or another, R2 descriptor;
 * - with `usage`, each quota namespace's usage, counted from its links (src/quotas compares it).
 */
export interface Finding {
  /** error: breaks a rule clients rely on; warning: harmless but untidy; info: expected in a live registry. */
  severity: "error" | "warning" | "info";
  kind: FindingKind;
  key: string;
  detail: string;
  /** What repair did about it, when it did something. */
  repaired?: string;
}

export type FindingKind =
  | "descriptor-invalid"
  | "descriptor-collected"
  | "descriptor-without-bytes"
  | "size-mismatch"
  | "digest-mismatch"
  | "read-failed"
  | "kv-descriptor-stale"
  | "kv-link-stale"
  | "link-without-descriptor"
  | "tag-invalid"
  | "tag-without-manifest"
  | "referrer-without-manifest"
  | "repository-not-in-catalog"
  | "catalog-entry-empty"
  | "orphan-data"
  /** A quota namespace's recorded usage differs from what its links hold (src/quotas adds these). */
  | "usage-drift";

export interface VerifyOptions {
  /** Re-hash every blob's bytes (the default); false checks existence and size only. */
  rehash?: boolean;
  repair?: boolean;
  /**
   * Records younger than this are left alone by repair, because a push in flight writes
   * them in steps (catalog entry before link, object before descriptor): 1 hour by default.
   */
  settleMs?: number;
  /** Objects under `data/` older than this with no descriptor are deleted by repair (the upload TTL). */
  orphanAgeMs?: number;
  now?: number;
  /**
   * Quota namespaces to count (QUOTAS): `of(name)` the namespaces a stored repository counts
   * in. Each namespace's usage is the bytes of the distinct stored blobs its repositories link.
   */
  usage?: { namespaces: readonly string[]; of: (name: string) => readonly string[] };
}

export interface VerifyReport {
  /** No error is left unrepaired (warnings and infos are harmless). */
  ok: boolean;
  counts: {
    descriptors: number;
    bytesRehashed: number;
    links: number;
    tags: number;
    referrers: number;
    repositories: number;
    catalogEntries: number;
    dataObjects: number;
    kvEntries: number;
  };
  findings: Finding[];
  /** Each quota namespace's usage counted from its links (`usage`): bytes of its distinct blobs, and how many. */
  usage?: { namespace: string; bytes: number; blobs: number }[];
}

const HOUR_MS = 60 * 60 * 1000;

/** Every object under a prefix, page by page (R2 lists at most 1000 keys a call). */
async function* listAll(bucket: R2Bucket, prefix: string): AsyncGenerator<R2Object> {
  let cursor: string | undefined;
  for (;;) {
    const page = await bucket.list({ prefix, ...(cursor ? { cursor } : {}) });
    yield* page.objects;
    if (!page.truncated) return;
    cursor = page.cursor;
  }
}

/** How many records are checked at once. */
const CONCURRENCY = 16;

/** Runs `work` over every item, CONCURRENCY at a time. */
async function inBatches<T>(items: AsyncIterable<T> | Iterable<T>, work: (item: T) => Promise<void>): Promise<void> {
  let batch: Promise<void>[] = [];
  for await (const item of items) {
    batch.push(work(item));
    if (batch.length === CONCURRENCY) {
      await Promise.all(batch);
      batch = [];
    }
  }
  await Promise.all(batch);
}

export async function verifyStorage(storage: Storage, options: VerifyOptions = {}): Promise<VerifyReport> {
  const { bucket, kv } = storage;
  const rehash = options.rehash ?? true;
  const repair = options.repair ?? false;
  const now = options.now ?? Date.now();
  const settled = (object: R2Object) => now - object.uploaded.getTime() >= (options.settleMs ?? HOUR_MS);
  const blobs = new BlobStore(storage);
  /** Whether `digest` is stored, read from R2 now (not from the listing). */
  const storedNow = async (digest: Digest) => {
    const descriptor = await blobs.stat(digest, { strong: true });
    return descriptor !== null && (await blobs.hasBytes(descriptor));
  };
  const findings: Finding[] = [];
  const counts: VerifyReport["counts"] = {
    descriptors: 0,
    bytesRehashed: 0,
    links: 0,
    tags: 0,
    referrers: 0,
    repositories: 0,
    catalogEntries: 0,
    dataObjects: 0,
    kvEntries: 0,
  };
  const report = (finding: Finding) => findings.push(finding);
  /** Digests with a sound descriptor (and bytes), and the objects those point at. */
  const stored = new Map<string, BlobDescriptor>();
  const referencedData = new Set<string>();

  // ---- descriptors ----
  // Checked a batch at a time: each needs a read or two, and they are independent.
  const checkDescriptor = async (object: R2Object): Promise<void> => {
    const [, algorithm, hex] = object.key.split("/");
    const digest = digestOrNull(`${algorithm}:${hex}`);
    const record = await bucket.get(object.key);
    if (record?.customMetadata?.gc === "tombstone") {
      // A blob the garbage collector deleted (absent to every reader; the tombstone stays,
      // see docs/architecture.md), or is deleting: reported only while its bytes may remain.
      if (record.customMetadata.reclaimed === undefined) {
        report({ severity: "info", kind: "descriptor-collected", key: object.key, detail: "being garbage-collected" });
      }
      return;
    }
    const descriptor = record ? await record.json<BlobDescriptor>().catch(() => null) : null;
    if (!digest || !descriptor || descriptor.digest !== digest.value || typeof descriptor.key !== "string") {
      report({
        severity: "error",
        kind: "descriptor-invalid",
        key: object.key,
        detail: "not a descriptor of its own digest",
      });
      return;
    }
    referencedData.add(descriptor.key);
    const problem = await checkBytes(bucket, blobs, descriptor, digest, rehash, counts);
    if (!problem) {
      stored.set(digest.value, descriptor);
      return;
    }
    const finding: Finding = { severity: "error", kind: problem.kind, key: object.key, detail: problem.detail };
    // A read that failed proves nothing about the bytes: report it, change nothing.
    if (repair && problem.kind !== "read-failed") {
      // Nothing may be served under a digest its bytes do not match: withdraw the
      // descriptor (clients see the blob as unknown and push it again). The object is
      // quarantined, kept for inspection and never swept as an orphan.
      await bucket.put(
        Paths.quarantine(descriptor.key),
        JSON.stringify({ digest: digest.value, reason: problem.detail }),
      );
      await bucket.delete(object.key);
      await kv.delete(Paths.kvBlob(digest));
      finding.repaired = `descriptor withdrawn, ${Paths.quarantine(descriptor.key)} marks the object`;
    }
    report(finding);
  };
  await inBatches(listAll(bucket, "blobs/"), (object) => {
    counts.descriptors++;
    return checkDescriptor(object);
  });

  // ---- links, tags, referrers ----
  /** Per quota namespace, the distinct stored blobs its repositories link. */
  const usage = new Map((options.usage?.namespaces ?? []).map((namespace) => [namespace, new Set<string>()]));
  const linked = new Set<string>();
  const revisions = new Set<string>();
  const tags: { key: string; name: string; object: R2Object }[] = [];
  const referrers: { key: string; name: string; digest: Digest | null; object: R2Object }[] = [];
  for await (const object of listAll(bucket, "repositories/")) {
    const parts = splitRepositoryKey(object.key);
    if (!parts) continue;
    const { name, family, rest } = parts;
    if (family === "_layers" || (family === "_manifests" && rest[0] === "revisions")) {
      counts.links++;
      const [algorithm, hex] = family === "_layers" ? rest : rest.slice(1);
      const digest = digestOrNull(`${algorithm}:${hex}`);
      linked.add(name);
      if (family === "_manifests" && digest) revisions.add(`${name}@${digest.value}`);
      if (digest && stored.has(digest.value)) {
        for (const namespace of options.usage?.of(name) ?? []) usage.get(namespace)?.add(digest.value);
      } else {
        const finding: Finding = {
          severity: "error",
          kind: "link-without-descriptor",
          key: object.key,
          detail: "the repository links a blob that is not stored",
        };
        if (repair && settled(object) && !(digest && (await storedNow(digest)))) {
          await bucket.delete(object.key);
          finding.repaired = "link removed";
        }
        report(finding);
      }
    } else if (family === "_manifests" && rest[0] === "tags") {
      counts.tags++;
      tags.push({ key: object.key, name, object });
    } else if (family === "_referrers") {
      counts.referrers++;
      const digest = digestOrNull(rest[2] ?? "");
      referrers.push({ key: object.key, name, digest, object });
    }
  }
  // Links whose repair removed them no longer count as revisions.
  const sound = (name: string, digest: Digest) => revisions.has(`${name}@${digest.value}`) && stored.has(digest.value);
  /** Read again just before a repair: a push may have written it since the listing. */
  const revisionNow = async (name: string, digest: Digest) =>
    (await bucket.head(Paths.manifestRevision(name, digest))) !== null && (await storedNow(digest));

  await inBatches(tags, async (tag) => {
    const record = await bucket.get(tag.key);
    const digest = record ? (parseTagRecord(await record.text())?.digest ?? null) : null;
    if (!digest) {
      report({ severity: "error", kind: "tag-invalid", key: tag.key, detail: "the tag does not hold a digest" });
      return;
    }
    if (sound(tag.name, digest)) return;
    const finding: Finding = {
      severity: "error",
      kind: "tag-without-manifest",
      key: tag.key,
      detail: `the tag points at ${digest.value}, which is not a manifest of ${tag.name}`,
    };
    if (repair && settled(tag.object)) {
      const now = await bucket.get(tag.key);
      const moved = !now || parseTagRecord(await now.text())?.digest.value !== digest.value;
      if (!moved && !(await revisionNow(tag.name, digest))) {
        finding.repaired = await repairTag(bucket, blobs, tag.name, tag.key, digest, stored);
      }
    }
    report(finding);
  });

  for (const referrer of referrers) {
    if (referrer.digest && sound(referrer.name, referrer.digest)) continue;
    const finding: Finding = {
      severity: "error",
      kind: "referrer-without-manifest",
      key: referrer.key,
      detail: "the referrers list names a manifest the repository does not hold",
    };
    if (
      repair &&
      settled(referrer.object) &&
      !(referrer.digest && (await revisionNow(referrer.name, referrer.digest)))
    ) {
      await bucket.delete(referrer.key);
      finding.repaired = "record removed";
    }
    report(finding);
  }

  // ---- catalog ----
  const catalog = new Catalog(bucket);
  const listed = new Set<string>();
  for await (const object of listAll(bucket, Paths.catalogPrefix)) {
    counts.catalogEntries++;
    const name = object.key.slice(Paths.catalogPrefix.length);
    listed.add(name);
    if (linked.has(name)) continue;
    const finding: Finding = {
      severity: "warning",
      kind: "catalog-entry-empty",
      key: object.key,
      detail: "the catalog lists a repository that links nothing",
    };
    if (repair && settled(object)) {
      await bucket.delete(object.key);
      finding.repaired = "entry removed";
    }
    report(finding);
  }
  counts.repositories = linked.size;
  for (const name of linked) {
    if (listed.has(name)) continue;
    const finding: Finding = {
      severity: "error",
      kind: "repository-not-in-catalog",
      key: Paths.catalogEntry(name),
      detail: "a repository with links is missing from the catalog",
    };
    if (repair) {
      await catalog.add(name);
      finding.repaired = "entry added";
    }
    report(finding);
  }

  // ---- objects no descriptor points at ----
  for await (const object of listAll(bucket, "data/")) {
    counts.dataObjects++;
    if (referencedData.has(object.key)) continue;
    if (await bucket.head(Paths.quarantine(object.key))) {
      report({
        severity: "info",
        kind: "orphan-data",
        key: object.key,
        detail: "quarantined: its bytes did not match its digest",
      });
      continue;
    }
    const old = now - object.uploaded.getTime() >= (options.orphanAgeMs ?? 7 * 24 * HOUR_MS);
    const finding: Finding = {
      severity: old ? "warning" : "info",
      kind: "orphan-data",
      key: object.key,
      detail: old
        ? "no descriptor points at this object and no upload can still be using it"
        : "no descriptor points at this object yet (an upload in flight, or one that lost a race)",
    };
    if (repair && old) {
      await bucket.delete(object.key);
      finding.repaired = "object deleted";
    }
    report(finding);
  }

  // ---- KV copies: each must say what R2 says ----
  const sweep = async (prefix: string, kind: FindingKind, judge: (name: string) => Promise<string | null>) => {
    let cursor: string | undefined;
    for (;;) {
      const page: KVNamespaceListResult<unknown> = await kv.list({ prefix, ...(cursor ? { cursor } : {}) });
      for (const entry of page.keys) {
        counts.kvEntries++;
        const detail = await judge(entry.name);
        if (detail === null) continue;
        const finding: Finding = { severity: "warning", kind, key: `kv:${entry.name}`, detail };
        if (repair) {
          await kv.delete(entry.name);
          finding.repaired = "KV copy removed";
        }
        report(finding);
      }
      if (page.list_complete) break;
      cursor = page.cursor;
    }
  };
  await sweep("blob:", "kv-descriptor-stale", async (name) => {
    const cached = await kv.get<BlobDescriptor>(name, "json");
    const truth = stored.get(name.slice("blob:".length));
    if (cached && truth && cached.key === truth.key && cached.size === truth.size) return null;
    return truth
      ? "the KV copy disagrees with the R2 descriptor"
      : "a KV copy of a descriptor R2 does not hold (or that failed its check)";
  });
  // Copies of links (the edge index): the link in R2, and the blob's descriptor as R2 has it.
  await sweep("link:", "kv-link-stale", async (name) => {
    const r2Key = linkKeyOfKvCopy(name);
    const copy = r2Key ? linkCopyOf(await kv.get(name, "json"), r2Key.digest) : null;
    const truth = r2Key ? stored.get(r2Key.digest.value) : undefined;
    const linked = r2Key ? (await bucket.head(r2Key.key)) !== null : false;
    if (copy && truth && linked && copy.descriptor.key === truth.key && copy.descriptor.size === truth.size)
      return null;
    return linked
      ? "a KV copy of a link whose blob descriptor differs from R2's (or is not one)"
      : "a KV copy of a link R2 does not hold: pulls at the edge would still see the link";
  });

  const ok = findings.every((finding) => finding.severity !== "error" || finding.repaired !== undefined);
  if (!options.usage) return { ok, counts, findings };
  const counted = [...usage].map(([namespace, digests]) => ({
    namespace,
    bytes: [...digests].reduce((sum, digest) => sum + (stored.get(digest)?.size ?? 0), 0),
    blobs: digests.size,
  }));
  return { ok, counts, findings, usage: counted };
}

/** The R2 key (and digest) of the link a KV `link:` copy stands for, or null when the key is not one. */
function linkKeyOfKvCopy(kvKey: string): { key: string; digest: Digest } | null {
  const match = /^link:(.+)\/_(layers|manifests)\/([^/]+)$/.exec(kvKey);
  if (!match?.[1] || !match[3]) return null;
  try {
    const digest = parseDigest(match[3]);
    const key = match[2] === "layers" ? Paths.layerLink(match[1], digest) : Paths.manifestRevision(match[1], digest);
    return { key, digest };
  } catch {
    return null;
  }
}

async function checkBytes(
  bucket: R2Bucket,
  blobs: BlobStore,
  descriptor: BlobDescriptor,
  digest: Digest,
  rehash: boolean,
  counts: VerifyReport["counts"],
): Promise<{ kind: FindingKind; detail: string } | null> {
  const object = await bucket.head(descriptor.key);
  if (!object) return { kind: "descriptor-without-bytes", detail: `its object ${descriptor.key} is missing` };
  if (object.size !== descriptor.size) {
    return { kind: "size-mismatch", detail: `descriptor says ${descriptor.size} bytes, object has ${object.size}` };
  }
  if (!rehash) return null;
  const first = await hashOf(blobs, descriptor, digest);
  counts.bytesRehashed += descriptor.size;
  if (first.computed === digest.value) return null;
  // Before calling the bytes wrong (and withdrawing them), read them once more: a read
  // that broke off or came back different proves nothing about what is stored.
  const second = first.read === descriptor.size ? await hashOf(blobs, descriptor, digest) : first;
  if (first.read !== descriptor.size || second.read !== descriptor.size || second.computed !== first.computed) {
    return { kind: "read-failed", detail: `reading its ${descriptor.size} bytes failed or gave different bytes` };
  }
  return { kind: "digest-mismatch", detail: `its bytes hash to ${first.computed}` };
}

async function hashOf(
  blobs: BlobStore,
  descriptor: BlobDescriptor,
  digest: Digest,
): Promise<{ computed: string; read: number }> {
  const digester = new crypto.DigestStream(webCryptoName(digest.algorithm));
  let read = 0;
  const counter = new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, controller) {
      read += chunk.byteLength;
      controller.enqueue(chunk);
    },
  });
  try {
    await (await blobs.open(descriptor)).pipeThrough(counter).pipeTo(digester);
  } catch {
    return { computed: "", read: -1 };
  }
  return { computed: `${digest.algorithm}:${toHex(await digester.digest)}`, read };
}

/**
 * A tag whose revision link is gone: if the manifest's bytes are still stored (a link
 * lost, the content not), the revision is linked again and the tag kept; otherwise the
 * tag can never be pulled and is removed.
 */
async function repairTag(
  bucket: R2Bucket,
  blobs: BlobStore,
  name: string,
  tagKey: string,
  digest: Digest,
  stored: Map<string, BlobDescriptor>,
): Promise<string> {
  const descriptor = stored.get(digest.value);
  const bytes = descriptor ? await blobs.readBytes(descriptor) : null;
  if (bytes) {
    try {
      const manifest = parseManifest(bytes, "");
      await bucket.put(Paths.manifestRevision(name, digest), JSON.stringify({ mediaType: manifest.mediaType }));
      return "revision link restored from the stored manifest";
    } catch {
      // not a manifest: fall through
    }
  }
  await bucket.delete(tagKey);
  return "tag removed (its manifest is not stored)";
}
