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

-- The records waiting for the chain, counted as they come and go (in the transactions that
-- queue and batch them): with the chain disabled every record waits for ever, and counting
-- them at each status call would cost a row a file. One row.
CREATE TABLE chain_queue_waiting (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    count BIGINT NOT NULL,
    size BIGINT NOT NULL
);

INSERT INTO chain_queue_waiting (id, count, size)
    SELECT 1, COUNT(*), COALESCE(SUM(filesize), 0) FROM chain_queue WHERE state = 'waiting';
