-- Robot tokens (src/auth/robots.ts, docs/operations.md "Robot tokens"): credentials for
-- machines, created and revoked at run time through /_admin/tokens (`npm run token`). A
-- robot logs in with its name and its secret; only the secret's SHA-256 is kept. A revoked
-- robot's row is deleted.
CREATE TABLE robots (
  name TEXT PRIMARY KEY,
  -- SHA-256 of the secret (`ert_…`, 32 random bytes), in hex.
  secret_hash TEXT NOT NULL,
  -- JSON: [{ "repositories": "team/**", "actions": ["pull", "push"] }, …]
  access TEXT NOT NULL,
  -- ms since the epoch; expires NULL: never.
  created INTEGER NOT NULL,
  expires INTEGER,
  -- Written at most about once a minute per robot.
  last_used INTEGER
);
