import {
  createExecutionContext,
  createMessageBatch,
  env,
  getQueueResult,
  waitOnExecutionContext,
} from "cloudflare:test";
import bcrypt from "bcryptjs";
import { Webhook } from "standardwebhooks";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import fixture from "../fixtures/distribution-notification.json";
import worker from "../../src/index";
import { eventOf, type RegistryEvent } from "../../src/events/event";
import { cloudEvent, distributionEvents, payloadOf } from "../../src/events/formats";
import type { EventMessage } from "../../src/events/message";
import { webhookSignature } from "../../src/events/signature";
import { parseDigest } from "../../src/oci/digest";
import { EventSender } from "../../src/events/sender";
import { changeHooks, changeSeamOf, type Change, type ChangeContext, type Pull } from "../../src/registry/changes";
import { parseSettings, settingsOf } from "../../src/settings/settings";
import { parseWebhooks } from "../../src/settings/webhooks";
import { SettingsError } from "../../src/settings/values";
import { collect } from "./gc-helpers";
import { MediaTypes, pushImageWith, sha256, uploadWith, utf8 } from "./helpers";

// Events and webhooks (src/events): the formats, the signatures, the listener that queues
// one event per change (and pulls only for endpoints that asked), and the queue consumer's
// deliveries, retries, dead letters and redrives. The queue is a fake that records what is
// sent; endpoints are answered in this isolate (fetch to https://hooks.test). Real clients,
// the real queue and a receiver on 127.0.0.1: test/e2e/events.test.mjs.

const KEY = crypto.getRandomValues(new Uint8Array(32));
const SECRET = `whsec_${btoa(String.fromCharCode(...KEY))}`;
const ADMIN_TOKEN = "events test admin token";
const DIGEST = `sha256:${"a".repeat(64)}`;
const OTHER_DIGEST = `sha256:${"b".repeat(64)}`;

/** The EVENTS queue, as a recorder (and a failure on demand). */
class FakeQueue {
  sent: EventMessage[] = [];
  failing = false;

  send(body: EventMessage): Promise<unknown> {
    if (this.failing) return Promise.reject(new Error("queue unavailable"));
    this.sent.push(structuredClone(body));
    return Promise.resolve({ metadata: {} });
  }

  sendBatch(messages: Iterable<{ body: EventMessage }>): Promise<unknown> {
    if (this.failing) return Promise.reject(new Error("queue unavailable"));
    for (const { body } of messages) this.sent.push(structuredClone(body));
    return Promise.resolve({ metadata: {} });
  }
}

interface Received {
  path: string;
  headers: Headers;
  body: string;
}

/** The webhook receivers at https://hooks.test/<path>: what each got, and what each answers. */
class Receivers {
  received: Received[] = [];
  status = new Map<string, number>();

  async handle(request: Request): Promise<Response> {
    const path = new URL(request.url).pathname.slice(1);
    this.received.push({ path, headers: request.headers, body: await request.text() });
    return new Response(null, { status: this.status.get(path) ?? 204 });
  }

  at(path: string): Received[] {
    return this.received.filter((received) => received.path === path);
  }
}

let queue: FakeQueue;
let receivers: Receivers;

const endpoint = (name: string, extra: Record<string, unknown> = {}) => ({
  name,
  url: `https://hooks.test/${name}`,
  secret: SECRET,
  ...extra,
});

/** The registry with these endpoints (open, deletes on, the admin token set) and the fake queue. */
function webhookEnv(endpoints: Record<string, unknown>[], extra: Record<string, string> = {}): Env {
  return {
    ...env,
    EVENTS: queue as unknown as Queue,
    ADMIN_TOKEN,
    WEBHOOKS: endpoints.length > 0 ? JSON.stringify(endpoints) : "",
    WEBHOOK_RETRY_BASE_SECONDS: "2",
    WEBHOOK_RETRY_MAX_SECONDS: "30",
    ...extra,
  } as Env;
}

/** A request to the Worker in `testEnv`, its background work (waitUntil) done. */
async function request(testEnv: Env, path: string, init?: RequestInit): Promise<Response> {
  const ctx = createExecutionContext();
  const response = await worker.fetch(new Request(new URL(path, "http://registry.test"), init), testEnv, ctx);
  const body = response.body ? new Uint8Array(await response.arrayBuffer()) : null;
  await waitOnExecutionContext(ctx);
  return new Response(response.status === 204 || response.status === 304 ? null : body, response);
}

