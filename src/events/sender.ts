import { isolateEnv } from "../settings/request-env";
import type { ChangeAction, ChangeListener, PullListener, SeamExtension } from "../registry/changes";
import { metered } from "../registry/meter";
import { withTimeout } from "../registry/storage";
import { settingsOf } from "../settings/settings";
import type { WebhookSettings } from "../settings/webhooks";
import { anyoneWants } from "./endpoints";
import { eventOf, type RegistryEvent } from "./event";
import type { EventMessage } from "./message";
import { Outbox } from "./outbox";

/** A queue send that has not answered by then is taken as failed (the event goes to the outbox). */
const SEND_TIMEOUT_MS = 5_000;

/**
 * The change seam's listener that turns each committed change (and, for endpoints that
 * asked, each pull) into an event and sends it to the EVENTS queue: one send per change,
 * nothing for one no endpoint wants. The queue's consumer (consumer.ts) delivers it. A send
 * that fails puts the event in the outbox (D1); if that fails too, the event is logged in
 * full: the request that made the change never fails for it, and waits for one send.
 */
export class EventSender implements ChangeListener, PullListener {
  readonly name = "events";

  constructor(
    private readonly env: Env,
    private readonly webhooks: WebhookSettings,
  ) {}

  /** Changes of a kind some endpoint's `events` names (or every kind, for one that names none). */
  wants(action: ChangeAction): boolean {
    return this.webhooks.endpoints.some((endpoint) => endpoint.events === null || endpoint.events.has(action));
  }

  changed(...[change, context]: Parameters<ChangeListener["changed"]>): Promise<void> {
    return this.send(eventOf(change, context));
  }

  pulled(...[pull, context]: Parameters<PullListener["pulled"]>): Promise<void> {
    return this.send(eventOf(pull, context));
  }

  async send(event: RegistryEvent): Promise<void> {
    if (!anyoneWants(this.webhooks, event)) return;
    const message: EventMessage = { event };
    try {
      await metered("queue", "send", () =>
        withTimeout(this.env.EVENTS.send(message, { contentType: "json" }), "queue.send", SEND_TIMEOUT_MS),
      );
      return;
    } catch (error) {
      console.warn(`events: queue send failed, keeping event ${event.id} in the outbox`, String(error));
    }
    try {
      await new Outbox(this.env.AUDIT).keep(message);
    } catch (error) {
      // Neither the queue nor D1 took it: the log is the last record of it.
      console.error(`events: EVENT LOST (queue and outbox failed): ${JSON.stringify(event)}`, String(error));
    }
  }
}

/** One sender per environment (the Worker's env is one object per isolate). */
const senders = new WeakMap<object, EventSender>();

function senderOf(requestEnv: Env): EventSender {
  // Kept per isolate: built with the Worker's env, never a request's (registry/meter.ts).
  const env = isolateEnv(requestEnv);
  let sender = senders.get(env);
  if (!sender) {
    sender = new EventSender(env, settingsOf(env).webhooks);
    senders.set(env, sender);
  }
  return sender;
}

/**
 * Events as a seam extension (registered by app.ts): a listener only when WEBHOOKS names an
 * endpoint, and a pull listener only when one asked for pulls, so that otherwise pushes and
 * pulls cost what they did.
 */
export const eventsExtension: SeamExtension = {
  name: "events",
  listeners: (env) => (settingsOf(env).webhooks.endpoints.length > 0 ? [senderOf(env)] : []),
  pullListeners: (env) => (settingsOf(env).webhooks.pullEvents ? [senderOf(env)] : []),
};
