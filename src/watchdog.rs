//! (skeleton) watchdog
