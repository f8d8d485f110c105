-- Vouchers are stored only as SHA-256 hashes of their normalised code (75 random bits each).
-- `used` flips once, by a conditional UPDATE in the checkout transaction. Nothing links a
-- voucher to the receipt it paid for.
CREATE TABLE vouchers (
    hash BLOB PRIMARY KEY NOT NULL CHECK (length(hash) = 32),
    product TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0 CHECK (used IN (0, 1))
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
    receipt_id BLOB PRIMARY KEY NOT NULL CHECK (length(receipt_id) = 16),
    keyset_id BLOB NOT NULL CHECK (length(keyset_id) = 8),
    count INTEGER NOT NULL CHECK (count > 0),
    digest BLOB NOT NULL UNIQUE CHECK (length(digest) = 32),
    amount INTEGER NOT NULL CHECK (amount >= 0),
    currency TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('paying', 'issued')),
    lease BLOB CHECK (length(lease) = 16),
    reserved_at INTEGER,
    issued_at INTEGER,
    expires_at INTEGER,
    signature BLOB CHECK (length(signature) = 64),
    CHECK (
        (state = 'paying' AND lease IS NOT NULL AND reserved_at IS NOT NULL
            AND issued_at IS NULL AND expires_at IS NULL AND signature IS NULL)
        OR (state = 'issued' AND lease IS NULL AND reserved_at IS NULL
            AND issued_at IS NOT NULL AND expires_at IS NOT NULL AND signature IS NOT NULL)
    )
);

CREATE INDEX receipts_by_keyset ON receipts (keyset_id);
