//! The services composed in one process on this machine: each of them started on a listener
//! ([`Running`]), the browser apps' router ([`apps`]), and [`LocalCluster`], a whole cluster
//! on 127.0.0.1 ports chosen by the OS. `ticketing demo` and the standalone service commands
//! are built from the first two; the integration tests and `ticketing bench` from the third.

pub mod apps;
mod cluster;
mod service;

pub use cluster::{Databases, LocalCluster};
pub use service::{
    Running, bind, socket_addr, spawn_apps, spawn_coordinator, spawn_node, spawn_payments, spec,
};
