-- Vouchers are stored only as SHA-256 hashes of their normalised code (75 random bits each).
-- `used` flips once, by a conditional UPDATE in the checkout transaction. Nothing links a
-- voucher to the receipt it paid for.
CREATE TABLE vouchers (
    hash BYTEA PRIMARY KEY CHECK (octet_length(hash) = 32),
    product TEXT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE
);

-- Receipts: what was paid for, nothing about who paid (no card number, no voucher).
-- One row per digest (UNIQUE), written before anything is paid:
--
-- - `paying`: a card payment reserved the digest and is charging (or crashed while charging).
--   `lease` is the random token of the attempt holding it, `reserved_at` when it took it; a
--   retry may take over a reservation whose lease is old (compare-and-swap on `lease`). No
--   signature yet.
-- - `issued`: the signed receipt. A voucher checkout inserts this state directly (in the same
--   transaction that burns the voucher).
--
-- UNIQUE(digest) makes checkout idempotent: a retry for the same blinded points finds the row
-- instead of paying twice. Renewal rewrites `expires_at` and `signature` only.
CREATE TABLE receipts (
    receipt_id BYTEA PRIMARY KEY CHECK (octet_length(receipt_id) = 16),
    keyset_id BYTEA NOT NULL CHECK (octet_length(keyset_id) = 8),
    count BIGINT NOT NULL CHECK (count > 0),
    digest BYTEA NOT NULL UNIQUE CHECK (octet_length(digest) = 32),
    amount BIGINT NOT NULL CHECK (amount >= 0),
    currency TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('paying', 'issued')),
    lease BYTEA CHECK (octet_length(lease) = 16),
    reserved_at BIGINT,
    issued_at BIGINT,
    expires_at BIGINT,
    signature BYTEA CHECK (octet_length(signature) = 64),
    CHECK (
        (state = 'paying' AND lease IS NOT NULL AND reserved_at IS NOT NULL
            AND issued_at IS NULL AND expires_at IS NULL AND signature IS NULL)
        OR (state = 'issued' AND lease IS NULL AND reserved_at IS NULL
            AND issued_at IS NOT NULL AND expires_at IS NOT NULL AND signature IS NOT NULL)
    )
);

CREATE INDEX receipts_by_keyset ON receipts (keyset_id);
