-- Webhook deliveries (src/events/deliveries.ts): one row per (event, endpoint) whose
-- delivery did not succeed at the first try: pending (retrying), delivered (never sent
-- again), failed (dead-lettered; the event kept for a redrive), redriven (re-queued).
CREATE TABLE deliveries (
  event_id TEXT NOT NULL,
  endpoint TEXT NOT NULL,
  status TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  last_status INTEGER,
  last_error TEXT,
  updated INTEGER NOT NULL,
  event TEXT,
  PRIMARY KEY (event_id, endpoint)
);
CREATE INDEX deliveries_by_status ON deliveries (status, updated);

-- Events whose queue send failed after their change was committed (src/events/outbox.ts):
-- sent later by the queue consumer or the daily cron, then removed.
CREATE TABLE outbox (
  id TEXT PRIMARY KEY,
  time INTEGER NOT NULL,
  message TEXT NOT NULL
);
CREATE INDEX outbox_by_time ON outbox (time);