function upload(testEnv: Env, name: string, bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  return uploadWith((path, init) => request(testEnv, path, init), name, bytes);
}

/** Pushes a one-layer image tagged `tag`; returns its digests and the manifest PUT's answer. */
function pushImage(testEnv: Env, name: string, tag: string) {
  return pushImageWith((path, init) => request(testEnv, path, init), name, tag);
}

const USER_CONTEXT: ChangeContext = {
  actor: { kind: "user", name: "alice" },
  requestId: "ray-1",
  address: "192.0.2.7",
  userAgent: "skopeo/1.9.3",
  origin: "https://registry.example.com",
};

function event(change: Change | Pull, context: ChangeContext = USER_CONTEXT): RegistryEvent {
  return eventOf(change, context, Date.UTC(2026, 0, 2, 3, 4, 5));
}

const pushed = (repository: string, tags = ["v1"]) =>
  event({
    action: "manifest.put",
    repository,
    digest: parseDigest(DIGEST),
    mediaType: MediaTypes.ociManifest,
    size: 347,
    tags,
  });

/** A batch of the events queue (or `queueName`), each message on its `attempts`-th attempt. */
function batchOf(
  messages: { body: EventMessage; attempts?: number; id?: string }[],
  queueName = "edge-registry-events",
) {
  return createMessageBatch<EventMessage>(
    queueName,
    messages.map(({ body, attempts = 1, id = body.event.id }) => ({ id, timestamp: new Date(), attempts, body })),
  );
}

interface QueueResult {
  explicitAcks: string[];
  retryMessages: { msgId: string; delaySeconds?: number }[];
  /** The delay of a retry of the whole batch, if there was one. */
  retryAll?: number;
}

/** Runs the Worker's queue() handler on a batch: which messages it acknowledged, and which it retried with what delay. */
async function consume(testEnv: Env, batch: MessageBatch<EventMessage>): Promise<QueueResult> {
  const retryMessages: QueueResult["retryMessages"] = [];
  for (const message of batch.messages) {
    const retry = message.retry.bind(message);
    // The pool's queue result does not say the delay: it is taken here, on its way.
    vi.spyOn(message, "retry").mockImplementation((options) => {
      retryMessages.push({
        msgId: message.id,
        ...(options?.delaySeconds !== undefined ? { delaySeconds: options.delaySeconds } : {}),
      });
      retry(options);
    });
  }
  let retryAll: number | undefined;
  const retryBatch = batch.retryAll.bind(batch);
  vi.spyOn(batch, "retryAll").mockImplementation((options) => {
    retryAll = options?.delaySeconds ?? 0;
    retryBatch(options);
  });
  const ctx = createExecutionContext();
  await worker.queue(batch as MessageBatch<unknown>, testEnv);
  const result = (await getQueueResult(batch as MessageBatch<unknown>, ctx)) as unknown as QueueResult;
  return { explicitAcks: result.explicitAcks, retryMessages, ...(retryAll !== undefined ? { retryAll } : {}) };
}

/** Verified the way a receiver would, with the standardwebhooks package; returns the body parsed. */
function verified(received: Received): Record<string, unknown> {
  const headers = Object.fromEntries(received.headers.entries());
  return new Webhook(SECRET).verify(received.body, headers) as Record<string, unknown>;
}

beforeEach(() => {
  queue = new FakeQueue();
  receivers = new Receivers();
  const original = globalThis.fetch;
  vi.spyOn(globalThis, "fetch").mockImplementation(async (input, init) => {
    const outbound = new Request(input, init);
    if (new URL(outbound.url).host === "hooks.test") return receivers.handle(outbound);
    return original(input, init);
  });
});

afterEach(() => {
  vi.restoreAllMocks();
});

