-- Scale (issue 19): at start the node asks, for each local host, whether the records say it
-- holds any copy (a folder that should hold copies but is empty may be an unmounted disk).
-- Without an index that read every copy before the host's first one: a host added after a
-- year, or holding none, cost a scan of uploads (seconds at ten million files) before the
-- node listened. Shared SQL: it must run on SQLite and PostgreSQL.
CREATE INDEX uploads_host ON uploads (host_name);
