import type { RegistryEvent } from "./event";

/**
 * What the EVENTS queue carries: one event, and, for a redrive, the endpoints it goes to
 * again (only those whose delivery failed; the others had it).
 */
export interface EventMessage {
  event: RegistryEvent;
  /** Endpoint ids (WebhookEndpoint.id) to deliver to; absent: every endpoint that wants it. */
  only?: string[];
}

/** Whether a queue message's body is an EventMessage (anything else is dropped, logged). */
export function isEventMessage(body: unknown): body is EventMessage {
  if (typeof body !== "object" || body === null) return false;
  const { event, only } = body as Record<string, unknown>;
  if (typeof event !== "object" || event === null) return false;
  const { id, action, time } = event as Record<string, unknown>;
  if (typeof id !== "string" || typeof action !== "string" || typeof time !== "number") return false;
  return only === undefined || (Array.isArray(only) && only.every((item) => typeof item === "string"));
}
