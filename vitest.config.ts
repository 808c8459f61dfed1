import { cloudflareTest, readD1Migrations } from "@cloudflare/vitest-pool-workers";
import { defineConfig } from "vitest/config";
import { BaseSequencer, type TestSpecification } from "vitest/node";

/**
 * The files that take 30–50 s each (the rest take under 15 s) start first. Without timings
 * from an earlier run (CI's fresh clone) vitest starts the largest files first, and these
 * small ones ran last, side by side, for a tail of ~20 s more on three workers.
 */
const LONGEST = ["gc-concurrency", "faults-failing-calls", "faults-lost-answers", "faults-hanging-calls"];

class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const rank = (file: TestSpecification): number => {
      const index = LONGEST.findIndex((name) => file.moduleId.endsWith(`/${name}.test.ts`));
      return index < 0 ? LONGEST.length : index;
    };
    // Stable: the rest keep vitest's order.
    return (await super.sort(files)).sort((a, b) => rank(a) - rank(b));
  }
}

// The D1 tables (migrations/, as `npm run deploy` applies them), applied in each test
// file's storage by test/unit/setup.ts.
const migrations = await readD1Migrations("migrations");

export default defineConfig({
  plugins: [
    cloudflareTest({
      wrangler: { configPath: "./wrangler.toml" },
      // The registry as `npm start` runs it without users: open. The authentication
      // tests (test/unit/auth.test.ts) pass their own settings to the app.
      // Parts of R2's minimum size (5 MiB, not the deployed 16 MiB): every multipart test
      // moves a third of the bytes, and the fault loops, which push a multipart blob at
      // every step, finish in a fraction of the time.
      // Retention applies to gc-retention/**, gc-race/index/**, gc-seam/** and immutable/gc/** only (test/unit/gc*.test.ts,
      // immutable-tags.test.ts).
      miniflare: {
        bindings: {
          TEST_MIGRATIONS: migrations,
          AUTH_MODE: "open",
          UPLOAD_PART_SIZE: String(5 * 1024 * 1024),
          // Immutable tags in immutable/** (test/unit/immutable-tags.test.ts).
          IMMUTABLE_TAGS: JSON.stringify([{ repositories: ["immutable/**"], tags: ["v*"], except: ["v*-dev"] }]),
          RETENTION: JSON.stringify([
            { repositories: "immutable/gc/**", keepTags: 1 },
            { repositories: "gc-retention/**", keepTags: 3 },
            { repositories: "gc-race/index/**", removeUntaggedOlderThan: "0s" },
            { repositories: "gc-seam/**", keepTags: 1, removeUntaggedOlderThan: "0s" },
            // By last pull: test/unit/pull-records.test.ts.
            { repositories: "gc-pulls/**", pulledWithin: "1s" },
          ]),
        },
      },
    }),
  ],
  test: {
    include: ["test/unit/**/*.test.ts"],
    setupFiles: ["test/unit/setup.ts"],
    // CI machines are slower than this one and shared: tests moving MiBs through the
    // local simulators must not fail on a loaded machine for taking 5 s.
    testTimeout: 30_000,
    // Three test files at once on this 2-core machine (vitest's default is one fewer than
    // the cores: one here). The files wait on workerd's simulators much of the time: the
    // unit suite took ~180 s with 1, 148–190 s with 2, and 100–135 s with 3 (4: 137–140 s),
    // with the same results (a machine shared with other test runs: load 2.5–4).
    maxWorkers: 3,
    sequence: { sequencer: LongestFirst },
  },
});
