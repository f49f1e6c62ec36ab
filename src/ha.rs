//! (skeleton) ha
