// Serves bench/floor/worker.js as `npm start` serves the registry: Miniflare (one workerd,
// this checkout's node_modules) with an R2 bucket and a KV namespace, behind the same node
// front (scripts/lib/front.mjs). bench/request-cpu.mjs --floor starts it.
//   node bench/floor/serve.mjs --port P --persist-to DIR
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
if (!Number.isInteger(port) || !persistTo) {
  console.error("usage: node bench/floor/serve.mjs --port P --persist-to DIR");
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const mf = new Miniflare({
  modules: true,
  scriptPath: join(here, "worker.js"),
  r2Buckets: ["BLOBS"],
  kvNamespaces: ["META"],
  compatibilityDate: "2025-01-01",
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
