-- Vouchers can be listed and voided by an operator (a printed batch lost, a code leaked). The
-- codes are not recoverable (only their hashes are kept): a voucher is named by the start of
-- its hash. A voided voucher is also `used`, so checkout's conditional UPDATE refuses it.
ALTER TABLE vouchers ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE vouchers ADD COLUMN voided_at BIGINT;
