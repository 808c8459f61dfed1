/** @jsxImportSource hono/jsx */
import type { FC } from "hono/jsx";
import { recordRobotChange } from "../audit/audit";
import { listedRobot, listRobots, revokeRobot } from "../auth/robots";
import { RegistryError } from "../oci/errors";
import { isAdministrator } from "./deliveries";
import { Layout, type Chrome } from "./pages";
import type { Viewer } from "./session";

/**
 * Robot tokens for administrators (`/robots`; the API: /_admin/tokens, `npm run token`):
 * every robot with its access, creation, expiry and last use, each with a revoke button
 * (a form with the page's CSRF token). Creating one is the CLI's or the API's: its secret
 * is shown once, to whoever made it.
 */

type ListedRobot = ReturnType<typeof listedRobot>;
type RobotChangeClient = Parameters<typeof recordRobotChange>[3];

function administratorOnly(viewer: Viewer): void {
  if (!isAdministrator(viewer)) {
    throw new RegistryError(
      "DENIED",
      viewer.user === null ? "log in to see robot tokens" : "only administrators see robot tokens",
    );
  }
}

/** The robots, for an administrator; DENIED otherwise. */
export async function robotsFor(env: Env, viewer: Viewer): Promise<ListedRobot[]> {
  administratorOnly(viewer);
  return (await listRobots(env)).map(listedRobot);
}

/** Revokes a robot for an administrator (the form checked by the caller); DENIED otherwise. */
export async function revokeFor(env: Env, viewer: Viewer, name: string, client: RobotChangeClient): Promise<void> {
  administratorOnly(viewer);
  if (!(await revokeRobot(env, name))) {
    throw new RegistryError("UNSUPPORTED", "no robot token of this name", {}, {}, 404);
  }
  const by =
    viewer.user === null ? { kind: "anonymous" as const, name: "" } : { kind: "user" as const, name: viewer.user };
  recordRobotChange(env, "robot.revoke", { robot: name }, client, by);
}

function when(time: string | null): string {
  return time === null ? "—" : time.replace("T", " ").slice(0, 19);
}

export const RobotsPage: FC<{ chrome: Chrome; robots: ListedRobot[] }> = ({ chrome, robots }) => (
  <Layout chrome={chrome}>
    <h1>Robot tokens</h1>
    {robots.length === 0 ? (
      <p class="muted">None.</p>
    ) : (
      <table>
        <thead>
          <tr>
            <th>Name</th>
            <th>Access</th>
            <th class="optional">Created (UTC)</th>
            <th>Expires (UTC)</th>
            <th>Last used (UTC)</th>
            <th></th>
          </tr>
        </thead>
        <tbody>
          {robots.map((robot) => (
            <tr>
              <td>
                <code>{robot.name}</code>
              </td>
              <td>
                {robot.access.map((grant) => (
                  <code>{`${grant.repositories}:${grant.actions.join(",")} `}</code>
                ))}
              </td>
              <td class="optional">{when(robot.created)}</td>
              <td>{robot.expired ? `${when(robot.expires)} (expired)` : when(robot.expires)}</td>
              <td>{when(robot.lastUsed)}</td>
              <td>
                <form method="post" action="/robots/revoke">
                  <input type="hidden" name="csrf" value={chrome.csrf} />
                  <input type="hidden" name="name" value={robot.name} />
                  <input type="submit" class="danger" value="Revoke" />
                </form>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    )}
    <p class="muted">
      Create one with <code>npm run token -- create --url URL --name NAME --access 'team/**:pull,push'</code> (the admin
      token in <code>ADMIN_TOKEN</code>): its secret is shown once. Revoking ends it at once.
    </p>
  </Layout>
);
