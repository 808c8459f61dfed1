import { integer, json, namePattern, SettingsError } from "./values";

/**
 * Webhook endpoints (setting WEBHOOKS, JSON; docs/configuration.md, "Events and webhooks"):
 *
 *   [{ "url": "https://ci.example.com/hooks/registry", "secret": "WEBHOOK_SECRET_CI",
 *      "events": ["manifest.put", "tag.delete"], "repositories": ["team/**"],
 *      "format": "cloudevents", "headers": { "X-Team": "platform" }, "pullEvents": false }]
 *
 * Every committed change becomes an event (src/events), posted to each endpoint whose
 * filters it passes, signed by the Standard Webhooks scheme with the endpoint's secret:
 * `whsec_<base64 key>` itself, or the name of a Worker secret holding it (as UPSTREAMS'
 * credentials). Plain http is refused except to this machine (loopback) unless the
 * endpoint says `allowInsecure`.
 */
export type WebhookFormat = "cloudevents" | "distribution";

/** Every event an endpoint may ask for by name (`events`): the changes, then the pulls. */
export const EVENT_ACTIONS = [
  "blob.commit",
  "blob.mount",
  "blob.unlink",
  "manifest.put",
  "manifest.delete",
  "tag.move",
  "tag.delete",
  "mirror.store",
  "collect",
  "manifest.pull",
  "blob.pull",
] as const;
export type EventAction = (typeof EVENT_ACTIONS)[number];

/** Pulls: opt-in per endpoint (`pullEvents`), since they are many and cost a queue message each. */
export const PULL_ACTIONS: readonly string[] = ["manifest.pull", "blob.pull"];

export interface WebhookEndpoint {
  /** Names the endpoint in delivery records: `name`, or the URL without its query. */
  id: string;
  url: string;
  /** The signing key: the base64-decoded part of `whsec_…`. */
  key: Uint8Array<ArrayBuffer>;
  /** The events it wants (null: every change; pulls only with `pullEvents`). */
  events: ReadonlySet<string> | null;
  /** Repository name patterns it wants (null: every repository, and events without one). */
  repositories: RegExp[] | null;
  format: WebhookFormat;
  /** Extra headers sent with every delivery. */
  headers: Record<string, string>;
  pullEvents: boolean;
}

export interface WebhookSettings {
  endpoints: WebhookEndpoint[];
  /** Whether any endpoint asked for pull events (else pulls are never observed). */
  pullEvents: boolean;
  /** A failed delivery is retried after base × 2^(attempt−1) seconds, at most `retryMaxSeconds`. */
  retryBaseSeconds: number;
  retryMaxSeconds: number;
  /** How long one delivery may take (its answer's headers) before it counts as failed. */
  timeoutMs: number;
}

/** Cloudflare Queues delays a retry by at most 12 hours. */
const MAX_RETRY_DELAY_SECONDS = 43_200;
/** Headers a delivery sets itself: an endpoint's `headers` may not replace them. */
const RESERVED_HEADERS = new Set([
  "content-type",
  "content-length",
  "host",
  "user-agent",
  "webhook-id",
  "webhook-timestamp",
  "webhook-signature",
]);

function isLoopback(hostname: string): boolean {
  return hostname === "localhost" || hostname === "[::1]" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}

/** The key of a `whsec_<base64>` secret, or a SettingsError naming where it is wrong. */
function signingKey(secret: string, where: string): Uint8Array<ArrayBuffer> {
  const encoded = secret.trim().replace(/^whsec_/, "");
  let text: string;
  try {
    text = atob(encoded);
  } catch {
    throw new SettingsError(`${where} is not whsec_<base64>`);
  }
  if (!secret.trim().startsWith("whsec_") || text.length < 16) {
    throw new SettingsError(`${where} must be whsec_<base64 of at least 16 random bytes>`);
  }
  return Uint8Array.from(text, (char) => char.charCodeAt(0));
}

function stringList(value: unknown, where: string): string[] {
  if (!Array.isArray(value) || value.length === 0 || !value.every((item) => typeof item === "string")) {
    throw new SettingsError(`${where} must be a non-empty list of strings`);
  }
  return value as string[];
}

