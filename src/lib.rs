//! leasedog: a PostgreSQL high-availability agent that fences with the
//! hardware watchdog. See ARCHITECTURE.md for the map of this crate.

pub mod agent;
pub mod api;
pub mod callbacks;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod dcs;
pub mod dynamic_config;
pub mod ha;
pub mod hot_standby;
pub mod instance;
pub mod logging;
pub mod notify;
pub mod postgres;
pub mod restart;
pub mod snapshot;
pub mod sync;
pub mod watchdog;
