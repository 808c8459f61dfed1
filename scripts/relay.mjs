#!/usr/bin/env node
// Push any layer to a deployed registry: a local relay that chunks uploads under the
// plan's request-body limit (scripts/lib/relay.mjs; README, "Pushing large images to a
// deployed registry").
//
//   npm run relay -- --to https://registry.example.com [--listen 127.0.0.1:5001] [--chunk 95MB]
//                    [--spool-dir DIR] [--header-timeout SECONDS] [--body-idle-timeout SECONDS]
//                    [--max-connections-per-address N] [--quiet]
//   npx edge-registry-relay --to https://registry.example.com
//
// Then push to 127.0.0.1:5001/<name>:<tag> with any client (docker treats 127.0.0.0/8 as
// an insecure registry; docs/operations.md has the flags for the others).
import { parseArgs } from "node:util";
import { CONNECTION_LIMIT_OPTIONS, CONNECTION_LIMITS_USAGE, connectionLimitsFrom } from "./lib/connection-limits.mjs";
import { DEFAULT_CHUNK_BYTES, startRelay } from "./lib/relay.mjs";
import { formatBytes, parseSize } from "./lib/sizes.mjs";

const usage = `usage: npm run relay -- --to URL [--listen HOST:PORT] [--chunk SIZE] [--quiet]
  --to URL            the registry to push to (https://registry.example.com)
  --listen HOST:PORT  where clients reach the relay (default 127.0.0.1:5001; :PORT or PORT
                      alone is 127.0.0.1 too; every interface only when named:
                      0.0.0.0:PORT or [::]:PORT)
  --chunk SIZE        the largest request body sent on (default 95MB; the plan's limit is
                      100 MB on Free and Pro, 200 MB on Business, 500 MB on Enterprise)
  --spool-dir DIR     where chunks are spooled on their way (default: the system's
                      temporary directory; two chunks per layer being pushed)
${CONNECTION_LIMITS_USAGE}
  --quiet             no progress lines`;

let options;
try {
  options = parseArgs({
    options: {
      to: { type: "string" },
      listen: { type: "string", default: "127.0.0.1:5001" },
      chunk: { type: "string" },
      "spool-dir": { type: "string" },
      ...CONNECTION_LIMIT_OPTIONS,
      quiet: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  }).values;
  if (options.help) {
    console.log(usage);
    process.exit(0);
  }
  if (!options.to) throw new Error("--to is required");
} catch (error) {
  console.error(`${error.message}\n${usage}`);
  process.exit(2);
}

let chunk = DEFAULT_CHUNK_BYTES;
try {
  if (options.chunk !== undefined) chunk = parseSize(options.chunk);
} catch (error) {
  console.error(`--chunk: ${error.message}`);
  process.exit(2);
}
let limits;
try {
  limits = connectionLimitsFrom(options);
} catch (error) {
  console.error(error.message);
  process.exit(2);
}

const relay = await startRelay({
  to: options.to,
  listen: options.listen,
  chunk,
  limits,
  quiet: options.quiet,
}).catch((error) => {
  console.error(`relay: ${error.message}`);
  process.exit(1);
});
const reach = relay.allInterfaces
  ? `listening on every interface (${relay.host}): anyone who can reach port ${relay.port} can use it`
  : `listening on ${relay.host} only`;
console.error(`relay ready: ${relay.url} → ${options.to} (${reach}; bodies of at most ${formatBytes(chunk)})`);

async function stop() {
  await relay.close();
  process.exit(0);
}
process.on("SIGINT", () => void stop());
process.on("SIGTERM", () => void stop());
