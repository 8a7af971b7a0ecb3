-- Resumable uploads (the tus protocol, docs/protocol.md section 2.10): one row per upload
-- created on a node, until it has expired for as long again. Shared SQL: SQLite and PostgreSQL.
CREATE TABLE resumable_uploads (
    id TEXT PRIMARY KEY,         -- the last part of the upload URL: its capability, never logged
    node_id TEXT NOT NULL,       -- the node whose data directory holds the partial file
    token TEXT,                  -- who pays (NULL with accounts disabled)
    reservation_id TEXT,         -- the credit held for it (reservations.id) until it ends
    reserved BIGINT NOT NULL,    -- how much that reservation holds
    length BIGINT NOT NULL,      -- Upload-Length
    received BIGINT NOT NULL,    -- bytes durable on disk: the offset HEAD answers
    filename TEXT NOT NULL,
    address TEXT NOT NULL,       -- the address of its creator (the unpaid budget, accounts disabled)
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    state TEXT NOT NULL,         -- receiving | complete | expired
    filehash TEXT,               -- complete: what GET answers until the upload expires
    file_key TEXT
);

CREATE INDEX resumable_uploads_node ON resumable_uploads (node_id, state);

CREATE INDEX resumable_uploads_token ON resumable_uploads (token, state);
