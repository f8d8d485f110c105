-- Vouchers are stored only as SHA-256 hashes of their normalised code (75 random bits each).
-- `used` flips once, by a conditional UPDATE in the checkout transaction. Nothing links a
-- voucher to the receipt it paid for.
CREATE TABLE vouchers (
    hash BLOB PRIMARY KEY NOT NULL CHECK (length(hash) = 32),
    product TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0 CHECK (used IN (0, 1))
);

-- Signed receipts: what was paid for, nothing about who paid (no card number, no voucher).
-- UNIQUE(digest) makes checkout idempotent: a retry for the same blinded points gets the
-- stored receipt back instead of paying twice.
CREATE TABLE receipts (
    receipt_id BLOB PRIMARY KEY NOT NULL CHECK (length(receipt_id) = 16),
    keyset_id BLOB NOT NULL CHECK (length(keyset_id) = 8),
    count INTEGER NOT NULL CHECK (count > 0),
    digest BLOB NOT NULL UNIQUE CHECK (length(digest) = 32),
    amount INTEGER NOT NULL CHECK (amount >= 0),
    currency TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    signature BLOB NOT NULL CHECK (length(signature) = 64)
);

CREATE INDEX receipts_by_keyset ON receipts (keyset_id);
