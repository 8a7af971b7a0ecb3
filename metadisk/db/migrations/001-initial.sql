-- The first schema. Shared SQL: it must run on SQLite and on PostgreSQL.

-- Access tokens and their credit, in bytes.
CREATE TABLE tokens (
    token TEXT PRIMARY KEY,
    balance BIGINT NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created BIGINT NOT NULL
);

CREATE TABLE promocodes (
    code TEXT PRIMARY KEY,
    bytes BIGINT NOT NULL CHECK (bytes > 0)
);

-- A promocode can be redeemed once per token.
CREATE TABLE redemptions (
    token TEXT NOT NULL REFERENCES tokens (token),
    code TEXT NOT NULL REFERENCES promocodes (code),
    redeemed BIGINT NOT NULL,
    PRIMARY KEY (token, code)
);

CREATE TABLE prices (
    amount BIGINT PRIMARY KEY,
    cost BIGINT NOT NULL
);

INSERT INTO prices (amount, cost) VALUES (10737418240, 100);
INSERT INTO prices (amount, cost) VALUES (107374182400, 500);
INSERT INTO prices (amount, cost) VALUES (1099511627776, 2500);

-- Credit taken from a token for a transfer in progress. Settled (or refunded)
-- when the transfer ends; refunded at start by the node that took it if it crashed.
CREATE TABLE reservations (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL REFERENCES tokens (token),
    amount BIGINT NOT NULL CHECK (amount >= 0),
    node_id TEXT NOT NULL,
    created BIGINT NOT NULL
);

-- What find returns: one row per file, and the hosts that hold it.
CREATE TABLE files (
    filehash TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    filesize BIGINT NOT NULL,
    datetime BIGINT NOT NULL,
    version TEXT NOT NULL DEFAULT '0.2'
);

CREATE TABLE uploads (
    filehash TEXT NOT NULL REFERENCES files (filehash),
    host_name TEXT NOT NULL,
    url TEXT NOT NULL,
    added DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (filehash, host_name)
);

-- Blobs still to be copied to hosts, by the node whose cache holds them.
CREATE TABLE cloud_queue (
    filehash TEXT PRIMARY KEY REFERENCES files (filehash),
    node_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt DOUBLE PRECISION NOT NULL,
    last_error TEXT
);

CREATE INDEX cloud_queue_due ON cloud_queue (node_id, next_attempt);

-- Bytes transferred, per direction ('incoming' | 'outgoing') and period ('total' | 'YYYY-MM').
CREATE TABLE meters (
    direction TEXT NOT NULL,
    period TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    PRIMARY KEY (direction, period)
);
