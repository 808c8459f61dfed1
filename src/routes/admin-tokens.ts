import { Hono } from "hono";
import { recordRobotChange } from "../audit/audit";
import { loadPolicy } from "../auth/authorize";
import { clientAddressOf } from "../auth/client-address";
import { createRobot, listedRobot, listRobots, revokeRobot } from "../auth/robots";
import { RegistryError } from "../oci/errors";
import { requireAdmin } from "./admin";
import { readLimited } from "./http";
import type { AppContext, AppEnv } from "./http";

/**
 * Robot tokens (src/auth/robots.ts, `npm run token`), behind the admin token like the
 * other /_admin endpoints:
 *
 *   POST   /_admin/tokens          {"name", "access": ["team/**:pull,push"], "expiresIn"?: seconds}
 *                                  → 201 {"name", "secret", …}: the only time the secret is shown
 *   GET    /_admin/tokens          → {"tokens": [{name, access, created, expires, lastUsed, expired}]}
 *   DELETE /_admin/tokens/NAME     → 204; the robot's logins and tokens are refused from now on
 */
export const adminTokenRoutes = new Hono<AppEnv>();

const MAX_BODY_BYTES = 16 * 1024;

/** Who asked, for the audit log's row of the change (the admin token names nobody). */
function client(c: AppContext) {
  return {
    address: clientAddressOf(c.req.raw, c.env),
    userAgent: c.req.header("User-Agent"),
    requestId: c.req.header("CF-Ray"),
  };
}

adminTokenRoutes.post("/tokens", async (c) => {
  requireAdmin(c);
  const bytes = await readLimited(
    c,
    MAX_BODY_BYTES,
    () => new RegistryError("SIZE_INVALID", `the request exceeds ${MAX_BODY_BYTES} bytes`, undefined, {}, 413),
  );
  let body: { name?: unknown; access?: unknown; expiresIn?: unknown };
  try {
    body = JSON.parse(new TextDecoder().decode(bytes)) as typeof body;
  } catch {
    throw new RegistryError("UNSUPPORTED", "the request must be a JSON object", undefined, {}, 400);
  }
  const { robot, secret } = await createRobot(c.env, loadPolicy(c.env), {
    name: body.name as string,
    access: body.access as string[],
    expiresIn: body.expiresIn as number | undefined,
  });
  const listed = listedRobot(robot);
  recordRobotChange(
    c.env,
    "robot.create",
    {
      robot: robot.name,
      access: listed.access.map((grant) => `${grant.repositories}:${grant.actions.join(",")}`).join(" "),
      ...(listed.expires ? { expires: listed.expires } : {}),
    },
    client(c),
  );
  c.header("Cache-Control", "no-store");
  return c.json({ ...listed, secret }, 201);
});

adminTokenRoutes.get("/tokens", async (c) => {
  requireAdmin(c);
  c.header("Cache-Control", "no-store");
  return c.json({ tokens: (await listRobots(c.env)).map(listedRobot) });
});

adminTokenRoutes.delete("/tokens/:name", async (c) => {
  requireAdmin(c);
  const name = c.req.param("name");
  if (!(await revokeRobot(c.env, name))) {
    throw new RegistryError("UNSUPPORTED", "no robot token of this name", { name }, {}, 404);
  }
  recordRobotChange(c.env, "robot.revoke", { robot: name }, client(c));
  return c.body(null, 204);
});
