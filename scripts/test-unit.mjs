#!/usr/bin/env node
// `npm run test:unit`: the unit and integration tests (`vitest run`, inside workerd), with
// any arguments passed on (`npm run test:unit -- test/unit/auth.test.ts`).
//
// The test runner itself has died once in a dozen CI runs with a segmentation fault (node,
// exit 139) after every test had passed, the same teardown crash others report for
// vitest-pool-workers (cloudflare/workerd#6763). When vitest is killed by SIGSEGV or SIGBUS,
// and only then, the whole suite runs once more and that run decides; the crash is
// reported on stderr either way. A failing test is never retried (vitest exits 1), nor an
// interrupted run, and a crash that comes back fails the suite.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const VITEST = join(ROOT, "node_modules", ".bin", "vitest");
const CRASHES = new Set(["SIGSEGV", "SIGBUS"]);
/** Killed by one of CRASHES: the signal itself, or a shell's 128 + its number in between. */
const crashed = (run) => (run.signal !== null && CRASHES.has(run.signal)) || run.status === 139 || run.status === 135;

function vitest() {
  const run = spawnSync(VITEST, ["run", ...process.argv.slice(2)], { cwd: ROOT, stdio: "inherit" });
  if (run.error) throw run.error;
  return run;
}

let run = vitest();
const how = (run) => run.signal ?? `exit ${run.status}`;
if (crashed(run)) {
  console.error(`\ntest-unit: the test runner crashed (${how(run)}), not a test; running the suite once more\n`);
  run = vitest();
  if (crashed(run)) console.error(`\ntest-unit: the test runner crashed again (${how(run)})`);
}
process.exit(run.signal !== null ? 1 : (run.status ?? 1));
