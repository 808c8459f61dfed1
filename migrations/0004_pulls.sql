-- Pull records (src/registry/pull-records.ts, docs/architecture.md "Pull records"): when
-- each manifest of a repository was last pulled, and how many pulls were counted. Each
-- isolate writes a manifest's row at most once per PULL_RECORD_INTERVAL, adding the pulls
-- it counted meanwhile; a deleted manifest's row is deleted. Read by a repository's web
-- page and by garbage collection (RETENTION `pulledWithin`), both by primary key order.
CREATE TABLE pulls (
  repository TEXT NOT NULL,
  digest TEXT NOT NULL,
  -- ms since the epoch: the latest pull a write carried.
  last_pulled INTEGER NOT NULL,
  pulls INTEGER NOT NULL,
  PRIMARY KEY (repository, digest)
) WITHOUT ROWID;
