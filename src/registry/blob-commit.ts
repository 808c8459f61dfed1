import type { Digest } from "../oci/digest";
import { RegistryError } from "../oci/errors";
import type { BlobDescriptor, BlobStore } from "./blob-store";
import type { LinkedBlobStore } from "./linked-blob-store";

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

/**
 * The storage side of a finished upload: the blob is stored under its digest (if it was
 * not already) and linked into the repository (`layers`). Called only by
 * Repository.commitBlob, inside the change seam. A BLOB_UPLOAD_INVALID means refused for
 * good: the bytes are gone or being collected, and the client uploads again.
 */
export async function storeFinishedBlob(
  blobs: BlobStore,
  layers: LinkedBlobStore,
  digest: Digest,
  blob: FinishedBlob,
): Promise<BlobDescriptor> {
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
  await layers.link(digest, descriptor);
  return descriptor;
}

/** The size a finished blob has. */
export function finishedSize(blob: FinishedBlob): number {
  return blob.object === "stored" ? blob.descriptor.size : blob.size;
}
