//! Payments: turns a test-card payment or a cash voucher into an Ed25519-signed receipt bound
//! to the digest of the blinded points. Stores no card number.
//!
//! Skeleton: filled in by the nodes/payments issue.
