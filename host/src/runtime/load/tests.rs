//! Which imports each world's linker provides.

use super::*;

#[test]
fn provided_packages_are_recognised() {
    let w = World::ConnHandler;
    assert!(is_provided("wasi:sockets/types@0.3.0", w));
    assert!(is_provided("wasi:io/streams@0.2.6", w));
    assert!(!is_provided("wasi:http/types@0.3.0", w));
    assert!(!is_provided("acme:db/query", w));
    assert!(is_provided("sockgate:gateway/types@0.1.0", w));
    assert!(!is_provided("sockgate:gateway/admin@0.1.0", w));
    assert!(!is_provided("sockgate:gateway/sync-types@0.1.0", w));
    let w = World::ConnHandlerSync;
    assert!(is_provided("sockgate:gateway/sync-types@0.1.0", w));
    assert!(is_provided("wasi:io/streams@0.2.12", w));
    assert!(!is_provided("sockgate:gateway/connection@0.1.0", w));
    assert!(!is_provided("wasi:http/types@0.2.12", w));
    assert!(is_provided("wasi:http/types@0.2.12", World::HttpProxy));
    assert!(is_provided("wasi:http/client@0.3.0", World::HttpService));
    assert!(!is_provided(
        "sockgate:gateway/types@0.1.0",
        World::HttpService
    ));
}
