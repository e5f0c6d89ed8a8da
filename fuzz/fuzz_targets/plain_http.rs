//! Fuzz target: see `sockgate_host::fuzzing::plain_http`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockgate_host::fuzzing::plain_http(data));
