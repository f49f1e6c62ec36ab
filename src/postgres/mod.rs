//! The local PostgreSQL instance (skeleton).
