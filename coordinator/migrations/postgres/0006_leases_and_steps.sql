-- Work that must run once however many coordinators share this database (publishing the
-- filter, following the node logs, delivering webhooks) is done by whoever holds its lease; a
-- lease lapses unless its holder renews it (`until_at`, the holder's clock).
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder BYTEA NOT NULL,
    until_at BIGINT NOT NULL
);

-- What each published version changed in the filter's bytes, so any coordinator (and one
-- restarted) serves deltas from the versions validators hold. `changes`: (offset u32, byte
-- before) big-endian, 5 bytes each; empty and `fresh` = 1 where a new filter starts.
CREATE TABLE publication_steps (
    version BIGINT PRIMARY KEY,
    fresh BIGINT NOT NULL,
    digest BYTEA NOT NULL,
    changes BYTEA NOT NULL
);
