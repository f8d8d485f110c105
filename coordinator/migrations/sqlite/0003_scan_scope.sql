-- Scan ids are chosen by validators, so they are scoped per device: two devices may pick the
-- same id, and one device's id never answers for another's scan. A repeat of (device, scan id)
-- is answered from its row only if it scanned the same ticket at the same epoch (serial, epoch
-- are compared); otherwise it is refused as `scan_id_reused`.
CREATE TABLE scans_scoped (
    device_id INTEGER NOT NULL,
    scan_id BLOB NOT NULL,
    keyset_id BLOB NOT NULL,
    serial BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    scanned_at INTEGER NOT NULL,
    offline INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    flag TEXT,
    outcome TEXT NOT NULL,
    PRIMARY KEY (device_id, scan_id)
);
INSERT INTO scans_scoped (device_id, scan_id, keyset_id, serial, epoch, scanned_at, offline,
                          accepted, flag, outcome)
    SELECT device_id, scan_id, keyset_id, serial, epoch, scanned_at, offline, accepted, flag,
           outcome
    FROM scans;
DROP TABLE scans;
ALTER TABLE scans_scoped RENAME TO scans;
CREATE INDEX scans_serial ON scans (serial, scanned_at);
CREATE INDEX scans_keyset ON scans (keyset_id);
CREATE INDEX scans_id ON scans (scan_id);

-- A revoked token opens nothing from the moment it is revoked; the row stays (its scans
-- reference it).
ALTER TABLE devices ADD COLUMN revoked_at INTEGER;
