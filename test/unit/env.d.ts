// What vitest.config.ts adds to the Worker's bindings for the tests.
declare namespace Cloudflare {
  interface Env {
    /** The D1 migrations (migrations/), which test/unit/setup.ts applies to AUDIT. */
    TEST_MIGRATIONS: import("cloudflare:test").D1Migration[];
  }
}
