-- The audit log (src/audit, docs/architecture.md "Audit log"): one row per committed change
-- a repository went through and per login, read newest first by (time, seq); kept
-- AUDIT_RETENTION_DAYS and pruned by the daily cron. Each index costs D1 a written row per
-- row inserted, so there are only those the queries need: by time (everything, the
-- prune), by repository (the repository page, ?repository=) and by actor (?actor=).
CREATE TABLE audit (
  -- Insertion order (the rowid): breaks ties of `time` within one millisecond, so the
  -- changes of one request read back in the order they were made.
  seq INTEGER PRIMARY KEY,
  -- The event's id (src/events/event.ts), the same a webhook of the change carries.
  id TEXT NOT NULL,
  -- When the change was committed or the login checked (ms since the epoch).
  time INTEGER NOT NULL,
  -- `manifest.put`, `tag.delete`, …, `login.success`, `login.failure`.
  action TEXT NOT NULL,
  repository TEXT,
  digest TEXT,
  media_type TEXT,
  size INTEGER,
  -- JSON: the tags a change names (a push's, a deleted manifest's, a moved or deleted tag).
  tags TEXT,
  -- JSON: what else the change says (a mount's `from`, a moved tag's `previous`, a login's `via`).
  detail TEXT,
  -- `user`, `anonymous`, `mirror`, `collector`, `system`, and the user's or component's name.
  actor_kind TEXT NOT NULL,
  actor TEXT NOT NULL,
  address TEXT,
  user_agent TEXT,
  request_id TEXT
);
CREATE INDEX audit_by_time ON audit (time, seq);
CREATE INDEX audit_by_repository ON audit (repository, time, seq);
CREATE INDEX audit_by_actor ON audit (actor, time, seq);
