-- Vouchers are stored only as SHA-256 hashes of their normalised code (75 random bits each).
-- `used` flips once, by a conditional UPDATE in the checkout transaction. Nothing links a
-- voucher to the receipt it paid for.
CREATE TABLE vouchers (
    hash BYTEA PRIMARY KEY CHECK (octet_length(hash) = 32),
    product TEXT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE
);

-- Signed receipts: what was paid for, nothing about who paid (no card number, no voucher).
-- UNIQUE(digest) makes checkout idempotent: a retry for the same blinded points gets the
-- stored receipt back instead of paying twice.
CREATE TABLE receipts (
    receipt_id BYTEA PRIMARY KEY CHECK (octet_length(receipt_id) = 16),
    keyset_id BYTEA NOT NULL CHECK (octet_length(keyset_id) = 8),
    count BIGINT NOT NULL CHECK (count > 0),
    digest BYTEA NOT NULL UNIQUE CHECK (octet_length(digest) = 32),
    amount BIGINT NOT NULL CHECK (amount >= 0),
    currency TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    signature BYTEA NOT NULL CHECK (octet_length(signature) = 64)
);

CREATE INDEX receipts_by_keyset ON receipts (keyset_id);
