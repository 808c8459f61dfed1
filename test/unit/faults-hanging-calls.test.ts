import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { transport } from "./helpers";
import { storageHooks } from "../../src/registry/storage";
import {
  lastChunkCommit,
  manifestDelete,
  manifestPush,
  monolithic,
  runWithFaults,
  smallChunkedCommit,
  type Scenario,
} from "./fault-scenarios";

// Hundreds of requests in one file: see helpers.transport.
beforeAll(() => {
  transport.direct = true;
});
afterAll(() => {
  transport.direct = false;
});

describe("a storage call that never answers", () => {
  for (const scenario of [
    smallChunkedCommit,
    lastChunkCommit,
    monolithic,
    manifestPush,
    manifestDelete,
  ] as Scenario<unknown>[]) {
    it(
      `${scenario.name}: gives up with 503 instead of hanging, and the retry succeeds`,
      { timeout: 120_000 },
      async () => {
        // A short timeout for the faulted request only (the fault loop restores the
        // storage hooks between steps, and a short timeout elsewhere would fail real calls).
        const steps = await runWithFaults(
          {
            ...scenario,
            run: async (context) => {
              storageHooks.timeoutMs = 100;
              try {
                return await scenario.run(context);
              } finally {
                delete storageHooks.timeoutMs;
              }
            },
          },
          "hang",
        );
        expect(steps).toBeGreaterThanOrEqual(2);
      },
    );
  }
});
