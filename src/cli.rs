//! (skeleton) cli
