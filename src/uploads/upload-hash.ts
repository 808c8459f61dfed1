import { toHex, webCryptoName, type DigestAlgorithm } from "../oci/digest";
import { ResumableHash } from "./resumable-hash";

/**
 * How an upload's bytes are hashed while they stream through the session. Two kinds:
 *
 * - `resumable`: the WASM SHA-256 whose state is saved at every durable point, so the
 *   next request (on a restarted object, even) continues where this one stopped. Used
 *   for PATCH and for a PUT that finishes a chunked upload.
 * - `native`: the runtime's `crypto.DigestStream` (~5x faster here), whose state cannot
 *   be exported. Used when the whole blob arrives in one request with its digest known
 *   (POST ?digest=, or a PUT with the whole body on a fresh session): nothing continues
 *   after that request, so nothing needs saving, and the request is all-or-nothing.
 */
export interface UploadHash {
  update(bytes: Uint8Array): Promise<void>;
  /** The state after every byte so far, for a durable point; null when it cannot be saved. */
  save(): Uint8Array | null;
  /** Finishes the hash: `algorithm:hex`. */
  digest(): Promise<string>;
}

export function resumableHash(state: Uint8Array): UploadHash {
  const hash = ResumableHash.restore("sha256", state);
  return {
    update: (bytes) => {
      hash.update(bytes);
      return Promise.resolve();
    },
    save: () => hash.save(),
    digest: () => Promise.resolve(`sha256:${hash.digestHex()}`),
  };
}

export function nativeHash(algorithm: DigestAlgorithm): UploadHash {
  const stream = new crypto.DigestStream(webCryptoName(algorithm));
  const writer = stream.getWriter();
  return {
    // Awaited before the bytes move on: the part buffer is handed to R2 (detached) next.
    update: (bytes) => writer.write(bytes),
    save: () => null,
    digest: async () => {
      await writer.close();
      return `${algorithm}:${toHex(await stream.digest)}`;
    },
  };
}
