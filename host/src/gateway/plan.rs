//! The decisions of a switch that need no I/O, taken apart so that tests
//! can drive them as a table, without sockets (quinn-proto style: inputs
//! in, a decision out; [`Gateway::switch`](super::Gateway) only carries it
//! out).
//!
//! - **Which listener** a new version serves on ([`plan_listener`]): the
//!   one already bound, when the new settings ask for its address, a new
//!   one, or none (an app without a port of its own, served by name).
//! - **Which number** it is known by ([`version_number`]).

use std::net::SocketAddr;

/// The listener an app serves on now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Listening {
    /// The address its settings asked for (a port may be 0).
    pub asked: SocketAddr,
    /// The address bound.
    pub bound: SocketAddr,
}

/// What a switch does about the app's listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ListenerPlan {
    /// Keep serving on the listener bound at this address: its accept
    /// loop goes on and now hands connections to the new version, and no
    /// connection waiting in the backlog is lost.
    Keep(SocketAddr),
    /// Bind a listener at this address; once the new version serves, the
    /// old accept loop stops (its connections drain).
    Bind(SocketAddr),
    /// No port of its own: the app is served by name on the shared TLS and
    /// QUIC listeners only; a listener it had closes once the new version
    /// serves (its connections drain).
    NoPort,
}

/// The listener rule: the current listener is kept when the new settings
/// ask for the same address as before, for the address actually bound (a
/// restored app records the port its `:0` got), or for any port (`:0`) on
/// the same IP. Anything else binds anew, and nothing switches if that
/// fails. Settings that ask for no address get no listener.
pub(super) fn plan_listener(current: Option<Listening>, asked: Option<SocketAddr>) -> ListenerPlan {
    let Some(asked) = asked else {
        return ListenerPlan::NoPort;
    };
    match current {
        Some(now)
            if now.asked == asked
                || now.bound == asked
                || (asked.port() == 0 && now.bound.ip() == asked.ip()) =>
        {
            ListenerPlan::Keep(now.bound)
        }
        _ => ListenerPlan::Bind(asked),
    }
}

/// The number the new version is known by: the one the persist step
/// returned when there is one (a deploy: one more than the newest recorded,
/// see [`AppRecord::push`](crate::state::AppRecord::push); a rollback: the
/// version gone back to), else the one given (a version restored at start).
/// `None` for an app of the configuration file, which has no versions;
/// only a numbered version is announced as an event of the app.
pub(super) fn version_number(given: u64, persisted: Option<u64>) -> Option<u64> {
    Some(persisted.unwrap_or(given)).filter(|&number| number > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn listening(asked: &str, bound: &str) -> Option<Listening> {
        Some(Listening {
            asked: addr(asked),
            bound: addr(bound),
        })
    }

    #[test]
    fn the_listener_is_kept_only_for_its_own_address() {
        use ListenerPlan::{Bind, Keep, NoPort};
        let table = [
            // A new app binds what it asks for.
            (None, Some("127.0.0.1:0"), Bind(addr("127.0.0.1:0"))),
            (None, Some("127.0.0.1:8080"), Bind(addr("127.0.0.1:8080"))),
            // The same settings keep the listener (and its port).
            (
                listening("127.0.0.1:0", "127.0.0.1:4000"),
                Some("127.0.0.1:0"),
                Keep(addr("127.0.0.1:4000")),
            ),
            (
                listening("127.0.0.1:8080", "127.0.0.1:8080"),
                Some("127.0.0.1:8080"),
                Keep(addr("127.0.0.1:8080")),
            ),
            // Asking for the port bound (as a restored record does).
            (
                listening("127.0.0.1:0", "127.0.0.1:4000"),
                Some("127.0.0.1:4000"),
                Keep(addr("127.0.0.1:4000")),
            ),
            // Any port on the same IP will do.
            (
                listening("127.0.0.1:8080", "127.0.0.1:8080"),
                Some("127.0.0.1:0"),
                Keep(addr("127.0.0.1:8080")),
            ),
            // Another port, or another IP, binds anew.
            (
                listening("127.0.0.1:8080", "127.0.0.1:8080"),
                Some("127.0.0.1:9090"),
                Bind(addr("127.0.0.1:9090")),
            ),
            (
                listening("127.0.0.1:0", "127.0.0.1:4000"),
                Some("0.0.0.0:0"),
                Bind(addr("0.0.0.0:0")),
            ),
            (
                listening("[::1]:0", "[::1]:4000"),
                Some("127.0.0.1:4000"),
                Bind(addr("127.0.0.1:4000")),
            ),
            // No address asked: no listener, whatever there was.
            (None, None, NoPort),
            (listening("127.0.0.1:0", "127.0.0.1:4000"), None, NoPort),
        ];
        for (current, asked, expected) in table {
            assert_eq!(
                plan_listener(current, asked.map(addr)),
                expected,
                "{current:?} asked {asked:?}"
            );
        }
    }

    #[test]
    fn versions_are_numbered_by_persistence_else_as_given() {
        let table = [
            // An app of the configuration file: no number, no event.
            (0, None, None),
            // A version restored at start keeps its number.
            (3, None, Some(3)),
            // A deploy gets the number its record assigned.
            (0, Some(4), Some(4)),
            // A rollback goes back to the version it named.
            (2, Some(2), Some(2)),
        ];
        for (given, persisted, expected) in table {
            assert_eq!(
                version_number(given, persisted),
                expected,
                "{given} {persisted:?}"
            );
        }
    }
}
