/**
 * Runs `task` over every item with at most `limit` running at once. The first failure
 * stops new starts and is thrown once the running tasks have settled, so a request never
 * leaves storage calls behind it, and never has more than `limit` of them in flight (a
 * Worker invocation has six connections open at once; more only queue, and a flood of
 * them slows every other request the isolate serves).
 */
export async function forEachBounded<T>(
  items: readonly T[],
  limit: number,
  task: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const failures: unknown[] = [];
  const worker = async (): Promise<void> => {
    while (failures.length === 0 && next < items.length) {
      const item = items[next++] as T;
      try {
        await task(item);
      } catch (error) {
        failures.push(error);
      }
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failures.length > 0) throw failures[0];
}

/**
 * A whole body of at most `limit` bytes (a manifest, a form, an upstream's small answer),
 * never holding more than that: the cap is enforced while reading, since a chunked body
 * declares no length. Throws `tooLarge()` past the cap, and, with `timeoutMs`, an Error
 * once the body took longer than that; the body is cancelled either way.
 */
export async function readAtMost(
  body: ReadableStream<Uint8Array>,
  limit: number,
  tooLarge: () => Error,
  timeoutMs?: number,
): Promise<Uint8Array<ArrayBuffer>> {
  const reader = body.getReader();
  let timer: ReturnType<typeof setTimeout> | null = null;
  const late =
    timeoutMs === undefined
      ? null
      : new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`the body took over ${timeoutMs} ms`)), timeoutMs);
        });
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = late ? await Promise.race([reader.read(), late]) : await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > limit) throw tooLarge();
      chunks.push(value);
    }
  } catch (error) {
    await reader.cancel().catch(() => undefined);
    throw error;
  } finally {
    if (timer !== null) clearTimeout(timer);
  }
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}
