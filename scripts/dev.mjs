#!/usr/bin/env node
// Local registry: the Worker bundled exactly as `wrangler deploy` bundles it, served by
// Miniflare (workerd, with R2, KV and Durable Objects persisted on local disk) behind a
// small TCP front on 127.0.0.1 (scripts/lib/local-worker.mjs starts the Worker).
//
// Why Miniflare directly and not `wrangler dev`: wrangler dev runs two workerd
// processes, its own proxy Worker in front of ours, and every byte of every upload
// crossed both. The proxy answers any non-GET request that is in flight when it
// believes the Worker reloaded with `503 Your worker restarted mid-request`, which is
// what broke large skopeo pushes (docs/operations.md). Miniflare on its own serves the
// same Worker, with the same bindings (read from wrangler.toml by wrangler's own
// `unstable_getMiniflareWorkerOptions`) and the same state layout (`<persist>/v3`, so
// `wrangler dev` and `npm start` share state), with one process and one hop less.
// There is no hot reload: restart after editing src/ (`npm run dev` is wrangler dev with
// reload, for working on the code).
//
// Why the front: skopeo, podman, buildah and the docker CLI try HTTPS first, even for an
// insecure registry, and fall back to plain HTTP only when the TLS handshake fails.
// workerd's plain-HTTP listener never answers a TLS ClientHello, so every client
// connection waited ~10 s for its handshake timeout. The front answers a connection whose
// first byte is a TLS handshake record (0x16) at once with a plain-HTTP 400, as
// docker/distribution does, so clients fall back immediately, and passes every other
// connection through untouched.
//
// Usage: node scripts/dev.mjs [--port 5000] [--persist-to .wrangler/state] [--quiet]
import net from "node:net";
import { resolve } from "node:path";
import { freePort } from "./lib/free-port.mjs";
import { startLocalWorker } from "./lib/local-worker.mjs";

const args = process.argv.slice(2);
function option(name, fallback) {
  const index = args.indexOf(name);
  return index >= 0 && args[index + 1] !== undefined ? args[index + 1] : fallback;
}
const port = Number(option("--port", process.env.PORT ?? "5000"));
const persistTo = resolve(option("--persist-to", ".wrangler/state"));
const quiet = args.includes("--quiet");
const TLS_HANDSHAKE = 0x16;

const innerPort = await freePort();
const { authenticated, stop: stopWorker } = await startLocalWorker({ persistTo, port: innerPort, quiet });

const front = net.createServer((client) => {
  client.once("data", (first) => {
    if (first[0] === TLS_HANDSHAKE) {
      // Answer as Go's HTTP server (docker/distribution) does: a plain-HTTP 400. The TLS
      // client then fails with "first record does not look like a TLS handshake", which
      // is the error the docker CLI falls back to HTTP on (a bare close, EOF, is not).
      client.end("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n400 Bad Request");
      return;
    }
    // Pipe at once: data arriving before the upstream connects is queued by the
    // upstream socket, never dropped (the client stream is already flowing).
    const upstream = net.connect(innerPort, "127.0.0.1");
    // No Nagle on either side: a relay that holds back small writes meets the peer's
    // delayed ACK, and every small request waited ~40 ms (measured: HEAD p50 60 ms).
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    upstream.write(first);
    client.pipe(upstream);
    upstream.pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    upstream.on("error", close);
    client.on("error", close);
    upstream.on("close", close);
    client.on("close", close);
  });
  client.on("error", () => client.destroy());
});
front.listen(port, "127.0.0.1", () => {
  const auth = authenticated
    ? "authentication enforced (AUTH_USERS)"
    : "OPEN: no authentication, anyone on this machine may push (set AUTH_USERS to require logins)";
  console.log(`edge-registry ready: http://127.0.0.1:${port}/v2/ (state in ${persistTo}; ${auth})`);
});

async function stop() {
  front.close();
  await stopWorker();
  process.exit(0);
}
process.on("SIGINT", () => void stop());
process.on("SIGTERM", () => void stop());
