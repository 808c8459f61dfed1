// A TCP front for a local plain-HTTP registry (npm start, the e2e suite, the benchmarks).
//
// skopeo, podman, buildah and the docker CLI try HTTPS first, even for an insecure
// registry, and fall back to plain HTTP only when the TLS handshake fails. workerd's
// plain-HTTP listener never answers a TLS ClientHello, so every client connection waited
// ~10 s for its handshake timeout. The front answers a connection whose first byte is a
// TLS handshake record (0x16) at once with a plain-HTTP 400, as Go's HTTP server
// (docker/distribution) does: the TLS client then fails with "first record does not look
// like a TLS handshake", the error the docker CLI falls back on (a bare close, EOF, is
// not). Every other connection is passed through byte for byte.
import net from "node:net";

const TLS_HANDSHAKE = 0x16;
const NOT_TLS = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n400 Bad Request";

/**
 * Listens on 127.0.0.1:`port` (0: any free port) and relays to 127.0.0.1:`targetPort`.
 * Returns { port, connections(), rejected(), close() }.
 */
export async function startFront({ port = 0, targetPort }) {
  const sockets = new Set();
  let connections = 0;
  let rejected = 0;
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    sockets.add(client);
    client.once("close", () => sockets.delete(client));
    client.on("error", () => client.destroy());
    client.once("data", (first) => {
      if (first[0] === TLS_HANDSHAKE) {
        rejected++;
        client.end(NOT_TLS);
        return;
      }
      connections++;
      // Pipe at once: data arriving before the upstream connects is queued by the
      // upstream socket, never dropped (the client stream is already flowing).
      const upstream = net.connect({ host: "127.0.0.1", port: targetPort, allowHalfOpen: true });
      sockets.add(upstream);
      // No Nagle on either side: a relay that holds back small writes meets the peer's
      // delayed ACK, and small requests wait ~40 ms each.
      client.setNoDelay(true);
      upstream.setNoDelay(true);
      upstream.once("close", () => {
        sockets.delete(upstream);
        client.destroy();
      });
      client.once("close", () => upstream.destroy());
      upstream.on("error", () => upstream.destroy());
      upstream.write(first);
      client.pipe(upstream);
      upstream.pipe(client);
    });
  });
  await new Promise((resolveListen, rejectListen) => {
    server.once("error", rejectListen);
    server.listen(port, "127.0.0.1", resolveListen);
  });
  return {
    port: server.address().port,
    connections: () => connections,
    rejected: () => rejected,
    close: () =>
      new Promise((resolveClose) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolveClose());
      }),
  };
}