describe("WEBHOOKS", () => {
  const parse = (endpoints: unknown, secrets: Record<string, unknown> = {}) =>
    parseWebhooks(JSON.stringify(endpoints), {}, secrets);
  const refusal = (endpoints: unknown, secrets: Record<string, unknown> = {}) => {
    try {
      parse(endpoints, secrets);
    } catch (error) {
      expect(error).toBeInstanceOf(SettingsError);
      return (error as Error).message;
    }
    throw new Error("accepted");
  };

  it("parses endpoints: CloudEvents by default, a secret by name, filters, and the retry timing", () => {
    const webhooks = parseWebhooks(
      JSON.stringify([
        { url: "https://ci.example.com/hooks?token=x", secret: "WEBHOOK_SECRET_CI", repositories: "team/**" },
        { name: "audit", url: "http://127.0.0.1:9000/", secret: SECRET, format: "distribution", pullEvents: true },
      ]),
      { retryBaseSeconds: "1", retryMaxSeconds: "8", timeoutSeconds: "3" },
      { WEBHOOK_SECRET_CI: SECRET },
    );
    const [ci, audit] = webhooks.endpoints;
    expect(ci).toMatchObject({ id: "https://ci.example.com/hooks", format: "cloudevents", pullEvents: false });
    expect(ci?.key).toEqual(KEY);
    expect(ci?.repositories?.map((pattern) => pattern.test("team/a/b"))).toEqual([true]);
    expect(audit).toMatchObject({ id: "audit", format: "distribution", pullEvents: true, events: null });
    expect(webhooks).toMatchObject({ pullEvents: true, retryBaseSeconds: 1, retryMaxSeconds: 8, timeoutMs: 3000 });
    expect(parseWebhooks(undefined, {})).toMatchObject({ endpoints: [], pullEvents: false, retryBaseSeconds: 10 });
  });

  it("refuses what it cannot follow, naming the endpoint", () => {
    expect(refusal([{ url: "http://hooks.example.com/", secret: SECRET }])).toMatch(/WEBHOOKS\[0\]\.url must be https/);
    expect(parse([{ url: "http://hooks.example.com/", secret: SECRET, allowInsecure: true }]).endpoints).toHaveLength(
      1,
    );
    expect(refusal([{ url: "https://h.example/", secret: "whsec_!!" }])).toMatch(/WEBHOOKS\[0\]\.secret/);
    expect(refusal([{ url: "https://h.example/", secret: "MISSING" }])).toMatch(/names the secret MISSING/);
    expect(refusal([{ url: "https://h.example/", secret: SECRET, events: ["push"] }])).toMatch(/unknown push/);
    expect(refusal([{ url: "https://h.example/", secret: SECRET, events: ["blob.pull"] }])).toMatch(/pullEvents/);
    expect(refusal([{ url: "https://h.example/", secret: SECRET, headers: { "webhook-id": "x" } }])).toMatch(
      /set by the delivery/,
    );
    expect(refusal([{ url: "https://h.example/", secret: SECRET, format: "xml" }])).toMatch(/format/);
    expect(
      refusal([
        { url: "https://h.example/a", secret: SECRET },
        { url: "https://h.example/a?b", secret: SECRET },
      ]),
    ).toMatch(/distinct "name"s/);
    expect(() => parseSettings({ ...env, WEBHOOKS: "[{" } as Env)).toThrow(/WEBHOOKS is not valid JSON/);
  });
});

