-- Records read from the chain are claims (docs/protocol.md, "Trust"): strangers' words,
-- kept apart from this node's own files. Shared SQL: it must run on SQLite and PostgreSQL.
--   files, uploads   only what this node (or a node sharing its database) stored itself
--   chain_records    only this node's own records, as published
--   chain_claims     every well-formed record read from the chain, with where it was read

CREATE TABLE chain_claims (
    txid TEXT NOT NULL,          -- txid of the first entry of the batch that carried it
    idx INTEGER NOT NULL,        -- its place in that batch
    filehash TEXT NOT NULL,
    height BIGINT NOT NULL,      -- where the batch was complete: block height…
    position INTEGER NOT NULL,   -- …and the place in the block of its last entry
    filesize BIGINT NOT NULL,
    record TEXT NOT NULL,        -- what find answers for it
    discarded INTEGER NOT NULL DEFAULT 0,  -- 1: a verified blob of another size disproved it
    PRIMARY KEY (txid, idx)
);

CREATE INDEX chain_claims_order ON chain_claims (filehash, discarded, height, position, idx);

CREATE INDEX chain_claims_height ON chain_claims (height);

-- Files the reader took into files/uploads (a file never uploaded here has no chain_queue
-- row) become claims, and leave this node's tables: their hosts were never ours.
INSERT INTO chain_claims (txid, idx, filehash, height, position, filesize, record)
    SELECT r.txid, ROW_NUMBER() OVER (PARTITION BY r.txid ORDER BY r.filehash) - 1,
           r.filehash, COALESCE(r.height, 0), 0, f.filesize, r.record
    FROM chain_records r JOIN files f ON f.filehash = r.filehash
    WHERE NOT EXISTS (SELECT 1 FROM chain_queue q WHERE q.filehash = f.filehash);

DELETE FROM cloud_queue
    WHERE NOT EXISTS (SELECT 1 FROM chain_queue q WHERE q.filehash = cloud_queue.filehash);

DELETE FROM uploads
    WHERE NOT EXISTS (SELECT 1 FROM chain_queue q WHERE q.filehash = uploads.filehash);

DELETE FROM chain_records
    WHERE NOT EXISTS (SELECT 1 FROM chain_queue q WHERE q.filehash = chain_records.filehash);

DELETE FROM files
    WHERE NOT EXISTS (SELECT 1 FROM chain_queue q WHERE q.filehash = files.filehash);

-- A file of ours that another node's record named first was marked on-chain and never
-- published: its record is ours to publish after all, and the stranger's is not ours.
DELETE FROM chain_records
    WHERE txid NOT IN (SELECT first_txid FROM chain_batches WHERE first_txid IS NOT NULL);

UPDATE chain_queue SET state = 'waiting' WHERE state = 'on-chain';

-- A local directory's copies had their file:// path as URL: of no use to another node, and
-- this node's filesystem layout on a public chain. A local host now gives its public URL.
UPDATE uploads SET url = '' WHERE url LIKE 'file:%';
