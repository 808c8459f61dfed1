import { toHex, webCryptoName, type Digest } from "../oci/digest";

/**
 * Bytes on their way through the Worker: a source read chunk by chunk with an idle
 * timeout, and `pump`, which hashes them to their digest while it writes them to one or
 * more destinations in step, holding each chunk back until the next is read, so bytes that
 * do not match their digest never reach a destination whole.
 */

/** Smallest chunk a blob read passes on (see BlobStore.open, chunksOf). */
export const READ_CHUNK_BYTES = 256 * 1024;

/** Bytes on their way somewhere, chunk by chunk (what pump reads). */
export interface ChunkSource {
  chunks(): AsyncGenerator<Uint8Array<ArrayBuffer>>;
  cancel(reason?: unknown): Promise<void>;
}

/**
 * A body (an upstream's answer: src/mirror) as a ChunkSource, read in chunks of at least
 * READ_CHUNK_BYTES (but the last), so that passing it on costs a few calls per MiB.
 * `idleMs`: a read that brings nothing for that long fails the source (pump then aborts
 * every writer), so a stalled sender cannot hold a request, or a fill, forever.
 */
export function chunksOf(stream: ReadableStream<Uint8Array>, idleMs?: number): ChunkSource {
  let byob: ReadableStreamBYOBReader;
  try {
    byob = stream.getReader({ mode: "byob" });
  } catch {
    // Not a byte stream (a body made in JavaScript): its chunks as they come.
    const reader = stream.getReader();
    const next = () => reader.read();
    return {
      async *chunks() {
        for (;;) {
          const { done, value } = idleMs === undefined ? await next() : await within(next(), idleMs);
          if (done) return;
          if (value.byteLength > 0) yield new Uint8Array(value);
        }
      },
      cancel: (reason) => reader.cancel(reason),
    };
  }
  const reader = byob;
  const read = () => reader.readAtLeast(READ_CHUNK_BYTES, new Uint8Array(READ_CHUNK_BYTES));
  async function* chunks(): AsyncGenerator<Uint8Array<ArrayBuffer>> {
    for (;;) {
      const { done, value } = idleMs === undefined ? await read() : await within(read(), idleMs);
      if (value !== undefined && value.byteLength > 0) yield value;
      if (done) return;
    }
  }
  return { chunks, cancel: (reason) => reader.cancel(reason) };
}

