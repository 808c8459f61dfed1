import { cloudflareTest, readD1Migrations } from "@cloudflare/vitest-pool-workers";
import { defineConfig } from "vitest/config";

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
  },
});
