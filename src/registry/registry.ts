import { BlobStore } from "./blob-store";
import { LinkedBlobStore } from "./linked-blob-store";
import { Manifests } from "./manifests";
import { Referrers } from "./referrers";
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
  const blobs = new BlobStore(env.BLOBS, env.META);
  const layers = new LinkedBlobStore(env.BLOBS, env.META, blobs, name, "layer");
  const revisions = new LinkedBlobStore(env.BLOBS, env.META, blobs, name, "revision");
  const tags = new Tags(env.BLOBS, name);
  const referrers = new Referrers(env.BLOBS, name);
  const manifests = new Manifests(blobs, layers, revisions, tags, referrers);
  return { name, blobs, layers, revisions, tags, referrers, manifests };
}
