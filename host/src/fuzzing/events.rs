//! The event world's actions (`fuzz_targets/event_actions.rs`): a hostile
//! guest controls the whole `list<action>` its `handle` returns, and the
//! real [`Driver`] carries it out on real loopback TCP connections. The
//! harness plays the guest (a plan of turns, each a list of actions) and
//! the connections' peers (bytes, ends and resets), lets the driver gather
//! between turns exactly as [`Driver::serve`] does, and checks every batch
//! against what the world promises.
//!
//! The input is read with [`arbitrary::Unstructured`] as a plain byte
//! format (a tag byte per variant, little-endian numbers), so seeds can be
//! written by hand (`fuzz/corpus/event_actions/`):
//!
//! ```text
//! input  = clients:u8 policy:u8 turn*          (clients: 1 + n % 4)
//! turn   = peer-ops:u8 peer-op* actions:u16 action*   (peer-ops % 4)
//! action = tag:u8 …                             (see `Act::arbitrary`;
//!                                               tag 255: fill-timers)
//! ```

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

mod input;

use self::input::{Act, ConnRef, Host, MAX_TIMERS_AT_ONCE, PeerOp, Plan, Turn};
use crate::apps::app::assign;
use crate::limits::AppLimits;
use crate::listen::tcp::tcp_connection;
use crate::runtime::events::bindings::sockgate::events::types::{
    Connect, Send as SendAction, Timer,
};
use crate::runtime::events::bindings::{Action, CloseReason, Event};
use crate::runtime::events::conn::SEND_HARD_CAP;
use crate::runtime::events::driver::{Driver, MAX_BATCH_EVENTS};
use crate::runtime::events::timers::MAX_TIMERS;
use crate::runtime::instance::Assigned;
use crate::runtime::supervisor::IoProgress;
use crate::tenant::conns::{AppAccount, ConnTracker, ShardLoad, admit};
use crate::tenant::logs::AppLog;
use crate::tenant::outbound::OutboundPolicy;

/// Most bytes one input sends (the guest's `send`s and the peers' writes
/// together): twice the hard cap, so a connection can be sent past it,
/// paid for by the lengths in the input, never by its size.
const MAX_INPUT_BYTES: usize = 2 * 1024 * 1024;
/// Most timers one input sets in all: one `fill-timers` and some more.
const MAX_INPUT_TIMERS: usize = MAX_TIMERS + 1 + 4 * MAX_TIMERS_AT_ONCE as usize;
/// Outbound sockets the fuzzed app may hold: small, so connects past the
/// budget (refused at once) are common.
const OUTBOUND_SOCKETS: usize = 4;
/// Idle polls (the driver pending, the runtime's I/O polled between) after
/// which the driver is taken to have nothing more to say for now.
const IDLE_POLLS: usize = 4;
/// Idle polls the end of an input waits at most for connects in flight to
/// loopback (answered in a few polls: the kernel completes them at once).
const SETTLE_POLLS: usize = 2_000;

/// The runtime the target drives the driver on: one thread, as an
/// instance's task runs on one at a time.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the fuzzed driver's runtime starts")
    })
}

/// Runs one input: client connections, then the turns, then checks that
/// every connect was answered and every limit close reported.
pub(super) fn run(bytes: &[u8]) {
    let Ok(plan) = Plan::arbitrary_take_rest(Unstructured::new(bytes)) else {
        return;
    };
    runtime().block_on(async move {
        let mut harness = Harness::start(&plan).await;
        for turn in &plan.turns {
            harness.turn(turn).await;
        }
        harness.finish().await;
    });
}

/// The far end of one of the instance's connections.
struct Peer {
    stream: Option<TcpStream>,
    /// Its remote address as text: for a connection the driver opened,
    /// the `local` address of its `connected` event.
    remote: String,
    /// The connection's id, once the guest heard of it.
    id: Option<u64>,
}

