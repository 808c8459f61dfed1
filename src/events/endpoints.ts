import { PULL_ACTIONS, type WebhookEndpoint, type WebhookSettings } from "../settings/webhooks";
import type { RegistryEvent } from "./event";
import type { EventMessage } from "./message";

/**
 * Whether an endpoint wants an event: its `events` (pulls only with `pullEvents`), and its
 * `repositories` patterns (an event of no repository, a collected blob, passes none).
 */
export function wants(endpoint: WebhookEndpoint, event: RegistryEvent): boolean {
  if (PULL_ACTIONS.includes(event.action) && !endpoint.pullEvents) return false;
  if (endpoint.events !== null && !endpoint.events.has(event.action)) return false;
  if (endpoint.repositories === null) return true;
  const repository = event.repository;
  return repository !== undefined && endpoint.repositories.some((pattern) => pattern.test(repository));
}

/** Whether any endpoint wants the event (else it is not even queued). */
export function anyoneWants(webhooks: WebhookSettings, event: RegistryEvent): boolean {
  return webhooks.endpoints.some((endpoint) => wants(endpoint, event));
}

/** The endpoints a queued message goes to: those it names (a redrive), or all that want it. */
export function endpointsFor(webhooks: WebhookSettings, message: EventMessage): WebhookEndpoint[] {
  const only = message.only;
  return webhooks.endpoints.filter((endpoint) => (only ? only.includes(endpoint.id) : wants(endpoint, message.event)));
}