describe("formats", () => {
  it("CloudEvents 1.0, structured: type, source, subject, id, time, and the event as data", () => {
    const pushedEvent = pushed("team/app", ["v1", "latest"]);
    expect(cloudEvent(pushedEvent)).toEqual({
      specversion: "1.0",
      id: pushedEvent.id,
      type: "io.edge-registry.manifest.put",
      source: "https://registry.example.com/v2/team/app",
      subject: DIGEST,
      time: "2026-01-02T03:04:05.000Z",
      datacontenttype: "application/json",
      data: {
        action: "manifest.put",
        repository: "team/app",
        digest: DIGEST,
        mediaType: MediaTypes.ociManifest,
        size: 347,
        tags: ["v1", "latest"],
        actor: { kind: "user", name: "alice" },
        address: "192.0.2.7",
        userAgent: "skopeo/1.9.3",
        requestId: "ray-1",
        origin: "https://registry.example.com",
      },
    });
    const deleted = cloudEvent(event({ action: "tag.delete", repository: "team/app", tag: "v1" }));
    expect(deleted).toMatchObject({ type: "io.edge-registry.tag.delete", subject: "v1" });
    expect(payloadOf("cloudevents", pushedEvent)?.contentType).toBe("application/cloudevents+json");
  });

  /** The shape of a JSON value: objects by their keys (sorted), recursively; other values by type. */
  function shape(value: unknown): unknown {
    if (Array.isArray(value)) return value.length === 0 ? [] : [shape(value[0])];
    if (typeof value === "object" && value !== null) {
      return Object.fromEntries(
        Object.entries(value)
          .sort(([a], [b]) => a.localeCompare(b))
          .map(([key, inner]) => [key, shape(inner)]),
      );
    }
    return typeof value;
  }

  it("the distribution envelope has the fields docker/distribution sends, event by event (test/fixtures)", () => {
    const envelopes = fixture.envelopes as { contentType: string; body: { events: Record<string, unknown>[] } }[];
    const theirs = envelopes.flatMap((envelope) => envelope.body.events);
    expect(new Set(envelopes.map((envelope) => envelope.contentType))).toEqual(
      new Set(["application/vnd.docker.distribution.events.v1+json"]),
    );
    const anonymous: ChangeContext = { ...USER_CONTEXT, actor: { kind: "anonymous", name: "" } };
    const digest = parseDigest(DIGEST);
    const ours = (change: Change | Pull) => distributionEvents(event(change, anonymous));
    const find = (predicate: (event: Record<string, unknown>) => boolean) => {
      const found = theirs.find(predicate);
      expect(found).toBeDefined();
      return found;
    };
    const target = (event: Record<string, unknown>) => event.target as Record<string, unknown>;
    const isManifestType = (event: Record<string, unknown>) => target(event).mediaType !== "application/octet-stream";
    const cases: [Record<string, unknown>[], Record<string, unknown> | undefined][] = [
      [
        ours({
          action: "manifest.put",
          repository: "t/a",
          digest,
          mediaType: MediaTypes.ociManifest,
          size: 9,
          tags: ["v1"],
        }),
        find((e) => e.action === "push" && isManifestType(e)),
      ],
      [
        ours({ action: "blob.commit", repository: "t/a", digest, size: 9 }),
        find((e) => e.action === "push" && !isManifestType(e)),
      ],
      [
        ours({ action: "blob.mount", repository: "t/b", digest, size: 9, from: "t/a" }),
        find((e) => e.action === "mount"),
      ],
      [
        ours({
          action: "manifest.pull",
          repository: "t/a",
          digest,
          mediaType: MediaTypes.ociManifest,
          size: 9,
          tag: "v1",
        }),
        find((e) => e.action === "pull" && isManifestType(e) && (e.request as { method: string }).method === "GET"),
      ],
      [
        ours({ action: "blob.pull", repository: "t/a", digest, size: 9 }),
        find((e) => e.action === "pull" && !isManifestType(e) && (e.request as { method: string }).method === "GET"),
      ],
      [
        ours({ action: "manifest.delete", repository: "t/a", digest, tags: ["v1"] }),
        find((e) => e.action === "delete" && target(e).digest !== undefined),
      ],
      [
        ours({ action: "tag.delete", repository: "t/a", tag: "v1" }),
        find((e) => e.action === "delete" && target(e).tag !== undefined),
      ],
    ];
    for (const [mine, reference] of cases) {
      expect(mine.length).toBeGreaterThan(0);
      expect(shape(mine[0])).toEqual(shape(reference));
    }
    // A manifest delete tells its tags too, as distribution does.
    expect(ours({ action: "manifest.delete", repository: "t/a", digest, tags: ["v1"] }).map((e) => e.target)).toEqual([
      { digest: DIGEST, repository: "t/a" },
      { repository: "t/a", tag: "v1" },
    ]);
    // A tag move is told by its push; a user is the actor by name.
    expect(
      ours({ action: "tag.move", repository: "t/a", tag: "v1", digest, previous: parseDigest(OTHER_DIGEST) }),
    ).toEqual([]);
    expect(distributionEvents(pushed("t/a"))[0]).toMatchObject({
      actor: { name: "alice" },
      request: {
        id: "ray-1",
        addr: "192.0.2.7",
        host: "registry.example.com",
        method: "PUT",
        useragent: "skopeo/1.9.3",
      },
      target: { url: `https://registry.example.com/v2/t/a/manifests/${DIGEST}`, tag: "v1", length: 347 },
    });
    const envelope = payloadOf("distribution", pushed("t/a", ["v1", "v2"]));
    expect(envelope?.contentType).toBe("application/vnd.docker.distribution.events.v1+json");
    expect((JSON.parse(envelope?.body ?? "{}") as { events: unknown[] }).events).toHaveLength(2);
  });
});

