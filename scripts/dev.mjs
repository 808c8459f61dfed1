#!/usr/bin/env node
// Local registry: `wrangler dev` (workerd + miniflare, state on disk) behind a small TCP
// front on 127.0.0.1.
//
// Why the front: skopeo, podman and buildah try HTTPS first, even for an insecure
// registry, and fall back to plain HTTP only when the TLS handshake fails. workerd's
// plain-HTTP listener never answers a TLS ClientHello, so every client connection
// waited ~10 s for its handshake timeout. The front closes a connection whose first
// byte is a TLS handshake record (0x16) at once, so clients fall back immediately, and
// passes every other connection through to wrangler untouched.
//
// Usage: node scripts/dev.mjs [--port 5000] [--persist-to .wrangler/state] [--quiet]
import net from "node:net";
import { freePort } from "./lib/free-port.mjs";

const args = process.argv.slice(2);
function option(name, fallback) {
  const index = args.indexOf(name);
  return index >= 0 && args[index + 1] !== undefined ? args[index + 1] : fallback;
}
const port = Number(option("--port", process.env.PORT ?? "5000"));
const persistTo = option("--persist-to", ".wrangler/state");
const quiet = args.includes("--quiet");
const TLS_HANDSHAKE = 0x16;

const innerPort = await freePort();
process.env.CLOUDFLARE_CF_FETCH_ENABLED = "false";
process.env.WRANGLER_SEND_METRICS = "false";
const { unstable_startWorker } = await import("wrangler");
// wrangler's dev server, started through its API so the DevTools inspector can be left
// off: with it on, wrangler reports every subrequest (upload bodies forwarded to the
// upload session included) to its inspector proxy, which is work on the byte path that
// nobody is looking at.
const worker = await unstable_startWorker({
  config: "wrangler.toml",
  dev: {
    server: { hostname: "127.0.0.1", port: innerPort },
    inspector: false,
    persist: persistTo,
    watch: true,
    logLevel: quiet ? "error" : "log",
  },
});
await worker.ready;

// Say where to connect once wrangler answers (its own "Ready on" port is the internal
// one behind the front).
async function announceWhenReady() {
  for (let attempt = 0; attempt < 600; attempt++) {
    try {
      const response = await fetch(`http://127.0.0.1:${innerPort}/v2/`);
      if (response.ok) {
        console.log(
          `edge-registry ready: http://127.0.0.1:${port}/v2/ (state in ${persistTo}; no authentication locally)`,
        );
        return;
      }
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  console.error("edge-registry: wrangler did not become ready in 120 s");
}
void announceWhenReady();

const front = net.createServer((client) => {
  client.once("data", (first) => {
    if (first[0] === TLS_HANDSHAKE) {
      client.destroy();
      return;
    }
    // Pipe at once: data arriving before the upstream connects is queued by the
    // upstream socket, never dropped (the client stream is already flowing).
    const upstream = net.connect(innerPort, "127.0.0.1");
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
front.listen(port, "127.0.0.1");

async function stop() {
  front.close();
  await worker.dispose();
  process.exit(0);
}
process.on("SIGINT", () => void stop());
process.on("SIGTERM", () => void stop());
