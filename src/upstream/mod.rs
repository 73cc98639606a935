//! Talking to instances: the protocol clients the pool's connections speak.
//!
//! This layer knows sockets, bytes and HTTP, nothing of functions, slots or billing: a
//! client here takes a connection and a request body through small traits, so it can
//! be tested (and fuzzed) on its own, and the pool above it decides which connection an
//! invocation gets and what happens to it afterwards.

pub mod h1;
