-- The audit log (src/events): every change a repository went through and every login,
-- newest first by time; kept AUDIT_RETENTION_DAYS and pruned by the daily cron.
CREATE TABLE audit (
  id TEXT PRIMARY KEY,
  time INTEGER NOT NULL,
  action TEXT NOT NULL,
  repository TEXT,
  digest TEXT,
  tag TEXT,
  actor_kind TEXT NOT NULL,
  actor TEXT NOT NULL,
  address TEXT,
  user_agent TEXT,
  request_id TEXT,
  detail TEXT
);
CREATE INDEX audit_by_time ON audit (time DESC, id DESC);
CREATE INDEX audit_by_repository ON audit (repository, time DESC);
CREATE INDEX audit_by_actor ON audit (actor, time DESC);
