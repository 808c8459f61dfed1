import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { transport } from "./helpers";
import { multipartCommit, runWithFaults, scenarios, type Scenario } from "./fault-scenarios";

// Hundreds of requests in one file: see helpers.transport.
beforeAll(() => {
  transport.direct = true;
});
afterAll(() => {
  transport.direct = false;
});

describe("a storage call that succeeds but whose answer is lost", () => {
  for (const scenario of [...scenarios, multipartCommit as Scenario<unknown>]) {
    it(
      `${scenario.name}: the retry still succeeds and nothing is duplicated or half-written`,
      { timeout: 300_000 },
      async () => {
        expect(await runWithFaults(scenario, "throw-after")).toBeGreaterThanOrEqual(2);
      },
    );
  }
});
