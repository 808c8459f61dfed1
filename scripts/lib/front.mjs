// The HTTP front of a local registry (npm start, the e2e suite, the benchmarks): a small
// HTTP/1.1 reverse proxy on 127.0.0.1 in front of workerd, standing where Cloudflare's
// edge stands in production.
//
// Why it exists:
// - **HTTPS-first clients.** skopeo, podman, buildah and the docker CLI try HTTPS first,
//   even for an insecure registry, and fall back to plain HTTP only when the TLS
//   handshake fails. workerd's plain-HTTP listener never answers a TLS ClientHello, so
//   every client connection waited ~10 s for its handshake timeout. The front answers a
//   connection whose first byte is a TLS handshake record (0x16) at once with a plain-HTTP
//   400, as Go's HTTP server (docker/distribution) does: the TLS client then fails with
//   "first record does not look like a TLS handshake", the error the docker CLI falls back
//   on (a bare close, EOF, is not).
// - **Answers given before the body was read reach the client.** The registry refuses
//   some requests before reading their body (416 for an out-of-order PATCH, 413 for an
//   oversized manifest or token form, 404 for an unknown upload). workerd then drops the
//   connection, so a client still sending got `connection reset by peer` instead of the
//   answer, and a keep-alive client later reused a connection workerd had dropped. The
//   front passes such an answer on with `Connection: close`, stops forwarding the body,
//   keeps reading (and discarding) what the client still sends, and closes only after
//   the client has stopped or a bounded linger: a close while the client's bytes are
//   still arriving would reset the connection and could destroy the answer in flight.
// - **Malformed requests get a 400 with an OCI error body** (a negative or non-numeric
//   Content-Length, a broken chunked encoding), never a reset or a 500.
// - **`bodyLimit`** makes it refuse request bodies over a size with an HTML 413 before
//   the Worker sees them, as Cloudflare's edge does for the plan's limit.
import { createWriteStream } from "node:fs";
import http from "node:http";
import net from "node:net";

const TLS_HANDSHAKE = 0x16;
const NOT_TLS = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n400 Bad Request";

/** Headers of one hop only (RFC 9110 §7.6.1), never forwarded. */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  // Node's server has already answered `100 Continue` (or the request is refused).
  "expect",
]);

/** How long the front keeps draining a client after an early answer before it gives up on it. */
const DEFAULT_LINGER_MS = 30_000;

function withoutHopByHop(rawHeaders) {
  const kept = [];
  for (let index = 0; index < rawHeaders.length; index += 2) {
    if (!HOP_BY_HOP.has(rawHeaders[index].toLowerCase())) kept.push(rawHeaders[index], rawHeaders[index + 1]);
  }
  return kept;
}

function ociError(code, message) {
  return JSON.stringify({ errors: [{ code, message }] });
}

/** The registry's own OCI error answer, for what the front refuses (workerd never saw it). */
function writeError(response, status, code, message) {
  const body = ociError(code, message);
  response.writeHead(status, {
    "Content-Type": "application/json",
    "Content-Length": Buffer.byteLength(body),
    "Docker-Distribution-API-Version": "registry/2.0",
    Connection: "close",
  });
  response.end(body);
}

/**
 * After an early answer: FIN our side once the answer is written, discard whatever the
 * client still sends, and close when it has stopped (or after `lingerMs`). Installed as
 * the socket's destroySoon, which Node's server calls when the answer said
 * `Connection: close`.
 */
function lingeringClose(socket, lingerMs) {
  socket.destroySoon = () => {
    socket.resume();
    socket.once("end", () => socket.destroy());
    // The linger starts once the answer is flushed: a slow client still reading it is
    // not cut off.
    socket.end(() => {
      const timer = setTimeout(() => socket.destroy(), lingerMs);
      timer.unref();
      socket.once("close", () => clearTimeout(timer));
    });
  };
}

/**
 * workerd drops a connection it answered early, resetting it while the front is still
 * forwarding the body. Node destroys a socket on its first failed write, and with it the
 * answer that already sits unread in the socket's buffer (the reset and the answer arrive
 * together). On the front's connections to workerd, a failed write only stops further
 * writes: the socket keeps reading, so the answer is delivered, and the reset then
 * surfaces as a read error. (`_writeGeneric` is net.Socket's one write path, stable since
 * Node 12.)
 */
function tolerateWriteErrors(socket) {
  const writeGeneric = socket._writeGeneric;
  let broken = false;
  socket._writeGeneric = function (writev, data, encoding, callback) {
    if (broken) return callback();
    return writeGeneric.call(this, writev, data, encoding, (error) => {
      if (error) broken = true;
      callback();
    });
  };
}

