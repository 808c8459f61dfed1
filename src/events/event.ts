import type { Change, ChangeContext, Pull } from "../registry/changes";

/**
 * What the registry tells other systems and its audit log (docs/architecture.md, "Events"):
 * one event per committed change (the change seam's listeners make them) and per login.
 * The same record is a webhook's payload (in the endpoint's format) and an audit row; its
 * `id` is stable, so a receiver can drop duplicates of an at-least-once delivery.
 */
export interface RegistryEvent {
  /** Unique and stable across retries and redrives. */
  id: string;
  /** When the change was committed (ms since the epoch). */
  time: number;
  /** `Change["action"]` (`manifest.put`, `tag.delete`, …), or `login.success` / `login.failure`. */
  action: string;
  repository?: string;
  digest?: string;
  mediaType?: string;
  size?: number;
  /** The tag a change names, or the tags a manifest push set. */
  tags?: string[];
  /** What else the change says (a mount's `from`, a moved tag's `previous`, a collected item's `kind`). */
  detail?: Record<string, string | number>;
  actor: EventActor;
  address?: string;
  userAgent?: string;
  requestId?: string;
  /** The registry's origin as the client addressed it (links in webhook payloads). */
  origin?: string;
}

/** Whoever authenticated the request (or the registry's own component). */
export interface EventActor {
  /** `user`, `anonymous`, `mirror`, `collector`, `system` (later: `robot`, `oidc`). */
  kind: string;
  /** The user name, the component's name; "" for anonymous. */
  name: string;
}

/** The event of a committed change (or of a pull, for those who asked), as its listener saw it. */
export function eventOf(change: Change | Pull, context: ChangeContext, now = Date.now()): RegistryEvent {
  const event: RegistryEvent = {
    id: crypto.randomUUID(),
    time: now,
    action: change.action,
    actor: { kind: context.actor.kind, name: context.actor.name },
  };
  if (context.address) event.address = context.address;
  if (context.userAgent) event.userAgent = context.userAgent;
  if (context.requestId) event.requestId = context.requestId;
  if (context.origin) event.origin = context.origin;
  if ("repository" in change && change.repository !== undefined) event.repository = change.repository;
  if ("digest" in change) event.digest = change.digest.value;
  if ("mediaType" in change && change.mediaType !== undefined) event.mediaType = change.mediaType;
  if ("size" in change) event.size = change.size;
  if ("tags" in change) event.tags = [...change.tags];
  else if ("tag" in change && change.tag !== undefined) event.tags = [change.tag];
  const detail: Record<string, string | number> = {};
  if ("from" in change && change.from !== undefined) detail.from = change.from;
  if ("previous" in change) detail.previous = change.previous.value;
  if ("kind" in change) detail.kind = change.kind;
  if ("subject" in change && change.subject !== undefined) detail.subject = change.subject.value;
  if (Object.keys(detail).length > 0) event.detail = detail;
  return event;
}
