//! The config loader on arbitrary text (`scf_gateway::fuzzing::config`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| scf_gateway::fuzzing::config(data));
