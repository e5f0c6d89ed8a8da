//! Fuzz target: see `sockgate_host::fuzzing::tls_client_hello`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockgate_host::fuzzing::tls_client_hello(data));
