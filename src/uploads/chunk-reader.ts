import { readsPast } from "./upload-machine";
import type { ChunkDeclaration, UploadEvent } from "./upload-state";
import type { UploadHash } from "./upload-hash";

/** What reading one body gave: how it ended (the core's next event), and the bytes past the last part. */
export interface ChunkRead {
  event: Extract<UploadEvent, { type: "body-ended" } | { type: "body-failed" }>;
  /** The part buffer as the body left it: the upload's bytes from `from` on (the new tail). */
  tail: { from: number; bytes: Uint8Array } | null;
}

/**
 * Streams a request body into part buffers, the one place bytes move: `buffer` is a
 * part-sized buffer starting at absolute offset `from` and holding `filled` bytes of the
 * staged tail. Body bytes are read (BYOB) straight into it and hashed a part at a time;
 * each full buffer goes to `part` (which uploads it while the next one fills: at most one
 * part in flight, so two part buffers at most). Where parts are cut, and whether the
 * chunk fits, is the core's (upload-machine.ts): the reader only stops at the first read
 * past a bound (`readsPast`) and reports what it received.
 */
export async function readChunk(
  body: ReadableStream<Uint8Array>,
  start: { from: number; buffer: Uint8Array; filled: number },
  declared: ChunkDeclaration,
  hash: UploadHash,
  part: (bytes: Uint8Array, hashState: Uint8Array | null) => Promise<unknown>,
): Promise<ChunkRead> {
  let { from: bufferStart, buffer, filled } = start;
  const partSize = buffer.byteLength;
  /** Bytes of the buffer from here on arrived in this request: not hashed yet. */
  let freshFrom = filled;
  let received = 0;
  let inFlight: Promise<unknown> | null = null;
  let stopped = false;

  const reader = body.getReader({ mode: "byob" });
  try {
    for (;;) {
      // A BYOB read transfers the buffer it fills (even the final, empty read).
      const { done, value } = await reader.read(new Uint8Array(buffer.buffer, filled, partSize - filled));
      if (value) buffer = new Uint8Array(value.buffer);
      if (done) break;
      filled += value.byteLength;
      received += value.byteLength;
      if (readsPast(declared, received)) {
        stopped = true;
        await reader.cancel();
        break;
      }
      if (filled === partSize) {
        // Hashed a part at a time: one call per part, whichever hash it is.
        await hash.update(buffer.subarray(freshFrom, partSize));
        if (inFlight) await inFlight;
        // R2 takes ownership of (detaches) the buffer it uploads: fill a new one.
        inFlight = part(buffer, hash.save());
        buffer = new Uint8Array(partSize);
        bufferStart += partSize;
        filled = 0;
        freshFrom = 0;
      }
    }
    if (inFlight) await inFlight;
  } catch (error) {
    let partError: { error: unknown } | undefined;
    if (inFlight) {
      await inFlight.catch((failure: unknown) => {
        partError = { error: failure };
      });
    }
    return { event: { type: "body-failed", error, partError }, tail: null };
  }
  // A body that read past a bound is refused: its last bytes need no hashing.
  if (!stopped) await hash.update(buffer.subarray(freshFrom, filled));
  return {
    event: { type: "body-ended", received, hashState: hash.save() },
    tail: { from: bufferStart, bytes: buffer.subarray(0, filled) },
  };
}
