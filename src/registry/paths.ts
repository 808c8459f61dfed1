import { digestOrNull, type Digest } from "../oci/digest";

/**
 * The storage layout: every R2 key and KV key the registry uses, one function per
 * key family. Nothing else builds keys. Repository names cannot contain a path
 * component starting with "_" (the name grammar forbids it), so `_layers`,
 * `_manifests` and `_uploads` can never collide with a nested repository name,
 * the same trick docker/distribution's paths.go relies on.
 */
export const Paths = {
  // ---- R2: the strongly consistent record ----

  /**
   * Bytes of a blob, as written by one upload (one single put, or one completed R2
   * multipart upload). The upload id (not the digest) names the object, so an upload
   * can write before its digest is verified, and a commit publishes the object where
   * it already is, with no copy. Manifests use the same family with a fresh UUID.
   */
  uploadData: (uploadId: string): string => `data/${uploadId}`,
  uploadDataPrefix: "data/",

  /** Descriptor record of a stored blob: `{digest, size, key}`. Existence means the blob exists. */
  blobDescriptor: (digest: Digest): string => `blobs/${digest.algorithm}/${digest.hex}`,
  blobDescriptorPrefix: "blobs/",

  /** Everything repositories hold (links, tags, referrers) is under this prefix. */
  repositoriesPrefix: "repositories/",

  /**
   * Everything a repository and the repositories nested under it hold (`team` and
   * `team/**`: a quota's namespace): the first `/_` after it ends a name, so no other
   * repository's keys (`teams/…`) share this prefix.
   */
  repositoryTree: (name: string): string => `repositories/${name}/`,

  /** A repository's link to a layer or config blob (the linked-blob-store rule). */
  layerLink: (name: string, digest: Digest): string => `repositories/${name}/_layers/${digest.algorithm}/${digest.hex}`,
  /** A repository's link to a manifest revision; body `{mediaType}`. */
  manifestRevision: (name: string, digest: Digest): string =>
    `repositories/${name}/_manifests/revisions/${digest.algorithm}/${digest.hex}`,
  /** Prefix under which a repository's revision links are listed. */
  revisionPrefix: (name: string): string => `repositories/${name}/_manifests/revisions/`,
  /** Prefix under which a repository's tag records are listed, sorted. */
  tagPrefix: (name: string): string => `repositories/${name}/_manifests/tags/`,
  /** A tag; body is the digest it points at. */
  tag: (name: string, tag: string): string => `repositories/${name}/_manifests/tags/${tag}`,

  /**
   * A manifest that names `subject` as its subject: one record per referrer, its body
   * the referrer's descriptor, so the referrers API is one sorted listing.
   */
  referrerPrefix: (name: string, subject: Digest): string =>
    `repositories/${name}/_referrers/${subject.algorithm}/${subject.hex}/`,
  referrer: (name: string, subject: Digest, referrer: Digest): string =>
    `repositories/${name}/_referrers/${subject.algorithm}/${subject.hex}/${referrer.algorithm}:${referrer.hex}`,

  /**
   * Marks an object whose bytes did not match its digest, withdrawn by the integrity
   * check's repair: kept for inspection, never swept as an orphan. Body: `{digest, reason}`.
   */
  quarantine: (objectKey: string): string => `quarantine/${objectKey}`,

  /**
   * The garbage collector's run marker (src/gc): custom metadata `state` is `active` while
   * a run may remove links, `idle` after; never deleted. A manifest PUT reads it before and
   * after its writes and checks its references again if a run was or became active
   * (docs/architecture.md, "Garbage collection").
   */
  gcActive: "gc/active",

  /**
   * A web session ended by its user (logout) before its expiry: one empty record per
   * session id, under its expiry (seconds, zero-padded so the listing is in expiry order),
   * so a page checks one key and the daily prune removes expired records from the front.
   */
  revokedSessionPrefix: "sessions/revoked/",
  revokedSession: (expiresAt: number, sessionId: string): string =>
    `sessions/revoked/${String(expiresAt).padStart(12, "0")}/${sessionId}`,
  /** The expiry a revoked-session key was written under (NaN for a foreign key). */
  revokedSessionExpiry: (key: string): number => Number(key.slice("sessions/revoked/".length).split("/")[0]),

  /** One empty marker per repository, so the catalog is a sorted listing of one prefix. */
  catalogPrefix: "catalog/",
  catalogEntry: (name: string): string => `catalog/${name}`,

  // ---- KV: edge index and read cache (never the only record) ----

  /** Cached blob descriptor. Content-addressed, so it never changes while it exists. */
  kvBlob: (digest: Digest): string => `blob:${digest.value}`,
  /**
   * Edge copy of a repository's layer link (body: the link record). Pull paths read it
   * first; R2 stays the truth (see LinkedBlobStore for the write and delete order).
   */
  kvLayerLink: (name: string, digest: Digest): string => `link:${name}/_layers/${digest.value}`,
  /** Edge copy of a manifest revision link (body: `{mediaType}`). */
  kvManifestRevision: (name: string, digest: Digest): string => `link:${name}/_manifests/${digest.value}`,

  // ---- Cache API (per location; keys are URLs on the registry's own host) ----

  /** Bytes of a blob or manifest, by digest alone: every repository linking it shares one copy. */
  cacheBlob: (origin: string, digest: string): string => `${origin}/_edge-cache/blobs/${digest}`,
  /** Where one fill of a blob's bytes lands until they are verified (EdgeCache.putBlob). */
  cacheFill: (origin: string, digest: string, fill: string): string => `${origin}/_edge-cache/fills/${digest}/${fill}`,
  /** The record a tag had, kept EDGE_TAG_TTL_SECONDS at a location. */
  cacheTag: (origin: string, name: string, tag: string): string => `${origin}/_edge-cache/tags/${name}/${tag}`,
} as const;

