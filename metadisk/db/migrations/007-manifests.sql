-- v0.3 manifests (docs/protocol.md, sections 5.8 and 5.9). Shared SQL: SQLite and PostgreSQL.

-- A manifest is a blob of this node's like a file's (files, uploads, cloud_queue: the same
-- copies, replication and repair), but no user's file: find, downloads and the status's
-- counts leave out the rows of kind 'manifest', and it never joins chain_queue.
ALTER TABLE files ADD COLUMN kind TEXT NOT NULL DEFAULT 'file';

-- The manifest of a batch (chain_batches): the records it holds, claimed with the batch in
-- one transaction. The batch's payload and regions (its announcement, which names the
-- manifest's URLs) stay empty until the hosts hold the manifest; then they are written
-- once, before any entry is sent.
CREATE TABLE chain_manifests (
    batch_id TEXT PRIMARY KEY REFERENCES chain_batches (id),
    manifest TEXT NOT NULL REFERENCES files (filehash),  -- SHA-256 of its bytes
    records INTEGER NOT NULL,
    size BIGINT NOT NULL,     -- bytes of the manifest (bzip2)
    payload TEXT NOT NULL     -- its JSON array of records, as published (batch_text)
);
