//! Fuzz target: see `sockgate_host::fuzzing::event_actions`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockgate_host::fuzzing::event_actions(data));
