// What a slow or greedy client may hold of the local front (npm start) and of the push
// relay: both hand each accepted connection to a Node http.Server that never listens
// (listenRefusingTls in front.mjs sniffs for TLS first), so Node's own headersTimeout and
// requestTimeout never run (its connection checker starts in listen()). A review held
// 2 000 connections open indefinitely with one byte each, and 500 Worker requests open
// for over 90 s with trickled `POST /token` bodies. These limits are enforced here instead:
//
// - **Header timeout**: a connection has `headerTimeoutMs` to deliver a request's complete
//   head, counted from when it was accepted or its previous answer finished. Bytes that
//   arrive meanwhile do not extend it, so a head trickled a byte at a time is cut too.
//   Closed without an answer, as Go's ReadHeaderTimeout does.
// - **Body idle timeout**: while a request's body is being received, a connection that
//   sends nothing for `bodyIdleTimeoutMs` is closed (the request is aborted, so the Worker
//   sees its body break). Time when the server is not reading (backpressure: the body's
//   consumer is slower than the client) is not counted against the client.
// - **Connections per address**: at most `maxConnectionsPerAddress` open connections per
//   client address; a connection over it is closed as soon as it is accepted.
//
// One sweep per listener checks every connection (a timer per connection costs more for
// no better answer): a limit is enforced within a tick (a tenth of the shorter timeout,
// at most 1 s) after it is reached.

/** Defaults: generous for any real client, short enough that stalled connections do not pile up. */
export const DEFAULT_CONNECTION_LIMITS = Object.freeze({
  headerTimeoutMs: 10_000,
  bodyIdleTimeoutMs: 60_000,
  maxConnectionsPerAddress: 256,
});

/** The command-line options that set the limits (the same for npm start and the relay). */
export const CONNECTION_LIMIT_OPTIONS = Object.freeze({
  "header-timeout": { type: "string" },
  "body-idle-timeout": { type: "string" },
  "max-connections-per-address": { type: "string" },
});

export const CONNECTION_LIMITS_USAGE = `  --header-timeout SECONDS     time a connection has to send a request's headers
                               (default ${DEFAULT_CONNECTION_LIMITS.headerTimeoutMs / 1000})
  --body-idle-timeout SECONDS  time a request body may go without a byte (default ${DEFAULT_CONNECTION_LIMITS.bodyIdleTimeoutMs / 1000})
  --max-connections-per-address N
                               open connections one client address may hold; more are
                               closed at once (default ${DEFAULT_CONNECTION_LIMITS.maxConnectionsPerAddress})`;

/**
 * The limits from option values as typed (`{ "header-timeout": "10", ... }`, strings or
 * undefined), over the defaults. Throws a message naming the option on a bad value.
 */
export function connectionLimitsFrom(values) {
  const limits = { ...DEFAULT_CONNECTION_LIMITS };
  const seconds = (name, key) => {
    const text = values[name];
    if (text === undefined) return;
    const value = Number(text);
    if (text.trim() === "" || !Number.isFinite(value) || value <= 0 || value > 86_400) {
      throw new Error(`--${name}: expected seconds (more than 0, at most 86400), got ${JSON.stringify(text)}`);
    }
    limits[key] = Math.round(value * 1000);
  };
  seconds("header-timeout", "headerTimeoutMs");
  seconds("body-idle-timeout", "bodyIdleTimeoutMs");
  const cap = values["max-connections-per-address"];
  if (cap !== undefined) {
    const value = Number(cap);
    if (!/^\d+$/.test(cap.trim()) || !Number.isSafeInteger(value) || value < 1) {
      throw new Error(`--max-connections-per-address: expected a positive integer, got ${JSON.stringify(cap)}`);
    }
    limits.maxConnectionsPerAddress = value;
  }
  return limits;
}

/**
 * Enforces `limits` on the connections `server` (an http.Server fed with `emit("connection")`)
 * gets: call admit() for each accepted socket, before handing it over. stats() counts what
 * was enforced; close() stops the sweep.
 */
export class ConnectionLimits {
  constructor(server, limits = {}) {
    this.limits = { ...DEFAULT_CONNECTION_LIMITS, ...limits };
    /** socket → { address, request, waitingSince, answeredAt, bytesRead, lastProgress } */
    this.connections = new Map();
    /** address → open connections */
    this.perAddress = new Map();
    this.counts = { refused: 0, headerTimeouts: 0, bodyTimeouts: 0 };
    server.on("request", (request, response) => this.#started(request, response));
    const tick = Math.min(
      1000,
      Math.max(50, Math.min(this.limits.headerTimeoutMs, this.limits.bodyIdleTimeoutMs) / 10),
    );
    this.sweep = setInterval(() => this.#check(), tick);
    this.sweep.unref();
  }

  /** Counts `socket` against its address; false (and the socket destroyed) when that address is at its cap. */
  admit(socket) {
    const address = socket.remoteAddress ?? "unknown";
    const open = this.perAddress.get(address) ?? 0;
    if (open >= this.limits.maxConnectionsPerAddress) {
      this.counts.refused++;
      socket.destroy();
      return false;
    }
    this.perAddress.set(address, open + 1);
    const now = performance.now();
    this.connections.set(socket, {
      address,
      request: null,
      waitingSince: now,
      answeredAt: 0,
      bytesRead: 0,
      lastProgress: now,
    });
    socket.once("close", () => {
      this.connections.delete(socket);
      const left = (this.perAddress.get(address) ?? 1) - 1;
      if (left > 0) this.perAddress.set(address, left);
      else this.perAddress.delete(address);
    });
    return true;
  }

  stats() {
    return { open: this.connections.size, ...this.counts };
  }

  close() {
    clearInterval(this.sweep);
  }

  /** A request's head arrived: the header clock stops, the body's starts. */
  #started(request, response) {
    const state = this.connections.get(request.socket);
    if (!state) return;
    state.request = request;
    state.answeredAt = 0;
    state.bytesRead = request.socket.bytesRead;
    state.lastProgress = performance.now();
    response.once("finish", () => {
      if (state.request === request) state.answeredAt = performance.now();
    });
  }

  #check() {
    const now = performance.now();
    for (const [socket, state] of this.connections) {
      const request = state.request;
      if (request === null) {
        if (now - state.waitingSince > this.limits.headerTimeoutMs) {
          this.counts.headerTimeouts++;
          socket.destroy();
        }
      } else if (!request.complete) {
        // Paused: the server stopped reading (its consumer is behind); not the client's doing.
        if (socket.bytesRead !== state.bytesRead || socket.isPaused()) {
          state.bytesRead = socket.bytesRead;
          state.lastProgress = now;
        } else if (now - state.lastProgress > this.limits.bodyIdleTimeoutMs) {
          this.counts.bodyTimeouts++;
          socket.destroy();
        }
      } else if (state.answeredAt > 0) {
        // Received and answered: a kept-alive connection waits for its next request's head.
        state.request = null;
        state.waitingSince = state.answeredAt;
      }
      // Otherwise received and not yet answered: the server is working; nothing to time.
    }
  }
}
