-- The issuance log. One row per honoured receipt. receipt_id UNIQUE makes a receipt count
-- once; seq PRIMARY KEY makes a second writer (a misconfigured duplicate node) fail instead of
-- forking the chain. The head is the row with the largest seq.
CREATE TABLE log_entries (
    seq INTEGER PRIMARY KEY,
    receipt_id BLOB NOT NULL UNIQUE,
    digest BLOB NOT NULL,
    time INTEGER NOT NULL,
    receipt TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);

-- Signed checkpoints as served (JSON), one per covered seq.
CREATE TABLE checkpoints (
    seq INTEGER PRIMARY KEY,
    body TEXT NOT NULL
);
