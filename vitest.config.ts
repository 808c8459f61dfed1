import { cloudflareTest } from "@cloudflare/vitest-pool-workers";
import { defineConfig } from "vitest/config";

export default defineConfig({
  plugins: [
    cloudflareTest({
      wrangler: { configPath: "./wrangler.toml" },
      // The registry as `npm start` runs it without users: open. The authentication
      // tests (test/unit/auth.test.ts) pass their own settings to the app.
      miniflare: { bindings: { AUTH_MODE: "open" } },
    }),
  ],
  test: {
    include: ["test/unit/**/*.test.ts"],
    // CI machines are slower than this one and shared: tests moving MiBs through the
    // local simulators must not fail on a loaded machine for taking 5 s.
    testTimeout: 30_000,
  },
});
