//! scf-gateway: an invocation gateway for SCF-style image functions.
pub mod config;
