//! Fuzz target: see `sockgate_host::fuzzing::component_detect`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sockgate_host::fuzzing::component_detect(data));