describe("signatures (Standard Webhooks)", () => {
  it("verify with the standardwebhooks package, and by recomputing the HMAC", async () => {
    const body = JSON.stringify({ hello: "world" });
    const timestamp = Math.floor(Date.now() / 1000);
    const signature = await webhookSignature(KEY, "evt_1", timestamp, body);
    expect(signature).toMatch(/^v1,[A-Za-z0-9+/]+=*$/);
    const headers = { "webhook-id": "evt_1", "webhook-timestamp": String(timestamp), "webhook-signature": signature };
    expect(new Webhook(SECRET).verify(body, headers)).toEqual({ hello: "world" });
    const key = await crypto.subtle.importKey("raw", KEY, { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
    const mac = Uint8Array.from(atob(signature.slice(3)), (char) => char.charCodeAt(0));
    const signed = new TextEncoder().encode(`evt_1.${timestamp}.${body}`);
    expect(await crypto.subtle.verify("HMAC", key, mac, signed)).toBe(true);
    expect(() => new Webhook(SECRET).verify(`${body} `, headers)).toThrow();
  });
});

describe("the events listener", () => {
  it("queues the event of a manifest push, with its tags, the user and the request; the PUT counts one send", async () => {
    const testEnv = webhookEnv([endpoint("all")], {
      AUTH_MODE: "",
      AUTH_USERS: `alice:${bcrypt.hashSync("alice-pw", 4)}`,
      TOKEN_SECRET: "events test token key",
    });
    const alice = { Authorization: `Basic ${btoa("alice:alice-pw")}`, "User-Agent": "events-test", "CF-Ray": "ray-42" };
    const config = utf8(JSON.stringify({ architecture: "amd64", os: "linux", seed: "listener" }));
    const configDigest = await upload(env, "team/app", config);
    const manifest = utf8(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaTypes.ociManifest,
        config: { mediaType: MediaTypes.ociConfig, digest: configDigest, size: config.byteLength },
        layers: [],
      }),
    );
    const put = await request(testEnv, "/v2/team/app/manifests/v1?tag=latest", {
      method: "PUT",
      headers: { ...alice, "Content-Type": MediaTypes.ociManifest },
      body: manifest,
    });
    expect(put.status).toBe(201);
    expect(put.headers.get("Server-Timing")).toMatch(/queue;dur=[\d.]+;desc="1"/);
    expect(queue.sent).toHaveLength(1);
    expect(queue.sent[0]?.event).toMatchObject({
      action: "manifest.put",
      repository: "team/app",
      digest: await sha256(manifest),
      mediaType: MediaTypes.ociManifest,
      size: manifest.byteLength,
      tags: ["v1", "latest"],
      actor: { kind: "user", name: "alice" },
      userAgent: "events-test",
      requestId: "ray-42",
      origin: "http://registry.test",
    });
  });

  it("the upload engine's blob commits reach the same listener, one event each", async () => {
    // The upload's Durable Object runs with the test pool's own bindings (no WEBHOOKS): the
    // sender is registered for this test through the seam's test hook instead.
    const testEnv = webhookEnv([endpoint("all")]);
    changeHooks.listeners.push(new EventSender(testEnv, settingsOf(testEnv).webhooks));
    try {
      const image = await pushImage(env, "team/blobs", "v1");
      expect(queue.sent.map(({ event }) => [event.action, event.digest])).toEqual([
        ["blob.commit", image.configDigest],
        ["blob.commit", image.layerDigest],
        ["manifest.put", image.digest],
      ]);
      expect(new Set(queue.sent.map(({ event }) => event.id)).size).toBe(3);
    } finally {
      changeHooks.listeners.length = 0;
    }
  });

  it("the collector's removals are events too, told as the collector", async () => {
    const image = await pushImage(env, "events-gc/app", "v1");
    expect((await request(env, `/v2/events-gc/app/manifests/${image.digest}`, { method: "DELETE" })).status).toBe(202);
    // The collector runs in its Durable Object, with the pool's bindings: the sender is hooked.
    const testEnv = webhookEnv([endpoint("gc", { repositories: ["events-gc/**"], events: ["collect"] })]);
    changeHooks.listeners.push(new EventSender(testEnv, settingsOf(testEnv).webhooks));
    try {
      await collect({});
    } finally {
      changeHooks.listeners.length = 0;
    }
    const collected = queue.sent.map(({ event }) => event);
    expect(collected.map((event) => `${String(event.detail?.kind)} ${event.digest}`).sort()).toEqual(
      [`layer ${image.configDigest}`, `layer ${image.layerDigest}`].sort(),
    );
    for (const event of collected) {
      expect(event).toMatchObject({ action: "collect", repository: "events-gc/app", actor: { kind: "collector" } });
    }
  });

  it("tag moves and deletes are queued too; nothing for a repository no endpoint wants", async () => {
    const testEnv = webhookEnv([endpoint("team", { repositories: ["team/**"] })]);
    const first = await pushImage(testEnv, "team/moves", "v1");
    const second = await pushImage(testEnv, "team/moves", "v1");
    expect((await request(testEnv, "/v2/team/moves/manifests/v1", { method: "DELETE" })).status).toBe(202);
    expect((await request(testEnv, `/v2/team/moves/manifests/${first.digest}`, { method: "DELETE" })).status).toBe(202);
    const actions = queue.sent.map(({ event }) => event.action);
    expect(actions.filter((action) => action !== "blob.commit")).toEqual([
      "manifest.put",
      "manifest.put",
      "tag.move",
      "tag.delete",
      "manifest.delete",
    ]);
    expect(queue.sent.find(({ event }) => event.action === "tag.move")?.event.detail).toEqual({
      previous: first.digest,
    });
    expect(second.digest).not.toBe(first.digest);
    queue.sent.length = 0;
    const other = await pushImage(testEnv, "other/app", "v1");
    expect(other.put.headers.get("Server-Timing")).not.toMatch(/queue/);
    expect(queue.sent).toEqual([]);
  });

  it("without WEBHOOKS events add nothing to the seam: nothing is sent and a push counts no send", async () => {
    const testEnv = webhookEnv([]);
    // The seam holds no events listener (the audit log's may be there: it is always on).
    expect(changeSeamOf(testEnv).listeners.map((listener) => listener.name)).not.toContain("events");
    expect(changeSeamOf(testEnv).pullListeners.map((listener) => listener.name)).not.toContain("events");
    const { put } = await pushImage(testEnv, "quiet/app", "v1");
    expect(put.headers.get("Server-Timing")).not.toMatch(/queue/);
    expect(queue.sent).toEqual([]);
  });

  it("pulls are told only to endpoints that asked for them, after the answer", async () => {
    const quiet = webhookEnv([endpoint("all")]);
    const image = await pushImage(quiet, "pulls/app", "v1");
    queue.sent.length = 0;
    expect(changeSeamOf(quiet).pullListeners.map((listener) => listener.name)).not.toContain("events");
    expect((await request(quiet, "/v2/pulls/app/manifests/v1")).status).toBe(200);
    expect((await request(quiet, `/v2/pulls/app/blobs/${image.layerDigest}`)).status).toBe(200);
    expect(queue.sent).toEqual([]);

    const pulling = webhookEnv([endpoint("all"), endpoint("pulls", { pullEvents: true })]);
    expect(changeSeamOf(pulling).pullListeners.map((listener) => listener.name)).toContain("events");
    expect((await request(pulling, "/v2/pulls/app/manifests/v1", { method: "HEAD" })).status).toBe(200);
    expect((await request(pulling, "/v2/pulls/app/manifests/v1")).status).toBe(200);
    expect((await request(pulling, `/v2/pulls/app/blobs/${image.layerDigest}`)).status).toBe(200);
    expect(queue.sent.map(({ event }) => [event.action, event.digest, event.tags])).toEqual([
      ["manifest.pull", image.digest, ["v1"]],
      ["blob.pull", image.layerDigest, undefined],
    ]);
  });

  it("a send that fails keeps the event in the outbox; the next queue batch sends it", async () => {
    const testEnv = webhookEnv([endpoint("all")]);
    queue.failing = true;
    vi.spyOn(console, "warn").mockImplementation(() => undefined);
    const { put, digest } = await pushImage(testEnv, "outbox/app", "v1");
    expect(put.status).toBe(201);
    const kept = await env.AUDIT.prepare("SELECT id, message FROM outbox").all<{ id: string; message: string }>();
    // (The blobs' commits are the upload object's, with the pool's bindings: see above.)
    expect(kept.results.map((row) => (JSON.parse(row.message) as EventMessage).event.action)).toEqual(["manifest.put"]);
    queue.failing = false;
    const result = await consume(testEnv, batchOf([{ body: { event: pushed("outbox/other") } }]));
    expect(result.explicitAcks).toHaveLength(1);
    expect(queue.sent.map(({ event }) => event.id)).toEqual(kept.results.map((row) => row.id));
    expect(queue.sent.at(-1)?.event.digest).toBe(digest);
    expect((await env.AUDIT.prepare("SELECT COUNT(*) AS n FROM outbox").first<{ n: number }>())?.n).toBe(0);
  });

  it("with the outbox failing too, the event is logged in full and the push still succeeds", async () => {
    const failingDb = {
      prepare: () => {
        throw new Error("D1 unavailable");
      },
    } as unknown as D1Database;
    const testEnv = { ...webhookEnv([endpoint("all")]), AUDIT: failingDb } as Env;
    queue.failing = true;
    vi.spyOn(console, "warn").mockImplementation(() => undefined);
    const logged = vi.spyOn(console, "error").mockImplementation(() => undefined);
    const { put, digest } = await pushImage(testEnv, "lost/app", "v1");
    expect(put.status).toBe(201);
    const lines = logged.mock.calls.map((call) => String(call[0]));
    expect(lines.some((line) => line.includes("EVENT LOST") && line.includes(digest))).toBe(true);
  });
});

