//! (skeleton) dcs