/// The driver under test, the peers, and what the guest has heard and
/// done: the model every batch is checked against.
struct Harness {
    driver: Driver,
    /// Kept open, so the instance is never retired (no drain).
    _tx: mpsc::Sender<Assigned>,
    rx: mpsc::Receiver<Assigned>,
    listener: TcpListener,
    allow_loopback: bool,
    peers: Vec<Peer>,
    /// The ids of the client connections the harness created.
    clients: HashSet<u64>,
    /// Ids the guest heard `opened` or `connected` for.
    opened: HashSet<u64>,
    /// Ids the guest heard `closed` for, or closed itself.
    gone: HashSet<u64>,
    /// Open ids in the order the guest heard of them (for [`ConnRef`]).
    open: Vec<u64>,
    /// Gone ids, in order.
    gone_list: Vec<u64>,
    /// The first id of this input (for guesses).
    first_id: u64,
    /// Connects asked and not answered, by token.
    connecting: HashMap<u64, usize>,
    /// Tokens of the timers set one by one, and the ranges (first, count)
    /// set by `set-timers` and `fill-timers`.
    timers_set: HashSet<u64>,
    timer_ranges: Vec<(u64, u64)>,
    /// Connections the driver dropped while carrying out `send`s: each
    /// must be reported closed at the send cap (`limit`) or on a failed
    /// write (sends are written at once; the peer may have reset it).
    dropped_while_sending: HashSet<u64>,
    /// Bytes the guest sent per id, and bytes its peer read.
    sent: HashMap<u64, usize>,
    read: HashMap<u64, usize>,
    /// Bytes left to send in this input.
    budget: usize,
    /// Timers left to set with `set-timers` in this input.
    timer_budget: usize,
    buf: Vec<u8>,
}

impl Harness {
    /// The listener, the client connections (assigned as the gateway
    /// assigns them) and the driver.
    async fn start(plan: &Plan) -> Self {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("a loopback listener");
        let port = listener
            .local_addr()
            .expect("the listener's address")
            .port();
        let rules = if plan.allow_loopback {
            vec![format!("127.0.0.1:{port}")]
        } else {
            Vec::new()
        };
        let limits = AppLimits {
            max_outbound_sockets: OUTBOUND_SOCKETS,
            ..AppLimits::default()
        };
        let policy = OutboundPolicy::parse(&rules)
            .expect("the loopback rule parses")
            .with_budget(&limits);
        let log = Arc::new(AppLog::new("fuzz"));
        let tracker = ConnTracker::new(1024);
        let account = AppAccount::new(log.clone(), &limits);
        let shard = Arc::new(ShardLoad::default());
        let (tx, rx) = mpsc::channel(plan.clients);
        let mut peers = Vec::new();
        let mut clients = HashSet::new();
        for _ in 0..plan.clients {
            let (client, accepted) = tokio::join!(
                TcpStream::connect(listener.local_addr().expect("the listener's address")),
                listener.accept()
            );
            let client = client.expect("a loopback client connects");
            let (stream, peer) = accepted.expect("the loopback listener accepts");
            let conn = tcp_connection(stream).expect("an accepted connection");
            let admission = admit(&tracker, &account, peer.ip())
                .unwrap_or_else(|refused| panic!("client refused: {refused:?}"));
            let assigned = assign(conn, admission, &shard);
            clients.insert(assigned.info.id);
            peers.push(Peer {
                stream: Some(client),
                remote: String::new(),
                id: Some(assigned.info.id),
            });
            if tx.try_send(assigned).is_err() {
                panic!("the instance's channel holds the clients");
            }
        }
        let first_id = clients.iter().copied().min().unwrap_or_default();
        let driver = Driver::new(
            log,
            Arc::new(policy),
            Duration::from_secs(30),
            0,
            IoProgress::default(),
        );
        Self {
            driver,
            _tx: tx,
            rx,
            listener,
            allow_loopback: plan.allow_loopback,
            peers,
            clients,
            opened: HashSet::new(),
            gone: HashSet::new(),
            open: Vec::new(),
            gone_list: Vec::new(),
            first_id,
            connecting: HashMap::new(),
            timers_set: HashSet::new(),
            timer_ranges: Vec::new(),
            dropped_while_sending: HashSet::new(),
            sent: HashMap::new(),
            read: HashMap::new(),
            budget: MAX_INPUT_BYTES,
            timer_budget: MAX_INPUT_TIMERS,
            buf: vec![0; 64 * 1024],
        }
    }

