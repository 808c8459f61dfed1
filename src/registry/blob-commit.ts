import type { Digest } from "../oci/digest";
import { RegistryError } from "../oci/errors";
import { BlobStore, type BlobDescriptor } from "./blob-store";
import type { ChangeContext } from "./changes";
import { LinkedBlobStore } from "./linked-blob-store";
import type { Storage } from "./storage";

/** A finished upload's bytes, as the registry takes them. */
export type FinishedBlob =
  /** The upload's own object, verified against the digest: published under it (or dropped for a stored copy). */
  | { object: "own"; size: number; key: string }
  /**
   * A stored copy an earlier attempt completed onto (the digest was stored already):
   * linked as it is, and only while that blob is still stored under that object.
   */
  | { object: "duplicate"; size: number; key: string }
  /** A stored blob just found with its bytes there (a mirror fill of a digest stored meanwhile): linked. */
  | { object: "stored"; descriptor: BlobDescriptor };

export interface BlobCommit {
  repository: string;
  digest: Digest;
  blob: FinishedBlob;
  /** Who commits it (SYSTEM_CONTEXT unless the request said): for the change seam (registry/changes.ts). */
  context: ChangeContext;
}

/**
 * The registry's side of a finished upload (`blob.commit`; a mirror fill's `mirror.store`):
 * the blob is stored under its digest (if it was not already) and linked into the
 * repository. The one call the upload engine makes into the registry, so the repository
 * API can put its change seam here. A BLOB_UPLOAD_INVALID means refused for good: the
 * bytes are gone or being collected, and the client uploads again.
 */
export async function commitBlob(storage: Storage, commit: BlobCommit): Promise<BlobDescriptor> {
  const { digest, blob } = commit;
  const blobs = new BlobStore(storage);
  let descriptor: BlobDescriptor;
  if (blob.object === "stored") {
    descriptor = blob.descriptor;
  } else if (blob.object === "duplicate") {
    // Only while that blob is still stored under that object (a retry must not re-publish a
    // descriptor since withdrawn). Linked as it is, never published again: if the collector
    // tombstoned it meanwhile, publishing would bring back a descriptor of bytes being
    // deleted; the link's own check (ensureLive) fails the request instead, and the retry
    // uploads again.
    const current = await blobs.stat(digest, { strong: true });
    if (current?.key !== blob.key) {
      throw new RegistryError("BLOB_UPLOAD_INVALID", "the stored copy of this blob changed meanwhile; upload again");
    }
    descriptor = current;
  } else {
    descriptor = await blobs.publish(digest, blob.size, blob.key);
  }
  await new LinkedBlobStore(storage, blobs, commit.repository, "layer").link(digest, descriptor);
  return descriptor;
}
