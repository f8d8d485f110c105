-- The access audit trail: every admin action appended with who did it (the acting token's
-- name, or `cli` for an ops command run where the coordinator runs) and when. Never an address,
-- never a serial. Auditors read it (`GET /v1/admin/actions`, `ticketing audit`).
CREATE TABLE admin_actions (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
