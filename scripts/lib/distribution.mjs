// docker/distribution (`docker-registry serve`, Debian's docker-registry) as the e2e
// harness and the benchmarks run it: on 127.0.0.1:<port> with a fresh filesystem root
// under a temp dir, deletes enabled, logging errors only. Each side spawns and waits for
// it with its own process machinery (test/e2e/harness.mjs, bench/lib.mjs startDistribution).
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";

/**
 * Writes `dir`/config.yml (storage in `dir`/root, listening on 127.0.0.1:`port`) and returns
 * how to start it: { command, args, env }. `env` is this process's environment without
 * REGISTRY_* variables (they would override the config file). `notify`: a URL its
 * notifications (distribution's webhook events) are posted to, flushed at once.
 */
export async function distributionCommand(dir, port, { notify } = {}) {
  const notifications = notify
    ? [
        "notifications:",
        "  events:",
        "    includereferences: false",
        "  endpoints:",
        "    - name: capture",
        `      url: ${notify}`,
        "      timeout: 2s",
        "      threshold: 5",
        "      backoff: 1s",
      ]
    : [];
  const config = join(dir, "config.yml");
  await writeFile(
    config,
    [
      "version: 0.1",
      "log:",
      "  level: error",
      "  accesslog:",
      "    disabled: true",
      "storage:",
      "  filesystem:",
      `    rootdirectory: ${join(dir, "root")}`,
      "  delete:",
      "    enabled: true",
      "http:",
      `  addr: 127.0.0.1:${port}`,
      `  secret: ${randomBytes(16).toString("hex")}`,
      ...notifications,
      "",
    ].join("\n"),
  );
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith("REGISTRY_")));
  return { command: "docker-registry", args: ["serve", config], env };
}