    /// The peers act, the driver gathers the next batch (if anything
    /// happens), then the guest's actions are carried out and checked —
    /// right after the batch, as [`Driver::serve`] does, so events the
    /// batch had no room for are still waiting.
    async fn turn(&mut self, turn: &Turn) {
        for op in &turn.peers {
            self.peer_op(op);
        }
        self.next_batch(IDLE_POLLS).await;
        let mut actions = Vec::with_capacity(turn.actions.len());
        for act in &turn.actions {
            self.action(act, &mut actions);
        }
        let before: HashSet<u64> = self.driver.queued().map(|(id, _)| id).collect();
        let closing: HashSet<u64> = actions
            .iter()
            .filter_map(|action| match action {
                Action::Close(id) => Some(*id),
                _ => None,
            })
            .collect();
        self.driver.apply(actions);
        self.check_applied(&before, &closing);
    }

    /// The end of the input: connects in flight are answered, limit closes
    /// reported; then every peer resets (no TIME_WAIT left behind).
    async fn finish(&mut self) {
        while self.next_batch(IDLE_POLLS).await {}
        let mut waited = 0;
        while self.driver.pending_connects() > 0 && waited < SETTLE_POLLS {
            while self.next_batch(1).await {}
            waited += 1;
        }
        assert!(
            self.dropped_while_sending.is_empty(),
            "connections dropped while sending without a `closed` event: {:?}",
            self.dropped_while_sending
        );
        if self.driver.pending_connects() == 0 {
            let unanswered: Vec<_> = self.connecting.iter().filter(|(_, n)| **n > 0).collect();
            assert!(
                unanswered.is_empty(),
                "connects never answered: {unanswered:?}"
            );
        }
        for peer in &mut self.peers {
            if let Some(stream) = peer.stream.take() {
                reset(stream);
            }
        }
    }

    /// One thing a peer does.
    fn peer_op(&mut self, op: &PeerOp) {
        let (PeerOp::Write { peer, .. }
        | PeerOp::Read { peer }
        | PeerOp::Shutdown { peer }
        | PeerOp::Reset { peer }) = op;
        if self.peers.is_empty() {
            return;
        }
        let index = usize::from(*peer) % self.peers.len();
        let Some(stream) = self.peers[index].stream.as_ref() else {
            return;
        };
        match op {
            PeerOp::Write { len, .. } => {
                let len = usize::from(*len).min(self.budget);
                self.budget -= len;
                let bytes = vec![b'p'; len];
                let _ = stream.try_write(&bytes);
            }
            PeerOp::Read { .. } => self.peer_read(index),
            PeerOp::Shutdown { .. } => {
                let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
            }
            PeerOp::Reset { .. } => {
                if let Some(stream) = self.peers[index].stream.take() {
                    reset(stream);
                }
            }
        }
    }

