import { RegistryError, unavailable } from "../oci/errors";
import { metered, type Meter } from "./meter";
import { withTimeout } from "./storage";

/** A D1 call that does not answer in this long is abandoned. */
const D1_TIMEOUT_MS = 10_000;

/**
 * One D1 call of `area` (the audit log, the robots' table, the pull records): counted in
 * the request's Server-Timing (`d1`; `meter`: the request's, when the caller has it, else
 * the one it runs in), never waited on forever, and failing as a retryable 503
 * (UNAVAILABLE) naming what could not be read or written, as a failed storage call does.
 */
export function d1Call<T>(
  area: { prefix: string; what: string },
  operation: string,
  work: () => Promise<T>,
  meter?: Meter,
): Promise<T> {
  const name = `${area.prefix}.${operation}`;
  return metered(
    "d1",
    name,
    () =>
      withTimeout(work(), name, D1_TIMEOUT_MS).catch((error: unknown) => {
        throw error instanceof RegistryError
          ? error
          : unavailable(`${area.what} could not be read or written (${operation})`, String(error));
      }),
    meter,
  );
}
