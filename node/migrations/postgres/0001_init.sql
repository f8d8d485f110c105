-- The issuance log. One row per honoured receipt. receipt_id UNIQUE makes a receipt count
-- once; seq PRIMARY KEY makes a second writer (a misconfigured duplicate node) fail instead of
-- forking the chain. The head is the row with the largest seq.
CREATE TABLE log_entries (
    seq BIGINT PRIMARY KEY,
    receipt_id BYTEA NOT NULL UNIQUE,
    digest BYTEA NOT NULL,
    time BIGINT NOT NULL,
    receipt TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL
);

-- Signed checkpoints as served (JSON), one per covered seq.
CREATE TABLE checkpoints (
    seq BIGINT PRIMARY KEY,
    body TEXT NOT NULL
);
