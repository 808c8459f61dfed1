import { settingsOf } from "../settings/settings";
import type { WebhookSettings } from "../settings/webhooks";
import { deliver } from "./delivery";
import { deliveryLogOf, type DeliveryUpdate } from "./deliveries";
import { endpointsFor } from "./endpoints";
import { isEventMessage, type EventMessage } from "./message";
import { Outbox } from "./outbox";

/**
 * The EVENTS queue's consumer (this Worker's `queue()` handler; docs/architecture.md,
 * "Events"): each message's event is posted to every endpoint that wants it. A message
 * some endpoint failed is retried with a growing delay, and only to the endpoints that
 * have not had it (deliveries.ts records who had it). After the queue's max_retries it
 * goes to the dead-letter queue, whose consumer (the same handler) records each delivery
 * that never succeeded as failed, with the event, for `POST /_admin/deliveries/redrive`.
 */

/** The dead-letter queue is the one whose name ends so (wrangler.toml: edge-registry-events-dlq). */
export function isDeadLetterQueue(queue: string): boolean {
  return queue.endsWith("-dlq");
}

/** The delay before a message's next attempt: base × 2^(attempts − 1), capped. */
export function retryDelaySeconds(webhooks: WebhookSettings, attempts: number): number {
  const delay = webhooks.retryBaseSeconds * 2 ** Math.max(0, Math.min(attempts - 1, 30));
  return Math.min(webhooks.retryMaxSeconds, delay);
}

/** The messages of a batch that carry events; anything else is acknowledged and logged. */
function eventMessages(batch: MessageBatch): { message: Message; body: EventMessage }[] {
  const messages: { message: Message; body: EventMessage }[] = [];
  for (const message of batch.messages) {
    if (isEventMessage(message.body)) messages.push({ message, body: message.body });
    else {
      console.error(`events: dropping message ${message.id} of ${batch.queue}: not an event`);
      message.ack();
    }
  }
  return messages;
}

/** How long a batch waits when the settings cannot be read (a broken WEBHOOKS): time to fix them. */
const BROKEN_SETTINGS_DELAY_SECONDS = 300;

/** The webhook settings, or null (logged) when they do not parse. */
function webhooksOf(env: Env): WebhookSettings | null {
  try {
    return settingsOf(env).webhooks;
  } catch (error) {
    console.error("events: the settings do not parse; deliveries wait", String(error));
    return null;
  }
}

/** Delivers a batch of the EVENTS queue (see above). */
export async function consumeEvents(batch: MessageBatch, env: Env): Promise<void> {
  const webhooks = webhooksOf(env);
  if (!webhooks) {
    batch.retryAll({ delaySeconds: BROKEN_SETTINGS_DELAY_SECONDS });
    return;
  }
  const log = deliveryLogOf(env);
  const messages = eventMessages(batch);
  // Who had a retried message already (a first attempt has been delivered nowhere).
  const retried = messages.filter(({ message }) => message.attempts > 1).map(({ body }) => body.event.id);
  let delivered = new Map<string, Set<string>>();
  try {
    delivered = await log.delivered(retried);
  } catch (error) {
    // Not knowing means sending again: receivers drop the copies by webhook-id.
    console.error("events: delivery records unreadable; retries go to every endpoint", String(error));
  }
  const updates: DeliveryUpdate[] = [];
  const verdicts = await Promise.all(
    messages.map(async ({ message, body }) => {
      const had = delivered.get(body.event.id);
      const targets = endpointsFor(webhooks, body).filter((endpoint) => !had?.has(endpoint.id));
      const outcomes = await Promise.all(targets.map((endpoint) => deliver(endpoint, body.event, webhooks.timeoutMs)));
      const failed = outcomes.some((outcome) => !outcome.ok);
      // Rows only where they matter: a message to retry, a retry's or a redrive's outcome.
      if (failed || message.attempts > 1 || body.only) {
        targets.forEach((endpoint, index) => {
          const outcome = outcomes[index];
          if (!outcome) return;
          updates.push({
            eventId: body.event.id,
            endpoint: endpoint.id,
            status: outcome.ok ? "delivered" : "pending",
            attempted: 1,
            lastStatus: outcome.status,
            ...(outcome.error !== undefined ? { lastError: outcome.error } : {}),
          });
        });
      }
      return { message, failed };
    }),
  );
  try {
    await log.record(updates);
  } catch (error) {
    console.error("events: could not record deliveries; a retry may send some twice", String(error));
  }
  for (const { message, failed } of verdicts) {
    if (failed) message.retry({ delaySeconds: retryDelaySeconds(webhooks, message.attempts) });
    else message.ack();
  }
  // Events whose send failed when their change was made: sent now, a bounded number.
  try {
    await new Outbox(env.AUDIT).drain(env.EVENTS);
  } catch (error) {
    console.error("events: could not drain the outbox", String(error));
  }
}

/**
 * Records the dead-letter queue's messages as failed deliveries (for each endpoint that
 * wanted the event and never had it), with the event, so an operator sees them and can
 * redrive them. What cannot be recorded is retried, and logged in full.
 */
export async function consumeDeadLetters(batch: MessageBatch, env: Env): Promise<void> {
  const log = deliveryLogOf(env);
  const messages = eventMessages(batch);
  try {
    const webhooks = settingsOf(env).webhooks;
    const delivered = await log.delivered(messages.map(({ body }) => body.event.id));
    const updates: DeliveryUpdate[] = messages.flatMap(({ body }) =>
      endpointsFor(webhooks, body)
        .filter((endpoint) => !delivered.get(body.event.id)?.has(endpoint.id))
        .map((endpoint) => ({
          eventId: body.event.id,
          endpoint: endpoint.id,
          status: "failed" as const,
          attempted: 0 as const,
          event: body.event,
        })),
    );
    await log.record(updates);
    for (const { message } of messages) message.ack();
  } catch (error) {
    for (const { message, body } of messages) {
      console.error(`events: FAILED DELIVERY NOT RECORDED: ${JSON.stringify(body.event)}`, String(error));
      message.retry({ delaySeconds: 60 });
    }
  }
}

/** The queue() handler: the events queue or its dead-letter queue. */
export function consumeQueue(batch: MessageBatch, env: Env): Promise<void> {
  return isDeadLetterQueue(batch.queue) ? consumeDeadLetters(batch, env) : consumeEvents(batch, env);
}

/** How long records of delivered events are kept: as long as the queue could retry a message. */
const DELIVERED_RECORD_MS = 14 * 24 * 60 * 60 * 1000;

/** The daily cron's share: send what the outbox holds, and drop old delivery records. */
export async function eventsMaintenance(env: Env): Promise<void> {
  const outbox = new Outbox(env.AUDIT);
  // Bounded: ten batches a day at most; the queue's own batches drain the rest.
  for (let step = 0; step < 10 && (await outbox.drain(env.EVENTS)) > 0; step++);
  await deliveryLogOf(env).prune(Date.now() - DELIVERED_RECORD_MS);
}
