import { BlobStore } from "./blob-store";
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

export function openRepository(env: Env, name: string): Repository {
  const storage = storageOf(env);
  const blobs = new BlobStore(storage);
  const layers = new LinkedBlobStore(storage.bucket, blobs, name, "layer");
  const revisions = new LinkedBlobStore(storage.bucket, blobs, name, "revision");
  const tags = new Tags(storage.bucket, name);
  const referrers = new Referrers(storage.bucket, name);
  const manifests = new Manifests(blobs, layers, revisions, tags, referrers);
  return { name, blobs, layers, revisions, tags, referrers, manifests };
}