function parseEndpoint(entry: unknown, index: number, secrets: Record<string, unknown>): WebhookEndpoint {
  const where = `WEBHOOKS[${index}]`;
  if (typeof entry !== "object" || entry === null) throw new SettingsError(`${where} must be an object`);
  const raw = entry as Record<string, unknown>;
  if (typeof raw.url !== "string") throw new SettingsError(`${where}.url must be a string`);
  let url: URL;
  try {
    url = new URL(raw.url);
  } catch {
    // Without the value: this message reaches clients (settingsOf), and a URL may hold a token.
    throw new SettingsError(`${where}.url is not a URL`);
  }
  if (raw.allowInsecure !== undefined && typeof raw.allowInsecure !== "boolean") {
    throw new SettingsError(`${where}.allowInsecure must be true or false`);
  }
  if (url.protocol === "http:" && !isLoopback(url.hostname) && raw.allowInsecure !== true) {
    throw new SettingsError(`${where}.url must be https (plain http only to loopback, or with allowInsecure)`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw new SettingsError(`${where}.url must be https`);

  if (typeof raw.secret !== "string" || raw.secret.trim() === "") {
    throw new SettingsError(`${where}.secret must be whsec_<base64>, or name a secret holding it`);
  }
  let secret = raw.secret;
  if (!secret.startsWith("whsec_")) {
    const named = secrets[secret];
    if (typeof named !== "string" || named.trim() === "") {
      throw new SettingsError(`${where}.secret names the secret ${secret.slice(0, 64)}, which is not set`);
    }
    secret = named;
  }
  const key = signingKey(secret, `${where}.secret`);

  if (raw.name !== undefined && (typeof raw.name !== "string" || !/^[A-Za-z0-9._-]{1,64}$/.test(raw.name))) {
    throw new SettingsError(`${where}.name must be 1–64 letters, digits, '.', '_' or '-'`);
  }
  const id = typeof raw.name === "string" ? raw.name : `${url.origin}${url.pathname}`;

  let events: Set<string> | null = null;
  if (raw.events !== undefined) {
    const names = stringList(raw.events, `${where}.events`);
    const unknown = names.filter((name) => !(EVENT_ACTIONS as readonly string[]).includes(name));
    if (unknown.length > 0) {
      throw new SettingsError(`${where}.events: unknown ${unknown.join(", ")} (known: ${EVENT_ACTIONS.join(", ")})`);
    }
    events = new Set(names);
  }
  if (raw.pullEvents !== undefined && typeof raw.pullEvents !== "boolean") {
    throw new SettingsError(`${where}.pullEvents must be true or false`);
  }
  const pullEvents = raw.pullEvents === true;
  const pulls = [...(events ?? [])].filter((name) => PULL_ACTIONS.includes(name));
  if (pulls.length > 0 && !pullEvents) {
    throw new SettingsError(`${where}.events names ${pulls.join(", ")}: pull events need "pullEvents": true`);
  }

  const repositories =
    raw.repositories === undefined
      ? null
      : (typeof raw.repositories === "string"
          ? [raw.repositories]
          : stringList(raw.repositories, `${where}.repositories`)
        ).map(namePattern);

  const format = raw.format ?? "cloudevents";
  if (format !== "cloudevents" && format !== "distribution") {
    throw new SettingsError(`${where}.format must be "cloudevents" or "distribution"`);
  }

  const headers: Record<string, string> = {};
  if (raw.headers !== undefined) {
    if (typeof raw.headers !== "object" || raw.headers === null || Array.isArray(raw.headers)) {
      throw new SettingsError(`${where}.headers must be an object of header names to values`);
    }
    for (const [name, value] of Object.entries(raw.headers as Record<string, unknown>)) {
      if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) || typeof value !== "string" || /[\r\n]/.test(value)) {
        throw new SettingsError(
          `${where}.headers: "${name.slice(0, 64)}" must be a header name with a one-line text value`,
        );
      }
      if (RESERVED_HEADERS.has(name.toLowerCase())) {
        throw new SettingsError(`${where}.headers: ${name} is set by the delivery itself`);
      }
      headers[name] = value;
    }
  }
  return { id, url: url.href, key, events, repositories, format, headers, pullEvents };
}

/**
 * Parses WEBHOOKS and the delivery settings; throws a SettingsError naming what is wrong.
 * `secrets`: the environment, where an endpoint's `secret` may name a Worker secret.
 */
export function parseWebhooks(
  text: string | undefined,
  timing: {
    retryBaseSeconds?: string | undefined;
    retryMaxSeconds?: string | undefined;
    timeoutSeconds?: string | undefined;
  },
  secrets: Record<string, unknown> = {},
): WebhookSettings {
  let endpoints: WebhookEndpoint[] = [];
  if (text !== undefined && text.trim() !== "") {
    const value = json("WEBHOOKS", text);
    if (!Array.isArray(value)) throw new SettingsError("WEBHOOKS must be a JSON list of endpoints");
    endpoints = value.map((entry: unknown, index) => parseEndpoint(entry, index, secrets));
  }
  const ids = new Set<string>();
  for (const endpoint of endpoints) {
    if (ids.has(endpoint.id)) {
      throw new SettingsError(`WEBHOOKS: two endpoints are both ${endpoint.id}: give them distinct "name"s`);
    }
    ids.add(endpoint.id);
  }
  const retryBaseSeconds = integer("WEBHOOK_RETRY_BASE_SECONDS", timing.retryBaseSeconds, 10, {
    min: 0,
    max: MAX_RETRY_DELAY_SECONDS,
  });
  return {
    endpoints,
    pullEvents: endpoints.some((endpoint) => endpoint.pullEvents),
    retryBaseSeconds,
    retryMaxSeconds: Math.max(
      retryBaseSeconds,
      integer("WEBHOOK_RETRY_MAX_SECONDS", timing.retryMaxSeconds, 3600, { min: 0, max: MAX_RETRY_DELAY_SECONDS }),
    ),
    timeoutMs: integer("WEBHOOK_TIMEOUT_SECONDS", timing.timeoutSeconds, 10, { min: 1, max: 300 }) * 1000,
  };
}
