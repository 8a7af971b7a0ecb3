-- v0.3 announcements read from the chain (docs/protocol.md, section 5.8): each names a
-- manifest of records to fetch from its URLs, in a lane of its own. Shared SQL: it must run
-- on SQLite and PostgreSQL.
--   pending   not fetched yet: tried again at next_attempt
--   fetched   its records are claims (chain_claims.txid = id)
--   failed    the manifest is not the one announced, or not a manifest: never fetched again
CREATE TABLE chain_announcements (
    id TEXT PRIMARY KEY,         -- <batch_id>/<its place among the batch's announcements>
    batch_id TEXT NOT NULL,      -- txid of the first entry of the batch that carried it
    manifest TEXT NOT NULL,      -- SHA-256 of the manifest's bytes
    size BIGINT NOT NULL,        -- bytes of the manifest, as announced
    records INTEGER NOT NULL,    -- records in it, as announced
    uploads TEXT NOT NULL,       -- JSON [[host_name, url], ...]: the URLs not found wrong yet
    height BIGINT NOT NULL,      -- where the batch was complete: block height…
    position INTEGER NOT NULL,   -- …and the place in the block of its last entry
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_error TEXT,
    kept INTEGER NOT NULL DEFAULT 0  -- records of the manifest kept as claims
);

CREATE INDEX chain_announcements_due ON chain_announcements (state, next_attempt);

CREATE INDEX chain_announcements_height ON chain_announcements (height);
