//! A response body decoder (chunked, by length, to the close), whole and in pieces
//! (`scf_gateway::fuzzing::body`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| scf_gateway::fuzzing::body(data));
