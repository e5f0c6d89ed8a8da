//! Fuzz target: see `sockgate_host::fuzzing::config_file` (its input is text).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        sockgate_host::fuzzing::config_file(text);
    }
});
