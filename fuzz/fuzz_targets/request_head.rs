//! A client's request head through host, routing and header cleaning
//! (`scf_gateway::fuzzing::request_head`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| scf_gateway::fuzzing::request_head(data));
