//! A dormant app (lazy start): registered at a restart — in the router,
//! on its port, under its TLS and QUIC names — but its component not yet
//! read, compiled nor instantiated. A gateway with thousands of deployed
//! apps so serves as soon as it is up, and each app is loaded (from the
//! compile cache) on its first connection.
//!
//! [`Dormant`] owns the three things that state needs:
//!
//! - the app's **recorded world**, so that the listeners offer an HTTP
//!   app's protocols (`h2`, `http/1.1`, `h3`) before it is loaded;
//! - the **queue** of connections that arrive before the load is done,
//!   bounded by the app's `limits.max_connections` (none is refused below
//!   it, and each gets the loaded version's admission then);
//! - the **once-only trigger** that starts the load, fired by the first
//!   connection, whatever arrives meanwhile (single flight).
//!
//! The gateway ends the dormant state with [`Dormant::resolve`]: with the
//! version that now serves (loaded lazily, or deployed over it), to which
//! the queue goes, or with none (the load failed, the app was removed),
//! which closes the queued connections. A connection that still found the
//! dormant app in the router after that follows the same outcome.

use std::sync::Arc;

use crate::base::conn::{Closer, ConnInfo, Connection};
use crate::base::locks::lock;
use crate::runtime::load::World;
use crate::tenant::conns::Refused;

/// What starts the load of a dormant app (it spawns the gateway's task
/// and returns at once).
pub type LoadTrigger = Box<dyn FnOnce() + Send>;

/// What the queued connections go to once the app is loaded: the
/// version that serves it (the gateway's app). A trait, so that the
/// dormant state knows nothing else of it.
pub trait LoadedApp: Send + Sync {
    /// Takes a TCP, TLS or QUIC-stream connection, as any new one.
    fn dispatch(&self, conn: Connection) -> Result<(), Refused>;
    /// Takes a QUIC connection that negotiated `h3`, as any new one.
    fn dispatch_h3(
        &self,
        conn: quinn::Connection,
        info: ConnInfo,
        closer: Closer,
    ) -> Result<(), Refused>;
}

/// A connection waiting for its app to be loaded.
pub enum Queued {
    /// A TCP, TLS or QUIC-stream connection, for [`LoadedApp::dispatch`].
    Conn(Connection),
    /// A QUIC connection that negotiated `h3`, for [`LoadedApp::dispatch_h3`].
    H3 {
        /// The QUIC connection.
        conn: quinn::Connection,
        /// What it is.
        info: ConnInfo,
        /// Closes it (a dropped handle does not: the listener holds one).
        closer: Closer,
    },
}

/// The dormant state of one app, which is loaded as an `A`; see the
/// module documentation.
pub struct Dormant<A: ?Sized> {
    world: World,
    /// The most connections queued (the app's `limits.max_connections`).
    capacity: usize,
    state: std::sync::Mutex<State<A>>,
}

/// Where the dormant app stands.
enum State<A: ?Sized> {
    /// Not loaded yet: the trigger (until the first connection fires it)
    /// and the connections waiting.
    Waiting {
        trigger: Option<LoadTrigger>,
        queue: Vec<Queued>,
    },
    /// Over: the version that serves instead, or none.
    Resolved(Option<Arc<A>>),
}

impl<A: LoadedApp + ?Sized> Dormant<A> {
    /// A dormant app of world `world` that queues at most `capacity`
    /// connections and calls `trigger` on the first one.
    pub fn new(world: World, capacity: usize, trigger: LoadTrigger) -> Self {
        Self {
            world,
            capacity: capacity.max(1),
            state: std::sync::Mutex::new(State::Waiting {
                trigger: Some(trigger),
                queue: Vec::new(),
            }),
        }
    }

    /// The world recorded at its deploy.
    pub fn world(&self) -> World {
        self.world
    }

    /// Connections waiting for the load.
    pub fn queued(&self) -> usize {
        match &*lock(&self.state) {
            State::Waiting { queue, .. } => queue.len(),
            State::Resolved(_) => 0,
        }
    }

    /// Takes a connection: queued until the load is done (the first one
    /// starts it), or handed on when it is already over (closed when the
    /// app failed to load). Refused, and closed, when the queue is full
    /// (`full` says why, and counts it: the app's `limits.max_connections`).
    pub fn offer(&self, queued: Queued, full: impl FnOnce() -> Refused) -> Result<(), Refused> {
        let mut state = lock(&self.state);
        match &mut *state {
            State::Waiting { trigger, queue } => {
                if queue.len() >= self.capacity {
                    drop(state);
                    close(queued);
                    return Err(full());
                }
                queue.push(queued);
                let trigger = trigger.take();
                drop(state);
                if let Some(trigger) = trigger {
                    trigger();
                }
                Ok(())
            }
            State::Resolved(serving) => {
                let serving = serving.clone();
                drop(state);
                hand_on(serving.as_deref(), queued)
            }
        }
    }

