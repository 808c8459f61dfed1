import type { WebhookFormat } from "../settings/webhooks";
import type { RegistryEvent } from "./event";

/**
 * An event as an endpoint's format has it (docs/operations.md, "Receiving events"):
 *
 * - `cloudevents`: CloudEvents 1.0, JSON structured mode (`application/cloudevents+json`),
 *   type `io.edge-registry.<action>`, the event itself as `data`.
 * - `distribution`: docker/distribution's notification envelope
 *   (`application/vnd.docker.distribution.events.v1+json`, `{"events": [...]}`), field by
 *   field as distribution 2.8 sends it (notifications/event.go, bridge.go; the capture in
 *   test/fixtures/distribution-notification.json), so what consumes distribution's
 *   notifications consumes ours.
 */
export interface Payload {
  contentType: string;
  body: string;
}

export const CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json";
export const DISTRIBUTION_CONTENT_TYPE = "application/vnd.docker.distribution.events.v1+json";

/** The CloudEvents `type` prefix: `io.edge-registry.manifest.put`, … */
const CLOUDEVENTS_TYPE_PREFIX = "io.edge-registry.";

/** What a CloudEvent is about, within its source: a tag for tag changes, else the digest. */
function subjectOf(event: RegistryEvent): string | undefined {
  const tag = event.tags?.[0];
  return event.action.startsWith("tag.") ? (tag ?? event.digest) : (event.digest ?? tag);
}

/** The CloudEvent (1.0, structured mode) of an event. */
export function cloudEvent(event: RegistryEvent): Record<string, unknown> {
  const { id, time, ...data } = event;
  const subject = subjectOf(event);
  return {
    specversion: "1.0",
    id,
    type: `${CLOUDEVENTS_TYPE_PREFIX}${event.action}`,
    // A URI reference: the repository's API root, absolute when the request's origin is known.
    source: `${event.origin ?? ""}/v2/${event.repository ?? ""}`,
    ...(subject !== undefined ? { subject } : {}),
    time: new Date(time).toISOString(),
    datacontenttype: "application/json",
    data,
  };
}

/** distribution's actions: our changes map onto push, pull, mount and delete. */
const DISTRIBUTION_ACTIONS: Record<string, "push" | "pull" | "mount" | "delete" | undefined> = {
  "manifest.put": "push",
  "mirror.store": "push",
  "blob.commit": "push",
  "blob.mount": "mount",
  "blob.unlink": "delete",
  "manifest.delete": "delete",
  "tag.delete": "delete",
  collect: "delete",
  "manifest.pull": "pull",
  "blob.pull": "pull",
  // `tag.move`: distribution tells a moved tag as the push that moved it (its `tag`), as we do.
};

/** The method of the request that made a change (distribution's `request.method`); "" for background work. */
const METHODS: Record<string, string> = {
  "manifest.put": "PUT",
  "blob.commit": "PUT",
  "blob.mount": "POST",
  "blob.unlink": "DELETE",
  "manifest.delete": "DELETE",
  "tag.delete": "DELETE",
  // The mirror stores what a client's GET fetched.
  "mirror.store": "GET",
  "manifest.pull": "GET",
  "blob.pull": "GET",
};

/** distribution's media type for blobs: it does not know what a blob holds. */
const BLOB_MEDIA_TYPE = "application/octet-stream";

/**
 * Identifies this running instance (distribution's `source.instanceID`: new after each
 * restart), made on first use: a Worker may not make random values at startup.
 */
let instanceId: string | undefined;

interface DistributionTarget {
  mediaType?: string;
  size?: number;
  digest?: string;
  length?: number;
  repository?: string;
  fromRepository?: string;
  url?: string;
  tag?: string;
}

function isManifest(event: RegistryEvent): boolean {
  if (event.action.startsWith("manifest.")) return true;
  return event.detail?.kind === "manifest";
}

