-- Scan ids are chosen by validators, so they are scoped per device: two devices may pick the
-- same id, and one device's id never answers for another's scan. A repeat of (device, scan id)
-- is answered from its row only if it scanned the same ticket at the same epoch (serial, epoch
-- are compared); otherwise it is refused as `scan_id_reused`.
ALTER TABLE scans DROP CONSTRAINT scans_pkey;
ALTER TABLE scans ADD PRIMARY KEY (device_id, scan_id);
CREATE INDEX scans_id ON scans (scan_id);

-- A revoked token opens nothing from the moment it is revoked; the row stays (its scans
-- reference it).
ALTER TABLE devices ADD COLUMN revoked_at BIGINT;
