// One target of bench/isolate-cpu.mjs: a registry's Worker (ours from a checkout, SR from a
// prepared copy, or the floor) bundled as it deploys and served by Miniflare with its own
// bindings, wrapped in a loop Worker:
//
//  - any request but POST /__loop goes to the registry's Worker as it is (the bench pushes
//    its image this way);
//  - POST /__loop with {method, path, headers, n} makes that request of the registry's
//    Worker n times in a row, inside the isolate, and reads each answer whole. Its storage
//    bindings are replaced by ones that remember each read's result (head, get, list,
//    getWithMetadata: the first call per argument list goes to Miniflare's simulator, the
//    rest are answered from memory; with {real: true} every read goes to the simulator). No network, no front, no entry Worker, no simulator:
//    what the loop costs workerd is the Worker's own code and the runtime objects it makes
//    (Requests, Responses, headers, promises).
//
//   node bench/isolate/serve.mjs --target ours|peer|floor|floor-r2 --dir DIR --port P --persist-to STATE [--inspector-port I]
// (--port 0: any free port; the ready line names it. --inspector-port: V8's inspector on
// that port, for bench/isolate-cpu.mjs --profile.)
//
// ours: AUTH_USERS and TOKEN_SECRET come from the environment. peer: SR's env "dev" (Basic
// hello:world). floor: bench/floor/worker.js, with an R2 bucket and a KV namespace;
// floor-r2: the same, answering HEAD blob with an R2 head (SR's call) instead of a KV get.
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Log, LogLevel, Miniflare } from "miniflare";

