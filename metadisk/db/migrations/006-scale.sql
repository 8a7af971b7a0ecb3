-- Scale (issue 19): what a status call or a round reads touches the queues' rows, found by an
-- index, never a scan of every file or copy. Shared SQL: it must run on SQLite and PostgreSQL.

-- Each queued blob's size, so the queues' totals (/api/status, /metrics) are summed over their
-- own rows without a join to files that a planner may turn into a scan of the whole catalog.
ALTER TABLE cloud_queue ADD COLUMN filesize BIGINT NOT NULL DEFAULT 0;

UPDATE cloud_queue SET filesize = (SELECT f.filesize FROM files f WHERE f.filehash = cloud_queue.filehash);

ALTER TABLE chain_queue ADD COLUMN filesize BIGINT NOT NULL DEFAULT 0;

UPDATE chain_queue SET filesize = (SELECT f.filesize FROM files f WHERE f.filehash = chain_queue.filehash);

-- A batch's records are marked published by its id (every publisher round).
CREATE INDEX chain_queue_batch ON chain_queue (batch_id);

-- A reorganisation unconfirms this node's records above a height.
CREATE INDEX chain_records_height ON chain_records (height);
