-- The spent ledger. Every guarantee is a constraint, never a check-then-insert:
--   tickets.serial PRIMARY KEY   a single ticket's first use happens once;
--   uses (serial, epoch) PK      a (serial, epoch) counts once;
--   scans.scan_id PRIMARY KEY    a validator's retry or re-sync of a scan changes nothing.
-- No personal data: serials are anonymous, devices are validators, no addresses or names.

-- First accepted use of each single ticket; `until_at` = first use + transfer window.
CREATE TABLE tickets (
    serial BLOB PRIMARY KEY,
    keyset_id BLOB NOT NULL,
    first_scan_id BLOB NOT NULL,
    first_at INTEGER NOT NULL,
    until_at INTEGER NOT NULL
);
CREATE INDEX tickets_keyset ON tickets (keyset_id);

-- Each (serial, epoch) accepted once, for singles (transfers) and passes.
CREATE TABLE uses (
    serial BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    keyset_id BLOB NOT NULL,
    PRIMARY KEY (serial, epoch)
);
CREATE INDEX uses_keyset ON uses (keyset_id);

-- Every scan answered, with the answer (JSON), so retries get the same one.
CREATE TABLE scans (
    scan_id BLOB PRIMARY KEY,
    keyset_id BLOB NOT NULL,
    serial BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    scanned_at INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    offline INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    flag TEXT,
    outcome TEXT NOT NULL
);
CREATE INDEX scans_serial ON scans (serial, scanned_at);
CREATE INDEX scans_keyset ON scans (keyset_id);

-- Denied serials: revoked by an operator or copied (conflicting offline scans).
CREATE TABLE deny (
    serial BLOB PRIMARY KEY,
    keyset_id BLOB NOT NULL,
    reason TEXT NOT NULL,
    denied_at INTEGER NOT NULL
);

-- Validator devices and admins: only a SHA-256 of each token is kept.
CREATE TABLE devices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash BLOB NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Signed Bloom snapshots; the newest is served, versions survive restarts.
CREATE TABLE publications (
    version INTEGER PRIMARY KEY,
    body TEXT NOT NULL
);