class UpstreamAgent extends http.Agent {
  createConnection(options, callback) {
    const socket = super.createConnection(options, callback);
    tolerateWriteErrors(socket);
    return socket;
  }
}

/** What a 413 from Cloudflare's edge looks like: HTML, not the registry's JSON. */
function bodyTooLargePage(limit) {
  return (
    "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n" +
    `<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>local front (body limit ${limit} bytes)</center>\r\n` +
    "</body>\r\n</html>\r\n"
  );
}

/**
 * Listens on 127.0.0.1:`port` (0: any free port) and proxies to 127.0.0.1:`targetPort`.
 * `bodyLimit` (bytes; default none) refuses larger request bodies with an HTML 413.
 * `accessLog` (a file path) gets a JSON line per answered request: time, method, path,
 * status, ms, the request body's bytes received, and the answer's Server-Timing (what it
 * cost in storage calls).
 * Returns { port, connections(), rejected(), close() }.
 */
export async function startFront({ port = 0, targetPort, bodyLimit, lingerMs = DEFAULT_LINGER_MS, accessLog }) {
  const log = accessLog ? createWriteStream(accessLog, { flags: "a" }) : null;
  // Requests without a body share kept-alive connections (and are retried once when a
  // kept-alive connection turns out closed: workerd closes idle ones after 5 s). A
  // request with a body gets a connection of its own: whether workerd read all of a body
  // it answered cannot be known from here, and a connection it stopped reading is dead.
  const pooled = new UpstreamAgent({ keepAlive: true, maxSockets: Infinity });
  const single = new UpstreamAgent({ keepAlive: false, maxSockets: Infinity });

  const server = http.createServer({
    // Uploads take as long as their body does: no whole-request timeout.
    requestTimeout: 0,
    headersTimeout: 60_000,
    maxHeaderSize: 64 * 1024,
  });
  server.on("request", (request, response) => {
    response.sendDate = false;
    let upstreamAnswer = null;
    let refusedHere = false;
    if (log) {
      const started = performance.now();
      let requestBytes = 0;
      request.on("data", (chunk) => (requestBytes += chunk.length));
      response.once("finish", () => {
        const entry = {
          time: new Date().toISOString(),
          method: request.method,
          path: request.url,
          status: response.statusCode,
          ms: Math.round(performance.now() - started),
          requestBytes,
          // Refused here (the body limit): its body never reached the Worker.
          ...(refusedHere ? { refusedByFront: true } : {}),
          serverTiming: upstreamAnswer?.headers["server-timing"] ?? null,
        };
        log.write(`${JSON.stringify(entry)}\n`);
      });
    }
    lingeringClose(request.socket, lingerMs);
    const hasBody =
      request.headers["transfer-encoding"] !== undefined || Number(request.headers["content-length"] ?? 0) > 0;
    const headers = withoutHopByHop(request.rawHeaders).filter((_, index, all) => {
      const name = all[index - (index % 2)].toLowerCase();
      return name !== "cf-connecting-ip";
    });
    // The client's address, as Cloudflare's edge sets it (clients cannot choose it there).
    headers.push("CF-Connecting-IP", request.socket.remoteAddress ?? "127.0.0.1");
    // A chunked body must stay chunked on the way: Node frames bodies of GET, HEAD, DELETE
    // and OPTIONS requests only when asked, and unframed bytes would read as a request.
    if (request.headers["transfer-encoding"] !== undefined) headers.push("Transfer-Encoding", "chunked");

    let answered = false;
    const send = (retried) => {
      const upstream = http.request({
        host: "127.0.0.1",
        port: targetPort,
        method: request.method,
        path: request.url,
        headers,
        // A retry gets a fresh connection: the pool may hold more closed ones.
        agent: hasBody || retried ? single : pooled,
      });
      upstream.setNoDelay(true);
      upstream.on("error", (error) => {
        if (answered) {
          // workerd dropping the connection after a complete early answer is expected; an
          // answer cut short must reach the client as a cut connection (its Content-Length
          // is not met), never as a shorter body that looks whole.
          if (upstreamAnswer && !upstreamAnswer.complete) response.destroy();
          return;
        }
        if (!hasBody && upstream.reusedSocket && !retried) {
          send(true);
          return;
        }
        answered = true;
        request.resume();
        writeError(response, 502, "UNAVAILABLE", `the local registry process did not answer: ${error.message}`);
      });
      upstream.on("response", (answer) => {
        if (answered) {
          answer.resume();
          return;
        }
        answered = true;
        upstreamAnswer = answer;
        const answerHeaders = withoutHopByHop(answer.rawHeaders);
        if (hasBody && !request.complete) {
          // Answered while the client is still sending: workerd will not read the rest.
          // Stop forwarding, tell the client the connection ends here, and keep draining
          // it (lingeringClose) so the answer is not lost.
          request.unpipe();
          request.resume();
          answerHeaders.push("Connection", "close");
        }
        response.writeHead(answer.statusCode ?? 502, answer.statusMessage, answerHeaders);
        answer.pipe(response);
        answer.once("aborted", () => response.destroy());
      });
      // The client went away mid-request: the Worker must see the body break, not end.
      request.once("aborted", () => upstream.destroy());
      response.once("close", () => {
        if (!response.writableFinished) upstream.destroy();
      });
      if (!hasBody) upstream.end();
      return upstream;
    };
    const upstream = send(false);

    /** Over the body limit: refused here, as Cloudflare's edge refuses it, before or while the body arrives. */
    const refuseBody = () => {
      answered = true;
      refusedHere = true;
      request.unpipe();
      request.resume();
      upstream.destroy();
      const page = bodyTooLargePage(bodyLimit);
      response.writeHead(413, {
        "Content-Type": "text/html",
        "Content-Length": Buffer.byteLength(page),
        Connection: "close",
      });
      response.end(page);
    };
    if (bodyLimit !== undefined) {
      const declared = request.headers["content-length"];
      if (declared !== undefined && Number(declared) > bodyLimit) {
        refuseBody();
        return;
      }
      let received = 0;
      request.on("data", (chunk) => {
        received += chunk.length;
        if (received > bodyLimit && !answered) refuseBody();
      });
    }
    if (hasBody) request.pipe(upstream);
  });

  // Malformed requests: Node's parser refuses them before any handler runs; answer with
  // the registry's error shape rather than a bare 400 or a reset.
  server.on("clientError", (error, socket) => {
    if (!socket.writable || error.code === "ECONNRESET") {
      socket.destroy();
      return;
    }
    let status = 400;
    let code = "UNSUPPORTED";
    let message = `malformed HTTP request (${error.code ?? error.message})`;
    if (error.code === "HPE_INVALID_CONTENT_LENGTH" || error.code === "HPE_UNEXPECTED_CONTENT_LENGTH") {
      code = "SIZE_INVALID";
      message = "invalid Content-Length";
    } else if (error.code === "HPE_HEADER_OVERFLOW") {
      status = 431;
      message = "request headers too large";
    } else if (error.code === "ERR_HTTP_REQUEST_TIMEOUT") {
      status = 408;
      message = "request headers not received in time";
    }
    const body = ociError(code, message);
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nDocker-Distribution-API-Version: registry/2.0\r\n` +
        `Connection: close\r\n\r\n${body}`,
    );
  });

  const listener = await listenRefusingTls(server, { port, host: "127.0.0.1" });
  return {
    port: listener.port,
    connections: listener.connections,
    rejected: listener.rejected,
    close: async () => {
      pooled.destroy();
      single.destroy();
      log?.end();
      await listener.close();
    },
  };
}

/**
 * Serves `server` (a Node http.Server) on host:port behind the TLS check: a connection
 * whose first byte is a TLS handshake record gets a plain-HTTP 400 at once (see the
 * header comment); every other is handed to the HTTP server. Also used by the relay
 * (scripts/lib/relay.mjs), which docker reaches over HTTPS first too.
 * Returns { port, connections(), rejected(), close() }.
 */
export async function listenRefusingTls(server, { port = 0, host = "127.0.0.1" } = {}) {
  const sockets = new Set();
  let connections = 0;
  let rejected = 0;
  // TLS sniffing happens on the raw connection, before the HTTP parser sees it.
  const listener = net.createServer((client) => {
    sockets.add(client);
    client.once("close", () => sockets.delete(client));
    client.on("error", () => client.destroy());
    // No Nagle: a proxy that holds back small writes meets the peer's delayed ACK, and
    // small requests wait ~40 ms each.
    client.setNoDelay(true);
    // A connection that never says anything is not kept for ever.
    client.setTimeout(60_000, () => client.destroy());
    client.once("data", (first) => {
      client.setTimeout(0);
      if (first[0] === TLS_HANDSHAKE) {
        rejected++;
        client.end(NOT_TLS);
        return;
      }
      connections++;
      client.pause();
      client.unshift(first);
      server.emit("connection", client);
      client.resume();
    });
  });
  await new Promise((resolveListen, rejectListen) => {
    listener.once("error", rejectListen);
    listener.listen(port, host, resolveListen);
  });
  return {
    port: listener.address().port,
    connections: () => connections,
    rejected: () => rejected,
    close: () =>
      new Promise((resolveClose) => {
        for (const socket of sockets) socket.destroy();
        listener.close(() => resolveClose());
      }),
  };
}
