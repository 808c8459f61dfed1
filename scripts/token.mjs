#!/usr/bin/env node
// Robot tokens (`npm run token`): credentials for machines, created and revoked at run time
// through the registry's /_admin/tokens (src/routes/admin-tokens.ts, src/auth/robots.ts).
//
//   npm run token -- create --name ci-deploy --access 'team/**:pull,push' [--access …]
//                           [--expires-in 90d] [--json]
//        prints the secret, once: the robot logs in with its name as user name and the
//        secret as password (`--json`: {"name", "secret", "access", "created", "expires"})
//   npm run token -- list [--json]      name, access, created, expires and last used
//   npm run token -- revoke NAME        refused from the next request on, everywhere
//
//   ... --url https://registry.example  a running registry; the ADMIN_TOKEN environment
//                                       variable holds its admin token (as for npm run gc)
//   ... --state DIR                     the local state (default .wrangler/state), when no --url
//
// --expires-in takes a number and a unit: s, m, h, d (90d, 12h, 2s). Without it, the robot
// does not expire. Exit status: 0 done, 1 refused by the registry, 2 could not ask it.
import { adminConnection } from "./lib/admin-connection.mjs";

const args = process.argv.slice(2);
const command = args[0];
function option(name) {
  const index = args.indexOf(name);
  return index >= 0 ? args[index + 1] : undefined;
}
function options(name) {
  return args.flatMap((arg, index) => (arg === name && args[index + 1] !== undefined ? [args[index + 1]] : []));
}
function fail(message, status = 2) {
  console.error(`token: ${message}`);
  process.exit(status);
}
const json = args.includes("--json");

const UNITS = { s: 1, m: 60, h: 3600, d: 86400 };
function seconds(text) {
  const match = /^(\d+)([smhd])$/.exec(text ?? "");
  if (!match) fail(`--expires-in takes a number and a unit (s, m, h, d), as 90d: not ${text}`);
  return Number(match[1]) * UNITS[match[2]];
}

let request;
if (command === "create") {
  const name = option("--name");
  const access = options("--access");
  if (!name) fail("create needs --name NAME");
  if (access.length === 0) fail("create needs --access 'PATTERN:ACTIONS' (as team/**:pull,push)");
  const expiresIn = option("--expires-in");
  request = ["POST", "/_admin/tokens", { name, access, ...(expiresIn ? { expiresIn: seconds(expiresIn) } : {}) }];
} else if (command === "list") {
  request = ["GET", "/_admin/tokens"];
} else if (command === "revoke") {
  const name = args[1] && !args[1].startsWith("--") ? args[1] : option("--name");
  if (!name) fail("revoke needs the robot's NAME");
  request = ["DELETE", `/_admin/tokens/${encodeURIComponent(name)}`];
} else {
  fail("usage: npm run token -- create|list|revoke … (see scripts/token.mjs)");
}

const { call, stop } = await adminConnection({ url: option("--url"), state: option("--state"), fail });
let answer;
try {
  answer = await call(...request);
} finally {
  await stop();
}
if (answer.status >= 300) {
  let message = answer.body;
  try {
    message = JSON.parse(answer.body).errors?.[0]?.message ?? message;
  } catch {
    // not JSON: the body as it is
  }
  fail(`the registry answered ${answer.status}: ${message}`, 1);
}

function when(time) {
  return time === null ? "-" : time.replace("T", " ").slice(0, 19);
}
function accessText(access) {
  return access.map((grant) => `${grant.repositories}:${grant.actions.join(",")}`).join(" ");
}

if (command === "create") {
  const robot = JSON.parse(answer.body);
  if (json) console.log(JSON.stringify(robot));
  else {
    console.log(`robot ${robot.name} created; its secret (shown only now):`);
    console.log(robot.secret);
    console.log(`log in with user name ${robot.name} and this secret as the password`);
  }
} else if (command === "list") {
  const { tokens } = JSON.parse(answer.body);
  if (json) {
    for (const robot of tokens) console.log(JSON.stringify(robot));
  } else if (tokens.length === 0) {
    console.log("no robot tokens");
  } else {
    const rows = [
      ["NAME", "ACCESS", "CREATED (UTC)", "EXPIRES (UTC)", "LAST USED (UTC)"],
      ...tokens.map((robot) => [
        robot.name,
        accessText(robot.access),
        when(robot.created),
        robot.expired ? `${when(robot.expires)} (expired)` : when(robot.expires),
        when(robot.lastUsed),
      ]),
    ];
    const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
    for (const row of rows)
      console.log(
        row
          .map((cell, column) => cell.padEnd(widths[column]))
          .join("  ")
          .trimEnd(),
      );
  }
} else {
  console.log(`robot ${decodeURIComponent(request[1].split("/").pop())} revoked`);
}
