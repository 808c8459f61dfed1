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
