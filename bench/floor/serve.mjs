// Serves bench/floor/worker.js as `npm start` serves the registry: Miniflare (one workerd,
// this checkout's node_modules) with an R2 bucket and a KV namespace, behind the same node
// front (scripts/lib/front.mjs). bench/request-cpu.mjs --floor starts it.
//   node bench/floor/serve.mjs --port P --persist-to DIR [--config ours]
// --config ours (bench/request-cpu.mjs --floor-ours): the same stand-in with every binding,
// the compatibility date and the flags of this checkout's wrangler.toml (Durable Objects, D1,
// Queues and their consumers included), to tell what the registry's configuration costs a
// request apart from what its code does.
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Log, LogLevel, Miniflare } from "miniflare";
import { startFront } from "../../scripts/lib/front.mjs";

const args = process.argv.slice(2);
const option = (name) => {
  const index = args.indexOf(name);
  return index >= 0 ? args[index + 1] : undefined;
};
const port = Number(option("--port"));
const persistTo = option("--persist-to");
const config = option("--config") ?? "minimal";
if (!Number.isInteger(port) || !persistTo || !["minimal", "ours"].includes(config)) {
  console.error("usage: node bench/floor/serve.mjs --port P --persist-to DIR [--config ours]");
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));

/** Our wrangler.toml's worker options (bindings, date, flags), without its script or module rules. */
async function ourConfig() {
  process.env.WRANGLER_SEND_METRICS = "false";
  const { unstable_getMiniflareWorkerOptions } = await import("wrangler");
  const { workerOptions } = unstable_getMiniflareWorkerOptions(join(here, "..", "..", "wrangler.toml"));
  return {
    ...workerOptions,
    modules: true,
    scriptPath: join(here, "worker-ours.js"),
    modulesRoot: here,
    modulesRules: [{ type: "ESModule", include: ["**/*.js"] }],
  };
}

const mf = new Miniflare({
  ...(config === "ours"
    ? await ourConfig()
    : {
        modules: true,
        scriptPath: join(here, "worker.js"),
        r2Buckets: ["BLOBS"],
        kvNamespaces: ["META"],
        compatibilityDate: "2025-01-01",
      }),
  host: "127.0.0.1",
  port: 0,
  defaultPersistRoot: persistTo,
  log: new Log(LogLevel.ERROR),
});
const inner = Number(new URL(await mf.ready).port);
await startFront({ port, targetPort: inner });
console.log(`floor ready on http://127.0.0.1:${port}/v2/ (workerd on ${inner})`);
const stop = async () => {
  await mf.dispose();
  process.exit(0);
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
