/** @jsxImportSource hono/jsx */
import type { FC } from "hono/jsx";
import { DELIVERY_STATUSES, deliveryLogOf, type DeliveryRecord, type DeliveryStatus } from "../events/deliveries";
import { RegistryError } from "../oci/errors";
import { namePattern } from "../settings/values";
import { Layout, repositoryPath, type Chrome } from "./pages";
import type { Viewer } from "./session";

/**
 * Webhook deliveries for administrators (`/deliveries`; the API: GET /_admin/deliveries):
 * the failed ones by default, which `POST /_admin/deliveries/redrive` sends again. An
 * administrator of the pages is a logged-in user whom a rule allows `delete` on `**`
 * (every repository), or anyone on a registry without authentication (`npm start` open).
 */

const EVERY_REPOSITORY = namePattern("**").source;

export function isAdministrator(viewer: Viewer): boolean {
  const { policy, user } = viewer;
  if (policy.mode === "open") return true;
  if (policy.mode !== "enforced" || user === null) return false;
  return policy.rules.some(
    (rule) =>
      (rule.users.includes("*") || rule.users.includes(user)) &&
      rule.actions.includes("delete") &&
      rule.repositories.some((pattern) => pattern.source === EVERY_REPOSITORY),
  );
}

/** Rows shown on the page. */
const SHOWN = 100;

/** The deliveries of a status (`?status=`, failed by default), for an administrator; DENIED otherwise. */
export async function deliveriesOf(
  env: Env,
  viewer: Viewer,
  requested: string | undefined,
): Promise<{ status: DeliveryStatus; records: DeliveryRecord[] }> {
  if (!isAdministrator(viewer)) {
    throw new RegistryError(
      "DENIED",
      viewer.user === null ? "log in to see deliveries" : "only administrators see deliveries",
    );
  }
  const status = DELIVERY_STATUSES.find((known) => known === requested) ?? "failed";
  return { status, records: await deliveryLogOf(env).list(status, { limit: SHOWN }) };
}

function describe(record: DeliveryRecord): string {
  const event = record.event;
  if (!event) return record.eventId;
  const what = event.tags?.length ? event.tags.join(", ") : (event.digest ?? "");
  return `${event.action} ${what}`.trim();
}

export const DeliveriesPage: FC<{ chrome: Chrome; status: DeliveryStatus; records: DeliveryRecord[] }> = ({
  chrome,
  status,
  records,
}) => (
  <Layout chrome={chrome}>
    <h1>Webhook deliveries: {status}</h1>
    <nav class="pages">
      {DELIVERY_STATUSES.map((known) =>
        known === status ? <strong>{known}</strong> : <a href={`/deliveries?status=${known}`}>{known}</a>,
      )}
    </nav>
    {records.length === 0 ? (
      <p class="muted">None.</p>
    ) : (
      <table>
        <thead>
          <tr>
            <th>Endpoint</th>
            <th>Event</th>
            <th>Repository</th>
            <th class="num">Attempts</th>
            <th class="num">Last status</th>
            <th class="optional">Updated</th>
          </tr>
        </thead>
        <tbody>
          {records.map((record) => (
            <tr>
              <td>
                <code>{record.endpoint}</code>
              </td>
              <td>
                <code title={record.eventId}>{describe(record)}</code>
              </td>
              <td>
                {record.event?.repository ? (
                  <a href={repositoryPath(record.event.repository)}>{record.event.repository}</a>
                ) : (
                  "—"
                )}
              </td>
              <td class="num">{record.attempts}</td>
              <td class="num" title={record.lastError ?? ""}>
                {record.lastStatus === null ? "—" : record.lastStatus === 0 ? "no answer" : record.lastStatus}
              </td>
              <td class="optional">{record.updated}</td>
            </tr>
          ))}
        </tbody>
      </table>
    )}
    {status === "failed" && records.length > 0 ? (
      <p class="muted">
        Send them again with <code>POST /_admin/deliveries/redrive</code> (the admin token): each goes only to the
        endpoints that never had it.
      </p>
    ) : null}
  </Layout>
);