/** `work`, or a failure once `ms` passed without it settling (a body that stopped sending). */
function within<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | null = null;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no bytes for ${ms} ms`)), ms);
  });
  return Promise.race([work, late]).finally(() => {
    if (timer !== null) clearTimeout(timer);
  });
}

// eslint-disable-next-line require-yield
export async function* emptyChunks(): AsyncGenerator<Uint8Array<ArrayBuffer>> {
  return;
}

/** How long the cache's copy may hold a chunk up before it is dropped (the client never waits longer on it). */
const COPY_WRITE_TIMEOUT_MS = 10_000;

/** `algorithm:hex` of a whole stream, natively hashed; null for algorithms the runtime cannot stream. */
export async function hashOfStream(stream: ReadableStream<Uint8Array>, digest: Digest): Promise<string | null> {
  const name = webCryptoName(digest.algorithm);
  const hasher = name === "SHA-256" || name === "SHA-512" ? new crypto.DigestStream(name) : null;
  if (!hasher) {
    await stream.cancel();
    return null;
  }
  await stream.pipeTo(hasher);
  return `${digest.algorithm}:${toHex(await hasher.digest)}`;
}

/**
 * Writes the slices' chunks into `writers` (the client's first), each chunk to all of
 * them before the next is read. A failing client ends everything (its reader is gone);
 * a failing other writer (the cache's), or one that holds a chunk up for longer than
 * COPY_WRITE_TIMEOUT_MS, is dropped and the rest go on. A failing read aborts every
 * writer, so no reader takes a short body for a whole one. With `digest`, the bytes are
 * hashed on the way and each chunk is held back until the next is read: the last goes out
 * only once the whole matched, so bytes that do not match fail every reader (the client
 * gets a body cut short, never a complete one). The result says whether every other
 * writer got them all, matching.
 */
export async function pump(
  slices: ChunkSource,
  writers: WritableStreamDefaultWriter<Uint8Array>[],
  digest?: Digest,
): Promise<boolean> {
  const [client, ...others] = writers;
  if (!client) return false;
  const hashName = digest ? webCryptoName(digest.algorithm) : null;
  const hasher = hashName === "SHA-256" || hashName === "SHA-512" ? new crypto.DigestStream(hashName) : null;
  const hashing = hasher?.getWriter();
  // An abort below rejects these; they are settled here, not left unhandled.
  void hasher?.digest.catch(() => undefined);
  for (const writer of [...writers, ...(hashing ? [hashing] : [])]) void writer.closed.catch(() => undefined);
  let live = others;
  let sinceYield = 0;
  try {
    const deliver = async (chunk: Uint8Array<ArrayBuffer>): Promise<void> => {
      const copies = live.map(() => chunk.slice());
      const results = await Promise.allSettled([
        client.write(chunk),
        ...live.map((writer, index) => writeWithin(writer, copies[index] ?? chunk, COPY_WRITE_TIMEOUT_MS)),
      ]);
      if (results[0]?.status === "rejected") throw new Error("the client went away");
      const dropped = live.filter((_, index) => results[index + 1]?.status !== "fulfilled");
      for (const writer of dropped)
        await writer.abort(new Error("the copy fell behind or failed")).catch(() => undefined);
      live = live.filter((writer) => !dropped.includes(writer));
    };
    // With a digest, each chunk is passed on only once the next one has been read, so
    // the last one goes out after the whole has been hashed: a body of fixed length whose
    // every byte was written is complete for its reader, and an abort after that would
    // come too late to tell it the bytes were wrong.
    let held: Uint8Array<ArrayBuffer> | null = null;
    for await (const chunk of slices.chunks()) {
      if (hashing) {
        await hashing.write(chunk.slice());
        if (held) await deliver(held);
        held = chunk;
      } else {
        await deliver(chunk);
      }
      sinceYield += chunk.byteLength;
      if (sinceYield >= YIELD_EVERY_BYTES) {
        sinceYield = 0;
        await yieldToOtherRequests();
      }
    }
    let matches = true;
    if (hashing && hasher && digest) {
      await hashing.close();
      matches = `${digest.algorithm}:${toHex(await hasher.digest)}` === digest.value;
    }
    if (matches && held) await deliver(held);
    if (!matches) {
      // The stored bytes are not what their digest says: fail the client's answer rather
      // than end it as if whole, and keep the copy out of the cache.
      const mismatch = new Error(`the bytes of ${digest?.value ?? "the blob"} do not match its digest`);
      await Promise.all(writers.map((writer) => writer.abort(mismatch).catch(() => undefined)));
      return false;
    }
    await Promise.all([client, ...live].map((writer) => writer.close().catch(() => undefined)));
    return live.length === others.length;
  } catch (error) {
    await slices.cancel(error).catch(() => undefined);
    await hashing?.abort(error).catch(() => undefined);
    await Promise.all(writers.map((writer) => writer.abort(error).catch(() => undefined)));
    return false;
  }
}

/** A write that fails after `ms` if its reader has not taken the chunk. */
function writeWithin(writer: WritableStreamDefaultWriter<Uint8Array>, chunk: Uint8Array, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | null = null;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the copy took no chunk in ${ms} ms`)), ms);
  });
  return Promise.race([writer.write(chunk), late]).finally(() => {
    if (timer !== null) clearTimeout(timer);
  });
}

/** How much a body passes on between two yields (yieldToOtherRequests): ~40 ms of a local pull. */
const YIELD_EVERY_BYTES = 4 * 1024 * 1024;

/**
 * Lets the runtime take other requests between chunks. Under Miniflare the R2 simulator
 * answers in-process, so a body fed chunk after chunk never leaves workerd's queue
 * empty: it took no new connection until the pull ended (GET /v2/ waited 15–38 s behind
 * 1 GiB pulls, bench/pull-stress.mjs). On Cloudflare the reads are network I/O and a
 * zero timer costs nothing measurable.
 */
function yieldToOtherRequests(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}
