import { readConfig } from "../config";
import { BlobStore } from "./blob-store";
import { EdgeCache } from "./edge-cache";
import { LinkedBlobStore } from "./linked-blob-store";
import { Manifests } from "./manifests";
import { Referrers } from "./referrers";
import { storageOf } from "./storage";
import { Tags } from "./tags";

/** The services one repository's requests use, wired over the Worker's bindings. */
export interface Repository {
  name: string;
  blobs: BlobStore;
  layers: LinkedBlobStore;
  revisions: LinkedBlobStore;
  tags: Tags;
  referrers: Referrers;
  manifests: Manifests;
}

/**
 * `edge` is the request's location cache (routes/http.ts edgeCacheOf); without one, pulls
 * read R2 for bytes and tags.
 */
export function openRepository(env: Env, name: string, edge: EdgeCache = EdgeCache.bypass()): Repository {
  const storage = storageOf(env);
  const blobs = new BlobStore(storage);
  const { edgeLinkTtlSeconds } = readConfig(env);
  const layers = new LinkedBlobStore(storage, blobs, name, "layer", edgeLinkTtlSeconds);
  const revisions = new LinkedBlobStore(storage, blobs, name, "revision", edgeLinkTtlSeconds);
  const tags = new Tags(storage.bucket, name, edge);
  const referrers = new Referrers(storage.bucket, name);
  const manifests = new Manifests(blobs, layers, revisions, tags, referrers, edge);
  return { name, blobs, layers, revisions, tags, referrers, manifests };
}