    /// Reads what arrived at peer `index`: never more than the guest sent
    /// to its connection.
    fn peer_read(&mut self, index: usize) {
        let Some(stream) = self.peers[index].stream.as_ref() else {
            return;
        };
        let mut got = 0;
        loop {
            match stream.try_read(&mut self.buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        if let Some(id) = self.peers[index].id {
            let read = self.read.entry(id).or_default();
            *read += got;
            let sent = self.sent.get(&id).copied().unwrap_or_default();
            assert!(
                *read <= sent,
                "connection {id}: its peer read {read} bytes, the guest sent {sent}"
            );
        }
    }

    /// Lets the driver gather as [`Driver::serve`] does until it gives a
    /// batch, which is checked (`true`), or stayed pending `idle` times in
    /// a row with the runtime's I/O polled between (`false`: loopback
    /// bytes and connects are there at once, no time needs to pass).
    async fn next_batch(&mut self, idle: usize) -> bool {
        let mut pending = 0;
        while pending < idle {
            let polled = std::future::poll_fn(|cx| {
                self.accept_outbound(cx);
                Poll::Ready(self.driver.poll_batch(cx, &mut self.rx))
            });
            match tokio::task::coop::unconstrained(polled).await {
                Poll::Ready(Some(batch)) => {
                    self.check_batch(batch);
                    return true;
                }
                Poll::Ready(None) => panic!("the instance ended while its channel is open"),
                Poll::Pending => {
                    pending += 1;
                    tokio::task::yield_now().await;
                }
            }
        }
        false
    }

    /// Takes the connections the driver opened to the listener as peers.
    fn accept_outbound(&mut self, cx: &mut std::task::Context<'_>) {
        while let Poll::Ready(Ok((stream, remote))) = self.listener.poll_accept(cx) {
            self.peers.push(Peer {
                stream: Some(stream),
                remote: remote.to_string(),
                id: None,
            });
        }
    }

    /// What the world promises of a batch.
    fn check_batch(&mut self, batch: Vec<Event>) {
        assert!(!batch.is_empty(), "an empty batch");
        assert!(
            batch.len() <= MAX_BATCH_EVENTS,
            "a batch of {} events (at most {MAX_BATCH_EVENTS})",
            batch.len()
        );
        for event in batch {
            self.check_event(event);
        }
    }

    fn check_event(&mut self, event: Event) {
        match event {
            Event::Opened(info) => {
                assert!(
                    self.clients.contains(&info.id),
                    "opened {}: not a client",
                    info.id
                );
                self.opened_conn(info.id);
            }
            Event::Connected(connected) => {
                let token = connected.token;
                let id = connected.info.id;
                assert!(
                    self.allow_loopback,
                    "connect {token} opened {id} though the policy allows nothing"
                );
                let peer: SocketAddr = connected.info.peer.parse().expect("a peer address");
                let listener = self.listener.local_addr().expect("the listener's address");
                assert!(
                    peer.ip().to_canonical() == listener.ip() && peer.port() == listener.port(),
                    "connect {token} reached {peer}, which the policy refuses"
                );
                self.answered(token);
                self.opened_conn(id);
                if let Some(p) = self
                    .peers
                    .iter_mut()
                    .find(|p| p.id.is_none() && p.remote == connected.info.local)
                {
                    p.id = Some(id);
                }
            }
            Event::ConnectFailed(failed) => {
                assert!(
                    !failed.reason.is_empty(),
                    "a connect failed without a reason"
                );
                self.answered(failed.token);
            }
            Event::Received(received) => {
                assert!(!received.bytes.is_empty(), "an empty `received`");
                self.live(received.conn, "received");
            }
            Event::Ended(id) => self.live(id, "ended"),
            Event::Writable(id) => self.live(id, "writable"),
            Event::Closed(closed) => {
                let id = closed.conn;
                self.live(id, "closed");
                if self.dropped_while_sending.remove(&id) {
                    let why = &closed.reason;
                    assert!(
                        matches!(why, CloseReason::Limit(_))
                            || matches!(why, CloseReason::Aborted(w) if w.starts_with("writing failed")),
                        "connection {id}, dropped while sending, closed with {why:?}"
                    );
                }
                self.gone_conn(id);
            }
            Event::Timer(token) => assert!(
                self.timers_set.contains(&token)
                    || self
                        .timer_ranges
                        .iter()
                        .any(|(first, count)| token.wrapping_sub(*first) < *count),
                "timer {token} fired, never set"
            ),
        }
    }

    /// An event about connection `id` (`what`): the guest heard it opened,
    /// and not closed.
    fn live(&self, id: u64, what: &str) {
        assert!(self.opened.contains(&id), "{what} for {id}, never opened");
        assert!(!self.gone.contains(&id), "{what} for {id}, already closed");
    }

    fn opened_conn(&mut self, id: u64) {
        assert!(self.opened.insert(id), "connection {id} opened twice");
        self.open.push(id);
    }

    fn gone_conn(&mut self, id: u64) {
        if self.gone.insert(id) {
            self.open.retain(|open| *open != id);
            self.gone_list.push(id);
        }
    }

    fn answered(&mut self, token: u64) {
        let pending = self.connecting.entry(token).or_default();
        assert!(
            *pending > 0,
            "connect {token} answered more often than asked"
        );
        *pending -= 1;
    }

    /// Adds the WIT actions `act` stands for to `actions`, recording what
    /// the guest asked.
    fn action(&mut self, act: &Act, actions: &mut Vec<Action>) {
        let action = match act {
            Act::Send { conn, len } => {
                let conn = self.conn(*conn);
                let len = usize::try_from(*len).unwrap_or(usize::MAX).min(self.budget);
                self.budget -= len;
                *self.sent.entry(conn).or_default() += len;
                Action::Send(SendAction {
                    conn,
                    bytes: vec![b'g'; len],
                })
            }
            Act::Shutdown(conn) => Action::Shutdown(self.conn(*conn)),
            Act::Close(conn) => {
                let id = self.conn(*conn);
                if self.opened.contains(&id) {
                    self.gone_conn(id);
                }
                Action::Close(id)
            }
            Act::Pause(conn) => Action::Pause(self.conn(*conn)),
            Act::Resume(conn) => Action::Resume(self.conn(*conn)),
            Act::SetTimer { token, after_ms } => {
                self.timers_set.insert(token.0);
                Action::SetTimer(Timer {
                    token: token.0,
                    after_ms: *after_ms,
                })
            }
            Act::SetTimers {
                first,
                count,
                after_ms,
            } => return self.set_timers(*first, usize::from(*count), *after_ms, actions),
            Act::FillTimers { first, after_ms } => {
                return self.set_timers(*first, MAX_TIMERS + 1, *after_ms, actions);
            }
            Act::CancelTimer(token) => Action::CancelTimer(token.0),
            Act::Connect { token, host, port } => {
                *self.connecting.entry(token.0).or_default() += 1;
                let listener = self.listener.local_addr().expect("the listener's address");
                Action::Connect(Connect {
                    token: token.0,
                    host: match host {
                        Host::Listener => listener.ip().to_string(),
                        Host::Text(text) => text.clone(),
                    },
                    port: port.unwrap_or(listener.port()),
                })
            }
        };
        actions.push(action);
    }

    /// Adds `count` `set-timer`s with tokens from `first` (within the
    /// input's budget of timers) to `actions`.
    fn set_timers(&mut self, first: u64, count: usize, after_ms: u32, actions: &mut Vec<Action>) {
        let count = count.min(self.timer_budget);
        self.timer_budget -= count;
        let count = count as u64;
        self.timer_ranges.push((first, count));
        actions.extend((0..count).map(|i| {
            Action::SetTimer(Timer {
                token: first.wrapping_add(i),
                after_ms,
            })
        }));
    }

    /// The id `conn` names now.
    fn conn(&self, conn: ConnRef) -> u64 {
        let pick = |ids: &[u64], i: u8| ids.get(usize::from(i) % ids.len().max(1)).copied();
        match conn {
            ConnRef::Open(i) => pick(&self.open, i).unwrap_or(self.first_id),
            ConnRef::Gone(i) => pick(&self.gone_list, i)
                .or_else(|| pick(&self.open, i))
                .unwrap_or(self.first_id),
            ConnRef::Guess(i) => self.first_id.wrapping_add(u64::from(i)),
            ConnRef::Any(id) => id,
        }
    }

    /// After the guest's actions: no open connection holds the hard cap
    /// queued, the timers stay bounded, and a connection the driver
    /// dropped (other than by the guest's `close`) went at the send cap or
    /// on a failed write, and must be reported so.
    fn check_applied(&mut self, before: &HashSet<u64>, closing: &HashSet<u64>) {
        let mut after = HashSet::new();
        for (id, queued) in self.driver.queued() {
            assert!(
                queued < SEND_HARD_CAP,
                "connection {id} holds {queued} bytes queued (hard cap {SEND_HARD_CAP})"
            );
            after.insert(id);
        }
        for id in before.difference(&after) {
            if !closing.contains(id) {
                self.dropped_while_sending.insert(*id);
            }
        }
        assert!(
            self.driver.pending_timers() <= MAX_TIMERS,
            "{} timers pending (at most {MAX_TIMERS})",
            self.driver.pending_timers()
        );
    }
}

/// Closes a peer's connection with a reset, leaving no TIME_WAIT.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
