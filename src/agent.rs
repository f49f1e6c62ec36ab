//! (skeleton) agent
