import { quotasOf } from "../settings/quotas";
import { settingsOf } from "../settings/settings";
import { validateName } from "../oci/names";
import { BlobStore } from "./blob-store";
import { Catalog } from "./catalog";
import { changeSeamOf, SYSTEM_CONTEXT, type ChangeContext } from "./changes";

export { changeSeamOf } from "./changes";
import { EdgeCache } from "./edge-cache";
import { verifyStorage, type VerifyOptions, type VerifyReport } from "./integrity";
import { RevokedSessions } from "./revoked-sessions";
import { LinkedBlobStore } from "./linked-blob-store";
import { Manifests } from "./manifests";
import { Referrers } from "./referrers";
import { Repository, type RepositoryParts } from "./repository";
import { storageOf } from "./storage";
import { Tags } from "./tags";

export { Repository } from "./repository";

// The registry's API for the layers above it (routes, pages): what they may name of it.
export type { BlobDescriptor, ByteRange } from "./blob-store";
export type { Catalog } from "./catalog";
export { EdgeCache, type EdgeCacheOptions } from "./edge-cache";
export { decodeContent } from "./linked-blob-store";
export { parseReference, type Reference } from "./manifests";
export type { ReferrerDescriptor } from "./referrers";
export { pullRecordsOf, type PullRecord, type PullRecords } from "./pull-records";
export { MAX_PAGE, type LocatedBlob, type PassThroughBlob } from "./repository";
export type { TagRecord, TagRow, TagSummary } from "./tags";
export type { Finding, VerifyOptions, VerifyReport } from "./integrity";

export interface OpenOptions {
  /** The request's location cache (routes/http.ts edgeCacheOf); without one, pulls read R2 for bytes and tags. */
  edge?: EdgeCache;
  /** Who the changes made through this repository are attributed to. */
  context?: ChangeContext;
}

/**
 * The storage services of one repository, for the registry layer's own work (the
 * collector's checks); everything else goes through `openRepository`.
 */
export function repositoryParts(env: Env, name: string, edge: EdgeCache = EdgeCache.bypass()): RepositoryParts {
  const storage = storageOf(env);
  const blobs = new BlobStore(storage);
  const { edgeLinkTtlSeconds } = settingsOf(env);
  const layers = new LinkedBlobStore(storage, blobs, name, "layer", edgeLinkTtlSeconds);
  const revisions = new LinkedBlobStore(storage, blobs, name, "revision", edgeLinkTtlSeconds);
  const tags = new Tags(storage.bucket, name, edge);
  const referrers = new Referrers(storage.bucket, name);
  const manifests = new Manifests(blobs, layers, revisions, tags, referrers, edge);
  const catalog = new Catalog(storage.bucket);
  const parts: RepositoryParts = { blobs, layers, revisions, tags, referrers, manifests, catalog, edge };
  if (storage.meter) parts.meter = storage.meter;
  return parts;
}

/** One repository over the Worker's bindings, its changes going through the change seam. */
export function openRepository(env: Env, name: string, options: OpenOptions = {}): Repository {
  const parts = repositoryParts(env, name, options.edge);
  return new Repository(name, parts, changeSeamOf(env), options.context ?? SYSTEM_CONTEXT);
}

/** How a requested name is resolved (routes/http.ts repositoryOf). */
export interface ResolveOptions extends OpenOptions {
  /** containerd's `?ns=<registry>`: the registry the client means. */
  ns?: string;
  /** The host the request came to (an `ns` naming this registry is no other's). */
  host?: string;
}

/**
 * A layer above the registry that serves some requested names with a repository of its
 * own (the mirror decorates the repository a mirrored name is stored as). Null: not one of
 * its names. Registered by the composition root (app.ts), so the registry layer imports
 * none of them.
 */
export interface RepositoryResolver {
  resolve(env: Env, name: string, options: ResolveOptions): Repository | null;
}

const resolvers: RepositoryResolver[] = [];

export function addRepositoryResolver(resolver: RepositoryResolver): void {
  if (!resolvers.includes(resolver)) resolvers.push(resolver);
}

/**
 * The repository that serves a name as a client asked for it (validated): a registered
 * resolver's (a mirrored name), else this registry's own repository of that name.
 */
export function openRequested(env: Env, name: string, options: ResolveOptions = {}): Repository {
  const valid = validateName(name);
  for (const resolver of resolvers) {
    const repository = resolver.resolve(env, valid, options);
    if (repository) return repository;
  }
  return openRepository(env, valid, options);
}

/**
 * The integrity check of everything stored (`npm run verify`; docs/operations.md), with
 * each quota namespace's usage counted from its links (QUOTAS).
 */
export function verifyRegistry(env: Env, options: VerifyOptions): Promise<VerifyReport> {
  const settings = settingsOf(env);
  const namespaces = settings.quotas.map((quota) => quota.namespace);
  const usage = { namespaces, of: (name: string) => quotasOf(settings, name).map((quota) => quota.namespace) };
  return verifyStorage(storageOf(env), namespaces.length > 0 ? { ...options, usage } : options);
}

/** Web sessions ended by a logout (the pages' login cookie). */
export function revokedSessionsOf(env: Env): RevokedSessions {
  return new RevokedSessions(storageOf(env));
}

/** The registry's list of repositories. */
export function catalogOf(env: Env): Catalog {
  return new Catalog(storageOf(env).bucket);
}
