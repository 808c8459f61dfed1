import { applyD1Migrations, env } from "cloudflare:test";

// Every test file starts with the D1 tables the Worker expects (migrations/), applied as
// `npm run deploy` applies them. Storage is isolated per test file, so this runs per file.
await applyD1Migrations(env.AUDIT, env.TEST_MIGRATIONS);
