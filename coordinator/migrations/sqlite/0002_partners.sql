-- The partner feed: events about products (purchases seen in t node logs, denied tickets) and
-- the partners (transit operators) who read them. No serials, devices or personal data here:
-- an event is a product, a count, an amount and a time.

-- Every event, in the order the feed serves them (`id` is the cursor; never reused).
-- `receipt_id UNIQUE` makes recording a purchase idempotent (the follower re-reads the node
-- logs from the start after a restart); revocations have none.
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    reason TEXT,
    event_time INTEGER NOT NULL,
    keyset_id BLOB NOT NULL,
    product TEXT NOT NULL,
    tickets INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    receipt_id BLOB UNIQUE
);
CREATE INDEX events_product ON events (product, id);
CREATE INDEX events_keyset ON events (keyset_id, kind);

-- Partners: only a SHA-256 of each token is kept; the webhook secret is derived, not stored.
-- The webhook columns are the delivery state: `webhook_cursor` is the last event id delivered
-- (or skipped after `coordinator.webhook_max_attempts`), `webhook_attempts` the failed tries
-- of the next one, `webhook_next_at` when it is due again (unix seconds).
CREATE TABLE partners (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash BLOB NOT NULL UNIQUE,
    webhook_url TEXT,
    webhook_cursor INTEGER NOT NULL DEFAULT 0,
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_next_at INTEGER NOT NULL DEFAULT 0,
    webhook_delivered INTEGER NOT NULL DEFAULT 0,
    webhook_skipped INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

-- The products each partner owns (manifest product names).
CREATE TABLE partner_products (
    partner_id BLOB NOT NULL REFERENCES partners (id),
    product TEXT NOT NULL,
    PRIMARY KEY (partner_id, product)
);
CREATE INDEX partner_products_product ON partner_products (product);
