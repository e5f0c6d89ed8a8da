//! Fuzz target: see `sockgate_host::fuzzing::admin_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockgate_host::fuzzing::admin_request(data));
