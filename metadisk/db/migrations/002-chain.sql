-- The blockchain (docs/protocol.md, section 5). Shared SQL: it must run on SQLite and on PostgreSQL.

-- Files whose record is to be published, one row per file, never deleted: the state says
-- how far it got, so a record is published at most once, across restarts and across nodes
-- sharing the database.
--   waiting    due once its blob left cloud_queue (the hosts hold it) or after [chain] publish_wait
--   batched    claimed by batch_id, on its way to the chain
--   published  on the chain (chain_records has it)
--   on-chain   another node had published it first
CREATE TABLE chain_queue (
    filehash TEXT PRIMARY KEY REFERENCES files (filehash),
    enqueued DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL DEFAULT 'waiting',
    batch_id TEXT
);

CREATE INDEX chain_queue_state ON chain_queue (state, enqueued);

-- Files recorded before this migration wait for the chain like new ones.
INSERT INTO chain_queue (filehash, enqueued, state) SELECT filehash, datetime, 'waiting' FROM files;

-- A batch: the JSON array of records and its regions, cut once and kept, published by one
-- node (its node_id) entry after entry.
CREATE TABLE chain_batches (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    regions TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    first_txid TEXT,
    published DOUBLE PRECISION
);

CREATE INDEX chain_batches_open ON chain_batches (node_id, published, next_attempt);

-- One transaction per region, written before it is sent ('sending'): after a crash or a
-- send without an answer, the chain adapter finds out whether it went out ('sent').
CREATE TABLE chain_entries (
    batch_id TEXT NOT NULL REFERENCES chain_batches (id),
    idx INTEGER NOT NULL,
    entry TEXT NOT NULL,
    tag TEXT NOT NULL,
    txid TEXT,
    raw TEXT,
    state TEXT NOT NULL,
    started DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (batch_id, idx)
);

-- The reader's position: the hashes of the last blocks read, checked for reorganisations.
CREATE TABLE chain_blocks (
    height BIGINT PRIMARY KEY,
    hash TEXT NOT NULL
);

-- Entries read from the chain whose batch is not complete yet. batch_id is the txid of the
-- batch's first entry, region the base64 of the decompressed region.
CREATE TABLE chain_fragments (
    txid TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    prev_txid TEXT,
    first_txid TEXT,
    total_length BIGINT,
    region TEXT NOT NULL,
    height BIGINT NOT NULL,
    position INTEGER NOT NULL
);

CREATE INDEX chain_fragments_batch ON chain_fragments (batch_id);

CREATE INDEX chain_fragments_height ON chain_fragments (height);

-- Records on the chain, published here or read from it: find returns them as they are.
-- txid is the first txid of the batch; height where the reader saw it (NULL: published
-- here, not read back yet).
CREATE TABLE chain_records (
    filehash TEXT PRIMARY KEY REFERENCES files (filehash),
    record TEXT NOT NULL,
    txid TEXT NOT NULL,
    height BIGINT
);