const args = process.argv.slice(2);
const option = (name) => {
  const index = args.indexOf(name);
  return index >= 0 ? args[index + 1] : undefined;
};
const target = option("--target");
const dir = resolve(option("--dir") ?? ".");
const port = Number(option("--port"));
const persistTo = option("--persist-to");
const inspectorPort = option("--inspector-port") === undefined ? undefined : Number(option("--inspector-port"));
if (!["ours", "peer", "floor", "floor-r2"].includes(target) || !Number.isInteger(port) || !persistTo) {
  console.error(
    "usage: node bench/isolate/serve.mjs --target ours|peer|floor|floor-r2 --dir DIR --port P --persist-to STATE",
  );
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const out = join(resolve(persistTo), "bundle");
mkdirSync(out, { recursive: true });
process.env.WRANGLER_SEND_METRICS = "false";
process.env.CLOUDFLARE_CF_FETCH_ENABLED = "false";

/** `wrangler deploy --dry-run` in `dir` with its own wrangler: the bundle as it deploys. */
function bundle(config, environment) {
  const wrangler = createRequire(join(dir, "package.json")).resolve("wrangler/bin/wrangler.js");
  const command = ["deploy", "--dry-run", "--outdir", out, "-c", config];
  if (environment) command.push("--env", environment);
  const built = spawnSync(process.execPath, [wrangler, ...command], { cwd: dir, encoding: "utf8" });
  if (built.status !== 0) throw new Error(`bundling in ${dir} failed\n${built.stdout}\n${built.stderr}`);
}

async function workerOptionsOf(config, environment) {
  const { unstable_getMiniflareWorkerOptions } = await import(
    createRequire(join(dir, "package.json")).resolve("wrangler")
  );
  return unstable_getMiniflareWorkerOptions(join(dir, config), environment).workerOptions;
}

let options;
/** The bindings whose reads the loop remembers. */
let remembered;
/** The Durable Object classes the registry's module exports (re-exported by the loop's). */
let classes = [];
if (target === "ours") {
  bundle("wrangler.toml");
  const workerOptions = await workerOptionsOf("wrangler.toml");
  classes = Object.values(workerOptions.durableObjects ?? {}).map((binding) => binding.className);
  options = {
    ...workerOptions,
    bindings: {
      ...workerOptions.bindings,
      AUTH_USERS: process.env.AUTH_USERS ?? "",
      TOKEN_SECRET: process.env.TOKEN_SECRET ?? "",
    },
  };
  remembered = ["BLOBS", "META"];
} else if (target === "peer") {
  bundle("wrangler.jsonc", "dev");
  options = await workerOptionsOf("wrangler.jsonc", "dev");
  remembered = ["REGISTRY"];
} else {
  copyFileSync(join(here, "..", "floor", "worker.js"), join(out, "index.js"));
  options = { r2Buckets: ["BLOBS"], kvNamespaces: ["META"], compatibilityDate: "2025-01-01" };
  // floor-r2: the blob's HEAD is SR's call, an R2 head (bench/floor/worker.js).
  if (target === "floor-r2") options.bindings = { FLOOR_BLOB_HEAD: "r2" };
  remembered = ["BLOBS", "META"];
}

const loop = `// The loop Worker (bench/isolate/serve.mjs): written by the bench, not part of any registry.
import registry from "./index.js";
${classes.length > 0 ? `export { ${classes.join(", ")} } from "./index.js";` : ""}
const REMEMBERED = ${JSON.stringify(remembered)};
const READS = ["head", "get", "list", "getWithMetadata"];

/** A binding whose reads answer from memory after the first call with the same arguments. */
function remembering(binding) {
  const results = new Map();
  const view = {};
  for (const method of READS) {
    view[method] = async (...args) => {
      const key = JSON.stringify(args);
      const known = results.get(method + key);
      if (known !== undefined) return known.value;
      const value = await binding[method](...args);
      if (value && typeof value === "object" && "body" in value && value.body) {
        throw new Error(method + " answered a body: the loop can only remember reads without one");
      }
      results.set(method + key, { value });
      return value;
    };
  }
  return view;
}

let loopEnv;
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (url.pathname !== "/__loop" || request.method !== "POST") return registry.fetch(request, env, ctx);
    const plan = await request.json();
    if (!loopEnv) {
      loopEnv = { ...env };
      for (const name of REMEMBERED) loopEnv[name] = remembering(env[name]);
    }
    const target = url.origin + plan.path;
    // plan.real: the bindings as they are (every read goes to Miniflare's simulator).
    const bindings = plan.real ? env : loopEnv;
    for (let i = 0; i < plan.n; i++) {
      const answer = await registry.fetch(new Request(target, { method: plan.method, headers: plan.headers }), bindings, ctx);
      if (answer.status !== 200) {
        return new Response("iteration " + i + ": " + answer.status + " " + (await answer.text()), { status: 500 });
      }
      if (answer.body) await answer.arrayBuffer();
    }
    return new Response("ok");
  },
};
`;
writeFileSync(join(out, "loop.js"), loop);

const mf = new Miniflare({
  ...options,
  name: "isolate-loop",
  modules: true,
  scriptPath: join(out, "loop.js"),
  modulesRoot: out,
  modulesRules: [
    { type: "ESModule", include: ["**/*.js"] },
    { type: "CompiledWasm", include: ["**/*.wasm"] },
  ],
  host: "127.0.0.1",
  port,
  defaultPersistRoot: join(resolve(persistTo), "v3"),
  log: new Log(LogLevel.ERROR),
  ...(inspectorPort === undefined ? {} : { inspectorPort }),
});
await mf.ready;
if (target === "ours") {
  // The audit log's tables (a push writes rows): the migrations `npm start` applies.
  const { applyMigrations } = await import(join(dir, "scripts", "lib", "d1-migrations.mjs"));
  await applyMigrations(await mf.getD1Database("AUDIT"));
}
// The port Miniflare bound (--port 0: one of the system's choosing), for the bench to read.
console.log(`isolate loop (${target}) ready on http://127.0.0.1:${new URL(await mf.ready).port}/`);
const stop = async () => {
  await mf.dispose();
  process.exit(0);
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
