//! Test harness shared by the integration tests.
pub mod cluster;
pub mod etcd;
