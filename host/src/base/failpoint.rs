//! Named points where a test can freeze the gateway to kill it there
//! (`kill -9`), proving that a crash at that moment loses nothing.
//!
//! Set `SOCKGATE_FAILPOINT=<name>`: when the gateway reaches that point it
//! prints `failpoint <name> reached` on stderr and stops making progress
//! (the thread parks), so the test can kill it at exactly that moment. In
//! production the variable is unset and a point costs one relaxed load.

use std::sync::OnceLock;

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("SOCKGATE_FAILPOINT").ok())
        .as_deref()
}

/// Marks point `name`; freezes here if it is the armed one.
pub(crate) fn hit(name: &str) {
    if armed() == Some(name) {
        eprintln!("failpoint {name} reached");
        loop {
            std::thread::park();
        }
    }
}