// ---- reading keys back (listings) ----

/**
 * A key under `repositories/` split into the repository name, the family (`_layers`,
 * `_manifests`, …) and the rest. Name components never start with `_` (the name
 * grammar), so the first `/_` ends the name.
 */
export function splitRepositoryKey(key: string): { name: string; family: string; rest: string[] } | null {
  const path = key.slice(Paths.repositoriesPrefix.length);
  const end = path.indexOf("/_");
  if (end <= 0) return null;
  const [family = "", ...rest] = path.slice(end + 1).split("/");
  return { name: path.slice(0, end), family, rest };
}

/** A key of a repository's links or tags, read back (repositoryEntryOf). */
export interface RepositoryEntryKey {
  name: string;
  link?: { kind: "layer" | "revision"; digest: Digest };
  tag?: string;
}

/**
 * A key of a repository's links or tags (the `_layers` and `_manifests` families), read
 * back: its repository, and the link (layer link or revision) or the tag it is. Neither
 * when the key is of those families but names no digest or tag; null for other keys.
 */
export function repositoryEntryOf(key: string): RepositoryEntryKey | null {
  const parts = splitRepositoryKey(key);
  if (!parts || (parts.family !== "_layers" && parts.family !== "_manifests")) return null;
  const [first = "", second = "", third = ""] = parts.rest;
  if (parts.family === "_layers") {
    const digest = digestOrNull(`${first}:${second}`);
    return digest ? { name: parts.name, link: { kind: "layer", digest } } : { name: parts.name };
  }
  if (first === "revisions") {
    const digest = digestOrNull(`${second}:${third}`);
    return digest ? { name: parts.name, link: { kind: "revision", digest } } : { name: parts.name };
  }
  if (first === "tags" && parts.rest.length === 2) return { name: parts.name, tag: second };
  return { name: parts.name };
}

/** The digest a blob descriptor's key (Paths.blobDescriptor) names, or null. */
export function descriptorDigestOf(key: string): Digest | null {
  const [algorithm = "", hex = ""] = key.slice(Paths.blobDescriptorPrefix.length).split("/");
  return digestOrNull(`${algorithm}:${hex}`);
}
