import { BlobStore } from "./blob-store";
import { LinkedBlobStore } from "./linked-blob-store";
import { Manifests } from "./manifests";
import { Tags } from "./tags";

/** The services one repository's requests use, wired over the Worker's bindings. */
export interface Repository {
  name: string;
  blobs: BlobStore;
  layers: LinkedBlobStore;
  revisions: LinkedBlobStore;
  tags: Tags;
  manifests: Manifests;
}

export function openRepository(env: Env, name: string): Repository {
  const blobs = new BlobStore(env.BLOBS, env.META);
  const layers = new LinkedBlobStore(env.BLOBS, env.META, blobs, name, "layer");
  const revisions = new LinkedBlobStore(env.BLOBS, env.META, blobs, name, "revision");
  const tags = new Tags(env.BLOBS, name);
  return { name, blobs, layers, revisions, tags, manifests: new Manifests(blobs, layers, revisions, tags) };
}
