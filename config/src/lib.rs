//! Layered configuration for every service: defaults, then a TOML file, then `TICKETING_*`
//! environment variables (figment), then a `validate()` step with clear errors.
//!
//! Skeleton: filled in by the nodes/payments issue.
