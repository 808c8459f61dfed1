import type { WebhookEndpoint } from "../settings/webhooks";
import type { RegistryEvent } from "./event";
import { payloadOf } from "./formats";
import { signedHeaders } from "./signature";

/** What one delivery attempt came to. */
export interface DeliveryOutcome {
  ok: boolean;
  /** The endpoint's HTTP status; 0: no answer (refused, timed out), or nothing to send. */
  status: number;
  error?: string;
}

const USER_AGENT = "edge-registry-webhooks";

/**
 * Posts one event to one endpoint, in its format, signed (Standard Webhooks; the timestamp
 * is this attempt's). A 2xx is a delivery; anything else (a redirect included: it is not
 * followed) or no answer within `timeoutMs` is a failure to retry.
 */
export async function deliver(
  endpoint: WebhookEndpoint,
  event: RegistryEvent,
  timeoutMs: number,
  now = Date.now(),
): Promise<DeliveryOutcome> {
  const payload = payloadOf(endpoint.format, event);
  // A change the format has no event for (distribution's, for a tag move): nothing to send.
  if (payload === null) return { ok: true, status: 0 };
  const headers = {
    ...endpoint.headers,
    "Content-Type": payload.contentType,
    "User-Agent": USER_AGENT,
    ...(await signedHeaders(endpoint.key, event.id, Math.floor(now / 1000), payload.body)),
  };
  try {
    const response = await fetch(endpoint.url, {
      method: "POST",
      headers,
      body: payload.body,
      redirect: "manual",
      signal: AbortSignal.timeout(timeoutMs),
    });
    // The answer's body says nothing we use; let the connection go.
    await response.body?.cancel();
    if (response.status >= 200 && response.status < 300) return { ok: true, status: response.status };
    return { ok: false, status: response.status, error: `answered ${response.status}` };
  } catch (error) {
    return { ok: false, status: 0, error: String(error).slice(0, 300) };
  }
}
