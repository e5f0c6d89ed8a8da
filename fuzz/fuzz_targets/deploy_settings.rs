//! Fuzz target: see `sockgate_host::fuzzing::deploy_settings`. The input
//! is the app name of the URL, a newline, then the `sockgate-settings`
//! header's value (JSON).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (name, header) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"app"[..], data),
    };
    if let Ok(name) = std::str::from_utf8(name) {
        sockgate_host::fuzzing::deploy_settings(name, header);
    }
});
