//! An instance's response head and body, read whole and in pieces
//! (`scf_gateway::fuzzing::response`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| scf_gateway::fuzzing::response(data));