describe("the queue consumer", () => {
  it("posts each event signed, in the endpoint's format, and acknowledges it", async () => {
    const testEnv = webhookEnv([endpoint("all"), endpoint("dist", { format: "distribution" })]);
    const message = { event: pushed("team/app") };
    const result = await consume(testEnv, batchOf([{ body: message }]));
    expect(result).toMatchObject({ explicitAcks: [message.event.id], retryMessages: [] });
    const [cloud] = receivers.at("all");
    const [dist] = receivers.at("dist");
    if (!cloud || !dist) throw new Error("not delivered");
    expect(cloud.headers.get("Content-Type")).toBe("application/cloudevents+json");
    expect(cloud.headers.get("webhook-id")).toBe(message.event.id);
    expect(verified(cloud)).toMatchObject({ id: message.event.id, type: "io.edge-registry.manifest.put" });
    expect(dist.headers.get("Content-Type")).toBe("application/vnd.docker.distribution.events.v1+json");
    expect(verified(dist)).toMatchObject({
      events: [{ action: "push", target: { repository: "team/app", tag: "v1" } }],
    });
  });

  it("filters: team/** sees nothing from other/, and `events` picks the kinds", async () => {
    const testEnv = webhookEnv([
      endpoint("team", { repositories: ["team/**"] }),
      endpoint("deletes", { events: ["tag.delete"] }),
    ]);
    const deleted = event({ action: "tag.delete", repository: "other/app", tag: "v1" });
    await consume(testEnv, batchOf([{ body: { event: pushed("other/app") } }, { body: { event: deleted } }]));
    await consume(testEnv, batchOf([{ body: { event: pushed("team/app") } }]));
    expect(
      receivers.at("team").map((received) => (verified(received).data as { repository: string }).repository),
    ).toEqual(["team/app"]);
    expect(receivers.at("deletes").map((received) => verified(received).type)).toEqual(["io.edge-registry.tag.delete"]);
  });

  it("retries with a growing delay only to the endpoint that failed", async () => {
    const testEnv = webhookEnv([endpoint("good"), endpoint("flaky")]);
    receivers.status.set("flaky", 500);
    const message = { event: pushed("retry/app") };
    const first = await consume(testEnv, batchOf([{ body: message }]));
    expect(first).toMatchObject({ explicitAcks: [], retryMessages: [{ msgId: message.event.id, delaySeconds: 2 }] });
    const third = await consume(testEnv, batchOf([{ body: message, attempts: 3 }]));
    expect(third.retryMessages).toEqual([{ msgId: message.event.id, delaySeconds: 8 }]);
    const late = await consume(testEnv, batchOf([{ body: message, attempts: 9 }]));
    expect(late.retryMessages).toEqual([{ msgId: message.event.id, delaySeconds: 30 }]);
    receivers.status.delete("flaky");
    const fourth = await consume(testEnv, batchOf([{ body: message, attempts: 10 }]));
    expect(fourth.explicitAcks).toEqual([message.event.id]);
    // `good` had it at the first attempt and never again; `flaky` at its fifth, once.
    expect(receivers.at("good")).toHaveLength(1);
    expect(receivers.at("flaky").map((received) => received.headers.get("webhook-id"))).toEqual(
      Array(4).fill(message.event.id),
    );
    const rows = await env.AUDIT.prepare(
      "SELECT endpoint, status, attempts FROM deliveries WHERE event_id = ?1 ORDER BY endpoint",
    )
      .bind(message.event.id)
      .all();
    expect(rows.results).toEqual([
      { endpoint: "flaky", status: "delivered", attempts: 4 },
      { endpoint: "good", status: "delivered", attempts: 1 },
    ]);
  });

  it("the dead-letter queue records failed deliveries; the admin API lists them; a redrive delivers each once", async () => {
    const testEnv = webhookEnv([endpoint("good"), endpoint("down")]);
    receivers.status.set("down", 503);
    const messages = [{ event: pushed("dead/one") }, { event: pushed("dead/two") }];
    await consume(testEnv, batchOf(messages.map((body) => ({ body }))));
    const dead = await consume(
      testEnv,
      batchOf(
        messages.map((body) => ({ body })),
        "edge-registry-events-dlq",
      ),
    );
    expect(dead.explicitAcks.sort()).toEqual(messages.map((m) => m.event.id).sort());

    const admin = { Authorization: `Bearer ${ADMIN_TOKEN}` };
    expect((await request(testEnv, "/_admin/deliveries")).status).toBe(403);
    const listed = await request(testEnv, "/_admin/deliveries?status=failed", { headers: admin });
    expect(listed.status).toBe(200);
    const { deliveries } = (await listed.json()) as { deliveries: Record<string, unknown>[] };
    expect(
      deliveries
        .map(({ endpoint, eventId, lastStatus, attempts }) => ({ endpoint, eventId, lastStatus, attempts }))
        .sort((a, b) => String(a.eventId).localeCompare(String(b.eventId))),
    ).toEqual(
      messages
        .map((m) => ({ endpoint: "down", eventId: m.event.id, lastStatus: 503, attempts: 1 }))
        .sort((a, b) => a.eventId.localeCompare(b.eventId)),
    );
    expect(deliveries[0]).toMatchObject({ status: "failed", event: { action: "manifest.put" } });

    // The pages show the same list to administrators (open mode: anyone).
    const page = await request(testEnv, "/deliveries");
    expect(page.status).toBe(200);
    expect(await page.text()).toContain("dead/one");

    const redrive = await request(testEnv, "/_admin/deliveries/redrive", { method: "POST", headers: admin });
    expect(redrive.status).toBe(202);
    expect(await redrive.json()).toEqual({ redriven: 2, events: 2, remaining: 0 });
    const again = await request(testEnv, "/_admin/deliveries/redrive", { method: "POST", headers: admin });
    expect(await again.json()).toEqual({ redriven: 0, events: 0, remaining: 0 });
    expect(queue.sent.map((message) => message.only)).toEqual([["down"], ["down"]]);

    receivers.status.delete("down");
    receivers.received.length = 0;
    const redriven = await consume(
      testEnv,
      batchOf(queue.sent.map((body) => ({ body, id: `redrive-${body.event.id}` }))),
    );
    expect(redriven.explicitAcks).toHaveLength(2);
    expect(receivers.at("good")).toEqual([]);
    expect(
      receivers
        .at("down")
        .map((received) => received.headers.get("webhook-id"))
        .sort(),
    ).toEqual(messages.map((m) => m.event.id).sort());
    const after = await request(testEnv, "/_admin/deliveries?status=delivered&endpoint=down", { headers: admin });
    expect(((await after.json()) as { deliveries: unknown[] }).deliveries).toHaveLength(2);
    const failed = await request(testEnv, "/_admin/deliveries?status=failed", { headers: admin });
    expect(((await failed.json()) as { deliveries: unknown[] }).deliveries).toEqual([]);
  });
  it("a WEBHOOKS that does not parse holds deliveries back; dead letters that cannot be recorded are kept and logged", async () => {
    const broken = { ...webhookEnv([endpoint("all")]), WEBHOOKS: "[{" } as Env;
    const logged = vi.spyOn(console, "error").mockImplementation(() => undefined);
    const held = await consume(broken, batchOf([{ body: { event: pushed("held/app") } }]));
    expect(held).toMatchObject({ explicitAcks: [], retryAll: 300 });
    expect(receivers.received).toEqual([]);
    const message = { event: pushed("held/app") };
    const dead = await consume(broken, batchOf([{ body: message }], "edge-registry-events-dlq"));
    expect(dead).toMatchObject({ explicitAcks: [], retryMessages: [{ msgId: message.event.id, delaySeconds: 60 }] });
    expect(logged.mock.calls.some((call) => String(call[0]).includes(message.event.id))).toBe(true);
  });
});
