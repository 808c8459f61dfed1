// D1 migrations (migrations/*.sql, wrangler's layout) applied to the local database when
// the Worker starts (npm start, the e2e suite, the benchmarks), as `wrangler d1 migrations
// apply` does for a deployed one (`npm run deploy`): in file order, each once, recorded in
// wrangler's own table, d1_migrations, so the two tools agree on what was applied.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

/** The statements of one migration file: split at semicolons that end a line (our files keep to that). */
function statements(sql) {
  return sql
    .split(/;\s*$/m)
    .map((statement) =>
      statement
        .split("\n")
        .filter((line) => !line.trim().startsWith("--"))
        .join("\n")
        .trim(),
    )
    .filter((statement) => statement !== "");
}

/** Applies what `dir` holds that `db` (a Miniflare D1 binding) has not applied yet; returns their names. */
export async function applyMigrations(db, dir = "migrations") {
  if (!existsSync(dir)) return [];
  await db.exec(
    "CREATE TABLE IF NOT EXISTS d1_migrations(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
  );
  const applied = new Set((await db.prepare("SELECT name FROM d1_migrations").all()).results.map((row) => row.name));
  const names = readdirSync(dir)
    .filter((name) => name.endsWith(".sql"))
    .sort();
  const done = [];
  for (const name of names) {
    if (applied.has(name)) continue;
    const batch = statements(readFileSync(join(dir, name), "utf8")).map((statement) => db.prepare(statement));
    batch.push(db.prepare("INSERT INTO d1_migrations (name) VALUES (?)").bind(name));
    await db.batch(batch);
    done.push(name);
  }
  return done;
}