    /// Ends the dormant state: the queued connections (and any that
    /// arrive later through this app) go to `serving`, or are closed when
    /// there is none. Only the first call counts.
    pub fn resolve(&self, serving: Option<Arc<A>>) {
        let queue = {
            let mut state = lock(&self.state);
            match std::mem::replace(&mut *state, State::Resolved(serving.clone())) {
                State::Waiting { queue, .. } => queue,
                already @ State::Resolved(_) => {
                    *state = already;
                    return;
                }
            }
        };
        for queued in queue {
            let _ = hand_on(serving.as_deref(), queued);
        }
    }
}

/// Hands a connection to the app that serves now, or closes it (the app
/// failed to load or was removed: not a refusal at a limit).
fn hand_on<A: LoadedApp + ?Sized>(serving: Option<&A>, queued: Queued) -> Result<(), Refused> {
    let Some(app) = serving else {
        close(queued);
        return Ok(());
    };
    match queued {
        Queued::Conn(conn) => app.dispatch(conn),
        Queued::H3 { conn, info, closer } => {
            // The listener closes a QUIC connection refused at once; one
            // that waited here is closed here.
            let held = conn.clone();
            app.dispatch_h3(conn, info, closer).inspect_err(|_| {
                held.close(
                    quinn::VarInt::from_u32(0),
                    b"refused at the app's connection limits",
                )
            })
        }
    }
}

/// Closes a connection that will not be served.
fn close(queued: Queued) {
    match queued {
        // Dropping a connection closes it.
        Queued::Conn(conn) => drop(conn),
        Queued::H3 { closer, .. } => closer(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;
    use crate::base::conn::Transport;

    /// A connection whose client end is returned beside it.
    fn conn() -> (Connection, DuplexStream) {
        let (ours, client) = tokio::io::duplex(64);
        let (reader, writer) = tokio::io::split(ours);
        let addr = "127.0.0.1:1".parse().unwrap();
        let info = ConnInfo {
            id: 1,
            transport: Transport::Tcp,
            peer: addr,
            local: addr,
            server_name: None,
            alpn: None,
            quic: None,
        };
        let conn = Connection {
            info,
            reader: Box::pin(reader),
            writer: Box::pin(writer),
            closer: Box::new(|| {}),
        };
        (conn, client)
    }

    async fn closed(client: &mut DuplexStream) -> bool {
        let mut byte = [0u8; 1];
        client.read(&mut byte).await.unwrap() == 0
    }

    #[tokio::test]
    async fn the_first_connection_fires_the_load_once_and_the_queue_is_bounded() {
        let fired = Arc::new(AtomicUsize::new(0));
        let counter = fired.clone();
        let trigger: LoadTrigger = Box::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let dormant = Dormant::<dyn LoadedApp>::new(World::ConnHandler, 2, trigger);
        let full = || Refused::AppFull;
        let (a, mut client_a) = conn();
        let (b, mut client_b) = conn();
        let (c, mut client_c) = conn();
        assert!(dormant.offer(Queued::Conn(a), full).is_ok());
        assert!(dormant.offer(Queued::Conn(b), full).is_ok());
        assert_eq!(
            fired.load(Ordering::Relaxed),
            1,
            "one load, whatever arrives"
        );
        assert_eq!(dormant.queued(), 2);
        // Over `max_connections`: refused and closed.
        let refused = dormant.offer(Queued::Conn(c), full);
        assert!(matches!(refused, Err(Refused::AppFull)), "{refused:?}");
        assert!(closed(&mut client_c).await);

        // A failed load closes the waiting connections, and those that
        // still find the dormant app later; it never fires again.
        dormant.resolve(None);
        assert_eq!(dormant.queued(), 0);
        assert!(closed(&mut client_a).await);
        assert!(closed(&mut client_b).await);
        let (d, mut client_d) = conn();
        assert!(dormant.offer(Queued::Conn(d), full).is_ok());
        assert!(closed(&mut client_d).await);
        assert_eq!(fired.load(Ordering::Relaxed), 1);
    }
}