/** The target of a push, pull or mount: the descriptor, its repository and its URL. */
function contentTarget(event: RegistryEvent, tag: string | undefined): DistributionTarget {
  const manifest = isManifest(event);
  const target: DistributionTarget = {
    mediaType: manifest ? (event.mediaType ?? BLOB_MEDIA_TYPE) : BLOB_MEDIA_TYPE,
  };
  if (event.size !== undefined && event.size > 0) {
    target.size = event.size;
  }
  if (event.digest !== undefined) target.digest = event.digest;
  if (target.size !== undefined) target.length = target.size;
  if (event.repository !== undefined) target.repository = event.repository;
  const from = event.detail?.from;
  if (event.action === "blob.mount" && typeof from === "string") target.fromRepository = from;
  if (event.origin !== undefined && event.repository !== undefined && event.digest !== undefined) {
    target.url = `${event.origin}/v2/${event.repository}/${manifest ? "manifests" : "blobs"}/${event.digest}`;
  }
  if (tag !== undefined) target.tag = tag;
  return target;
}

/** The targets distribution would name for an event (one event each); none for a tag move. */
function distributionTargets(event: RegistryEvent): DistributionTarget[] {
  const repository = event.repository !== undefined ? { repository: event.repository } : {};
  const tags = event.tags ?? [];
  switch (event.action) {
    case "manifest.put":
    case "mirror.store":
    case "manifest.pull":
      // distribution's push or pull of a tag names it; one event per tag a push set.
      return tags.length === 0 ? [contentTarget(event, undefined)] : tags.map((tag) => contentTarget(event, tag));
    case "blob.commit":
    case "blob.mount":
    case "blob.pull":
      return [contentTarget(event, undefined)];
    case "blob.unlink":
      return [{ digest: event.digest ?? "", ...repository }];
    case "manifest.delete":
      // As distribution deletes a manifest: its digest, then each tag that named it.
      return [{ digest: event.digest ?? "", ...repository }, ...tags.map((tag) => ({ ...repository, tag }))];
    case "tag.delete":
      return tags.map((tag) => ({ ...repository, tag }));
    case "collect":
      return event.detail?.kind === "tag"
        ? tags.map((tag) => ({ ...repository, tag }))
        : [{ digest: event.digest ?? "", ...repository }];
    default:
      return [];
  }
}

/** docker/distribution's events for one of ours (none for a tag move: the push told it). */
export function distributionEvents(event: RegistryEvent): Record<string, unknown>[] {
  const action = DISTRIBUTION_ACTIONS[event.action];
  if (action === undefined) return [];
  const host = event.origin !== undefined ? new URL(event.origin).host : undefined;
  return distributionTargets(event).map((target, index) => ({
    // One id per distribution event; the first is the event's own.
    id: index === 0 ? event.id : `${event.id}-${index}`,
    timestamp: new Date(event.time).toISOString(),
    action,
    target,
    request: {
      id: event.requestId ?? "",
      ...(event.address !== undefined ? { addr: event.address } : {}),
      ...(host !== undefined ? { host } : {}),
      method: METHODS[event.action] ?? "",
      useragent: event.userAgent ?? "",
    },
    // distribution names a user, or nobody (`{}`); the registry's own work names its component.
    actor: event.actor.name !== "" ? { name: event.actor.name } : {},
    source: { ...(host !== undefined ? { addr: host } : {}), instanceID: (instanceId ??= crypto.randomUUID()) },
  }));
}

/** What is posted to an endpoint of `format` for an event; null when the format has nothing to say. */
export function payloadOf(format: WebhookFormat, event: RegistryEvent): Payload | null {
  if (format === "cloudevents")
    return { contentType: CLOUDEVENTS_CONTENT_TYPE, body: JSON.stringify(cloudEvent(event)) };
  const events = distributionEvents(event);
  if (events.length === 0) return null;
  return { contentType: DISTRIBUTION_CONTENT_TYPE, body: JSON.stringify({ events }) };
}
