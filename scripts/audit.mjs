#!/usr/bin/env node
// The audit log (`npm run audit`): who changed what and every login, newest first, from the
// registry's GET /_admin/audit (src/routes/admin-audit.ts), following its cursors.
//
//   npm run audit                                    the local state (.wrangler/state)
//   npm run audit -- --state DIR                     another local state directory
//   npm run audit -- --url https://registry.example  a running registry; the ADMIN_TOKEN
//                                                    environment variable holds its admin token
//   ... --repository NAME                            one repository's rows
//   ... --actor NAME                                 one user's (or `collector`, `mirror`)
//   ... --action ACTION                              one action (`tag.delete`) or a family (`login.*`)
//   ... --since TIME --until TIME                    ISO times (2026-05-01, 2026-05-01T12:00Z) or ms
//   ... --limit N                                    at most N rows (default 100)
//   ... --json                                       one JSON object per line instead of a table
//                                                    (`npm run -s audit -- --json`: without npm's banner)
//
// Local state is read by starting the Worker on it (with a one-off admin token); do not
// point --state at the state of a registry that is running: use --url for that.
// Exit status: 0 when the rows were printed, 2 when they could not be read.
import { adminConnection } from "./lib/admin-connection.mjs";

const args = process.argv.slice(2);
function option(name) {
  const index = args.indexOf(name);
  return index >= 0 ? args[index + 1] : undefined;
}
function fail(message) {
  console.error(`audit: ${message}`);
  process.exit(2);
}

/** Rows one request asks for: the endpoint's own cap. */
const PAGE_MAX = 1000;

const json = args.includes("--json");
const limitText = option("--limit") ?? "100";
if (!/^[1-9]\d*$/.test(limitText)) fail("--limit takes a whole number from 1");
const limit = Number(limitText);
const filter = new URLSearchParams();
for (const name of ["repository", "actor", "action", "since", "until"]) {
  const value = option(`--${name}`);
  if (value !== undefined) filter.set(name, value);
}

function when(time) {
  return new Date(time).toISOString().replace("T", " ").slice(0, 19);
}

/** What a row names: its tags, digest and what else it says, on one line. */
function what(event) {
  const parts = [];
  if (event.tags?.length) parts.push(event.tags.join(","));
  if (event.digest) parts.push(event.digest.slice(0, 19));
  for (const [key, value] of Object.entries(event.detail ?? {})) {
    // A digest (a moved tag's previous one, a referrer's subject) as short as the row's own.
    parts.push(`${key}=${/^[a-z0-9]+:[0-9a-f]{32,}$/.test(String(value)) ? String(value).slice(0, 19) : value}`);
  }
  return parts.join(" ");
}

const COLUMNS = [
  ["TIME (UTC)", (event) => when(event.time)],
  ["ACTION", (event) => event.action],
  ["REPOSITORY", (event) => event.repository ?? ""],
  ["ACTOR", (event) => (event.actor.name === "" ? event.actor.kind : event.actor.name)],
  ["ADDRESS", (event) => event.address ?? ""],
  ["WHAT", what],
  ["USER AGENT", (event) => event.userAgent ?? ""],
];

function printTable(events) {
  const rows = [COLUMNS.map(([title]) => title), ...events.map((event) => COLUMNS.map(([, cell]) => cell(event)))];
  const widths = COLUMNS.map((_, column) => Math.min(60, Math.max(...rows.map((row) => row[column].length))));
  for (const row of rows) {
    console.log(
      row
        .map((cell, column) =>
          column === row.length - 1 ? cell : cell.slice(0, widths[column]).padEnd(widths[column]),
        )
        .join("  ")
        .trimEnd(),
    );
  }
}

const { call, stop } = await adminConnection({ url: option("--url"), state: option("--state"), fail });
// The table needs every row for its widths; JSON lines are printed as the pages arrive.
const events = [];
let count = 0;
try {
  let cursor;
  do {
    const query = new URLSearchParams(filter);
    query.set("limit", String(Math.min(PAGE_MAX, limit - count)));
    if (cursor) query.set("cursor", cursor);
    const answer = await call("GET", `/_admin/audit?${query}`);
    if (answer.status !== 200) fail(`the registry answered ${answer.status}: ${answer.body}`);
    const page = JSON.parse(answer.body);
    for (const event of page.events) {
      if (json) console.log(JSON.stringify(event));
      else events.push(event);
    }
    count += page.events.length;
    cursor = page.next;
  } while (cursor && count < limit);
} finally {
  await stop();
}
if (!json) {
  if (events.length === 0) console.log("no rows");
  else printTable(events);
}
