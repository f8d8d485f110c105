-- The spent ledger. Every guarantee is a constraint, never a check-then-insert:
--   tickets.serial PRIMARY KEY   a single ticket's first use happens once;
--   uses (serial, epoch) PK      a (serial, epoch) counts once;
--   scans.scan_id PRIMARY KEY    a validator's retry or re-sync of a scan changes nothing.
-- No personal data: serials are anonymous, devices are validators, no addresses or names.

-- First accepted use of each single ticket; `until_at` = first use + transfer window.
CREATE TABLE tickets (
    serial BYTEA PRIMARY KEY,
    keyset_id BYTEA NOT NULL,
    first_scan_id BYTEA NOT NULL,
    first_at BIGINT NOT NULL,
    until_at BIGINT NOT NULL
);
CREATE INDEX tickets_keyset ON tickets (keyset_id);

-- Each (serial, epoch) accepted once, for singles (transfers) and passes.
CREATE TABLE uses (
    serial BYTEA NOT NULL,
    epoch BIGINT NOT NULL,
    keyset_id BYTEA NOT NULL,
    PRIMARY KEY (serial, epoch)
);
CREATE INDEX uses_keyset ON uses (keyset_id);

-- Every scan answered, with the answer (JSON), so retries get the same one.
CREATE TABLE scans (
    scan_id BYTEA PRIMARY KEY,
    keyset_id BYTEA NOT NULL,
    serial BYTEA NOT NULL,
    epoch BIGINT NOT NULL,
    scanned_at BIGINT NOT NULL,
    device_id BIGINT NOT NULL,
    offline BOOLEAN NOT NULL,
    accepted BOOLEAN NOT NULL,
    flag TEXT,
    outcome TEXT NOT NULL
);
CREATE INDEX scans_serial ON scans (serial, scanned_at);
CREATE INDEX scans_keyset ON scans (keyset_id);

-- Denied serials: revoked by an operator or copied (conflicting offline scans).
CREATE TABLE deny (
    serial BYTEA PRIMARY KEY,
    keyset_id BYTEA NOT NULL,
    reason TEXT NOT NULL,
    denied_at BIGINT NOT NULL
);

-- Validator devices and admins: only a SHA-256 of each token is kept.
CREATE TABLE devices (
    id BIGSERIAL PRIMARY KEY,
    token_hash BYTEA NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Signed Bloom snapshots; the newest is served, versions survive restarts.
CREATE TABLE publications (
    version BIGINT PRIMARY KEY,
    body TEXT NOT NULL
);
