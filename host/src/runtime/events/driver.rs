//! The event loop of one event-world instance: one task owns the store and
//! every connection of the instance. Each turn it gathers what is ready —
//! new connections, bytes and ends from the connections whose transport
//! woke them ([`ReadyList`]), fired timers, finished connects — into one
//! batch, calls the guest's `handle` once, and carries out the actions it
//! returns. No task per connection and no channel hop per message: a
//! message costs a read, its share of one call into the guest, and a write.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use wasmtime::Store;

use super::bindings::{
    Action, CloseReason, Closed, ConnectFailed, Event, Received, event_conn, received_bytes,
    wit_info,
};
use super::bindings_v2::{self, Unpacked};
use super::conn::{ConnWaker, EventConn, READ_CHUNK, ReadOutcome};
use super::contract::{Contract, Reply};
use super::outbound::ConnectRefused;
use super::ready::ReadyList;
use super::spare::SpareBuffers;
use super::timers::Timers;
use crate::runtime::host_state::HostState;
use crate::runtime::instance::{Assigned, Ended};
use crate::runtime::supervisor::{IoProgress, Meter};
use crate::tenant::guest_budget::SocketLease;
use crate::tenant::hibernation::{next_check, quiet_since};
use crate::tenant::logs::{AppLog, EventKind};
use crate::tenant::outbound::OutboundPolicy;

/// Most events in one call. Threat: a batch so large that lowering it
/// into the guest takes its memory, or one call runs for long.
pub(crate) const MAX_BATCH_EVENTS: usize = 256;
/// Most bytes received passed in one call (the same threat).
pub(crate) const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Most bytes read from one connection per turn, so one busy client does
/// not fill a batch its neighbours are waiting for.
const MAX_TURN_BYTES: usize = 64 * 1024;
/// Batches served in a row before the task lets the other tasks of its
/// thread run: the loop runs outside tokio's per-poll operation budget
/// (which would make reads past its 128th operation fail spuriously,
/// re-queueing their connections), so it yields on its own.
const BATCHES_BEFORE_YIELD: u32 = 8;

/// The instance's connections by id. The ids are the gateway's own (a
/// counter): only the gateway inserts keys, so a fast fixed-seed hash is
/// safe (a guest naming other ids in its actions only looks them up); SipHash was 2 % of a message's cost at batch 64.
type ConnMap = HashMap<u64, EventConn, foldhash::fast::FixedState>;

/// A connect in progress: the guest's token and the outcome.
type Connecting =
    Pin<Box<dyn Future<Output = (u64, Result<(TcpStream, SocketLease), ConnectRefused>)> + Send>>;

/// What a turn of gathering ended with.
enum Step {
    /// A batch of events is ready for the guest.
    Batch,
    /// The instance is done: its channel closed and its connections
    /// finished (or the drain deadline passed).
    Done,
}

/// The guest a [`Driver`] serves: its handler (by the version of the
/// contract it speaks), and the meter whose activations the driver starts,
/// one per call ([`crate::runtime::supervisor::Activation::PerCall`];
/// `None` when guests are not supervised).
pub(crate) struct Guest<'a> {
    pub(crate) calls: Option<&'a Meter>,
    pub(crate) contract: Contract<'a>,
}

/// The instance's connections, timers and connects, and the batch being
/// gathered.
pub(crate) struct Driver {
    log: Arc<AppLog>,
    policy: Arc<OutboundPolicy>,
    /// How long connections may go on once the channel closed.
    drain: Duration,
    index: u32,
    conns: ConnMap,
    ready: Arc<ReadyList>,
    /// Ids taken from the ready list this turn.
    woken: Vec<u64>,
    /// Ids to service on the next turn without a wake-up: new connections,
    /// those the guest acted on, those with more to read.
    carry: Vec<u64>,
    /// The events gathered and not yet given to the guest, oldest first:
    /// the next batch is at most [`MAX_BATCH_EVENTS`] of them (the guest's
    /// actions may add more than a batch holds, e.g. refused connects).
    events: Vec<Event>,
    /// Bytes of the `received` events in `events`.
    batch_bytes: usize,
    timers: Timers,
    fired: Vec<u64>,
    connects: FuturesUnordered<Connecting>,
    buf: Box<[u8]>,
    /// Buffers of `received` events the guest was given, for the next.
    spare: SpareBuffers,
    progress: IoProgress,
    /// Once the channel closed: the drain deadline.
    draining: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The guest was told once that it set too many timers.
    timers_refused: bool,
}

impl Driver {
    /// A driver for instance `index` of the app with `log` (its events),
    /// `policy` (its outbound connects) and `drain` (how long connections
    /// go on once the instance is retired), setting `progress` whenever
    /// bytes move. It needs nothing of the guest, so the fuzz target
    /// (`crate::fuzzing::event_actions`) drives the same driver without one.
    pub(crate) fn new(
        log: Arc<AppLog>,
        policy: Arc<OutboundPolicy>,
        drain: Duration,
        index: u32,
        progress: IoProgress,
    ) -> Self {
        Self {
            log,
            policy,
            drain,
            index,
            conns: ConnMap::default(),
            ready: Arc::new(ReadyList::default()),
            woken: Vec::new(),
            carry: Vec::new(),
            events: Vec::new(),
            batch_bytes: 0,
            timers: Timers::default(),
            fired: Vec::new(),
            connects: FuturesUnordered::new(),
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
            spare: SpareBuffers::default(),
            progress,
            draining: None,
            timers_refused: false,
        }
    }

    /// Serves connections from `rx` until the channel closes and they have
    /// drained, or the instance was quiet ([`Driver::is_quiet`]) for
    /// `hibernate_after`; an error is a trap, with the connections it ends.
    pub(crate) async fn serve(
        mut self,
        store: &mut Store<HostState>,
        guest: Guest<'_>,
        rx: &mut mpsc::Receiver<Assigned>,
        hibernate_after: Option<Duration>,
    ) -> Result<Ended, (wasmtime::Error, usize)> {
        let Guest {
            calls,
            mut contract,
        } = guest;
        let mut in_a_row = 0;
        // One timer per instance, reset when it fires; a batch is traffic.
        let idle_check = tokio::time::sleep(hibernate_after.unwrap_or(Duration::MAX / 4));
        tokio::pin!(idle_check);
        let mut last_batch_ms = crate::base::clock::coarse_now_ms();
        loop {
            let mut waited = false;
            let batch = std::future::poll_fn(|cx| {
                let batch = self.poll_batch(cx, rx);
                waited |= batch.is_pending();
                batch
            });
            // Polled without tokio's budget: one turn touches as many
            // connections as are ready (bounded by the batch).
            let batch = tokio::select! {
                batch = tokio::task::coop::unconstrained(batch) => batch,
                () = &mut idle_check, if hibernate_after.is_some() => {
                    let quiet = self.is_quiet(rx).then(|| quiet_since(last_batch_ms));
                    match next_check(quiet, hibernate_after.unwrap_or_default()) {
                        None => return Ok(Ended::Hibernate),
                        Some(wait) => idle_check.as_mut().reset(tokio::time::Instant::now() + wait),
                    }
                    continue;
                }
            };
            last_batch_ms = crate::base::clock::coarse_now_ms();
            in_a_row = if waited { 0 } else { in_a_row + 1 };
            if in_a_row >= BATCHES_BEFORE_YIELD {
                in_a_row = 0;
                tokio::task::yield_now().await;
            }
            let Some(mut batch) = batch else {
                return Ok(Ended::Closed);
            };
            if let Some(meter) = calls {
                meter.start_call(store);
            }
            let reply = contract
                .call(&mut *store, &mut batch, &mut self.spare)
                .await
                .map_err(|error| (error, self.conns.len()))?;
            self.recycle(batch);
            self.apply_reply(reply);
        }
    }

    /// No pending guest work: no connection (client or outbound, open or
    /// queued), no timer set, no connect in progress, no event waiting.
    fn is_quiet(&self, rx: &mpsc::Receiver<Assigned>) -> bool {
        self.conns.is_empty()
            && rx.is_empty()
            && self.timers.len() == 0
            && self.connects.is_empty()
            && self.events.is_empty()
            && self.carry.is_empty()
            && self.draining.is_none()
    }

    /// One turn of gathering: the next batch for the guest (at most
    /// [`MAX_BATCH_EVENTS`] events, never empty), pending until there is
    /// one, or `None` once the instance is done. [`Driver::serve`] calls
    /// the guest with it; the fuzz target checks it instead.
    pub(crate) fn poll_batch(
        &mut self,
        cx: &mut Context<'_>,
        rx: &mut mpsc::Receiver<Assigned>,
    ) -> Poll<Option<Vec<Event>>> {
        self.poll_gather(cx, rx).map(|step| match step {
            Step::Batch => Some(self.take_batch()),
            Step::Done => None,
        })
    }

    /// The open connections and the bytes queued for each: what the
    /// fuzz target checks against [`super::conn::SEND_HARD_CAP`].
    #[cfg(feature = "fuzzing")]
    pub(crate) fn queued(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.conns.iter().map(|(id, conn)| (*id, conn.queued()))
    }

    /// Timers pending (bounded by [`super::timers::MAX_TIMERS`]).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    /// Outbound connects not finished yet.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn pending_connects(&self) -> usize {
        self.connects.len()
    }

    /// Gathers a batch: new connections, finished connects, fired timers,
    /// then the connections that are ready.
    fn poll_gather(
        &mut self,
        cx: &mut Context<'_>,
        rx: &mut mpsc::Receiver<Assigned>,
    ) -> Poll<Step> {
        self.ready.register(cx.waker());
        if self.draining.is_none() {
            while !self.batch_full() {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(assigned)) => self.open(assigned),
                    Poll::Ready(None) => {
                        self.draining = Some(Box::pin(tokio::time::sleep(self.drain)));
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        while !self.batch_full() {
            match self.connects.poll_next_unpin(cx) {
                Poll::Ready(Some((token, outcome))) => self.connected(token, outcome),
                _ => break,
            }
        }
        let room = MAX_BATCH_EVENTS.saturating_sub(self.events.len());
        self.timers.poll_fired(cx, &mut self.fired, room);
        for token in self.fired.drain(..) {
            self.events.push(Event::Timer(token));
        }
        // Connections carried from the last turn, then those woken since.
        self.ready.take(&mut self.woken);
        let mut ids = std::mem::take(&mut self.carry);
        ids.append(&mut self.woken);
        for id in ids.drain(..) {
            if self.batch_full() {
                self.carry.push(id);
            } else {
                self.service(id);
            }
        }
        self.woken = ids;
        if !self.events.is_empty() {
            return Poll::Ready(Step::Batch);
        }
        if !self.carry.is_empty() {
            // Connections that read up to their share: look again at once.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(deadline) = self.draining.as_mut() {
            if self.conns.is_empty() && self.connects.is_empty() {
                return Poll::Ready(Step::Done);
            }
            if deadline.as_mut().poll(cx).is_ready() {
                self.end_drain();
                return Poll::Ready(Step::Done);
            }
        }
        Poll::Pending
    }

    /// A new client connection: the guest hears `opened`, and the
    /// connection is serviced this turn (its first bytes may be there).
    fn open(&mut self, assigned: Assigned) {
        let Assigned {
            info,
            reader,
            writer,
            guard,
        } = assigned;
        let waker = ConnWaker::new(info.id, self.ready.clone());
        let conn = EventConn::new(reader, writer, Some(guard), None, waker);
        self.conns.insert(info.id, conn);
        self.carry.push(info.id);
        self.events.push(Event::Opened(wit_info(&info)));
    }

    /// Writes what is queued, then reads, for one connection; records what
    /// happened as events.
    fn service(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.waker().taken();
        let flushed = conn.flush();
        if flushed.writable {
            self.events.push(Event::Writable(id));
        }
        if let Some(reason) = flushed.failed {
            self.remove(id, reason);
            return;
        }
        let mut got: Vec<u8> = Vec::new();
        // Reading straight into `got` (a busy connection's share).
        let mut direct = false;
        let mut ended = None;
        loop {
            // A small read is copied out of the scratch buffer into a
            // spare buffer. One that fills the scratch buffer means more
            // is waiting: the event's bytes get room for the connection's
            // share of the turn, and the next reads go straight into them.
            let outcome = if direct {
                conn.read_appending(&mut got)
            } else {
                conn.read(&mut self.buf)
            };
            match outcome {
                ReadOutcome::Bytes(n) => {
                    if !direct {
                        if got.is_empty() && n == self.buf.len() {
                            let share = MAX_TURN_BYTES
                                .min(MAX_BATCH_BYTES.saturating_sub(self.batch_bytes))
                                .max(n);
                            got.reserve_exact(share);
                            direct = share > n;
                        } else if got.capacity() == 0 {
                            got = self.spare.take();
                        }
                        got.extend_from_slice(&self.buf[..n]);
                    }
                    if got.len() >= MAX_TURN_BYTES
                        || self.batch_bytes + got.len() >= MAX_BATCH_BYTES
                    {
                        // More may be ready: this connection's share of the
                        // turn is used, it goes on next turn.
                        self.carry.push(id);
                        break;
                    }
                }
                ReadOutcome::Ended => {
                    ended = Some(None);
                    break;
                }
                ReadOutcome::Failed(reason) => {
                    ended = Some(Some(reason));
                    break;
                }
                ReadOutcome::Nothing => break,
            }
        }
        let finished = conn.finished();
        if !got.is_empty() {
            self.batch_bytes += got.len();
            self.progress.store(true, Ordering::Relaxed);
            self.events.push(Event::Received(Received {
                conn: id,
                bytes: got,
            }));
        }
        match ended {
            Some(Some(reason)) => self.remove(id, reason),
            Some(None) => {
                self.events.push(Event::Ended(id));
                if finished {
                    self.remove(id, CloseReason::Done);
                }
            }
            None if finished => self.remove(id, CloseReason::Done),
            None => {}
        }
    }

    /// A connection is gone: the guest hears `closed`, its counts go.
    fn remove(&mut self, id: u64, reason: CloseReason) {
        if self.conns.remove(&id).is_some() {
            self.events.push(Event::Closed(Closed { conn: id, reason }));
        }
    }

    /// Carries out the guest's actions, in order: what a hostile guest
    /// controls entirely (the fuzz target calls it with any list).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn apply(&mut self, actions: Vec<Action>) {
        self.apply_reply(Reply::V1(actions));
    }

    /// Carries out a guest's reply, in order, whichever version of the
    /// contract it came in: a 0.2.0 reply's sends are written from its
    /// data without a copy each.
    fn apply_reply(&mut self, reply: Reply) {
        let mut closed = Vec::new();
        match reply {
            Reply::V1(actions) => {
                for action in actions {
                    self.act(action, &mut closed);
                }
            }
            Reply::V2(reply) => bindings_v2::unpack(reply, |action| match action {
                Unpacked::Send { conn, bytes } => self.send(conn, Cow::Borrowed(bytes)),
                Unpacked::Other(action) => self.act(action, &mut closed),
            }),
        }
        self.forget_events_of(&closed);
    }

    /// Carries out one action; a connection the guest closed joins
    /// `closed`.
    fn act(&mut self, action: Action, closed: &mut Vec<u64>) {
        match action {
            Action::Send(send) => self.send(send.conn, Cow::Owned(send.bytes)),
            Action::Shutdown(id) => self.touch(id, EventConn::shutdown),
            Action::Close(id) => {
                if let Some(conn) = self.conns.remove(&id) {
                    conn.abort();
                }
                closed.push(id);
            }
            Action::Pause(id) => self.touch(id, |conn| conn.set_paused(true)),
            Action::Resume(id) => self.touch(id, |conn| conn.set_paused(false)),
            Action::SetTimer(timer) => {
                if !self.timers.set(timer.token, timer.after_ms) {
                    self.refuse_timer();
                }
            }
            Action::CancelTimer(token) => self.timers.cancel(token),
            Action::Connect(connect) => self.connect(connect.token, connect.host, connect.port),
        }
    }

    /// The guest closed connections `closed`: events of them still
    /// waiting for a batch (only when more than a batch was gathered) are
    /// dropped, so the guest hears nothing more of a connection it closed
    /// — except that a `connected` not told yet becomes a
    /// `connect-failed`, so every connect is still answered once. One
    /// pass for all of a call's closes.
    fn forget_events_of(&mut self, closed: &[u64]) {
        if closed.is_empty() || self.events.is_empty() {
            return;
        }
        let closed: std::collections::HashSet<u64> = closed.iter().copied().collect();
        self.events.retain_mut(|event| match event {
            Event::Connected(connected) if closed.contains(&connected.info.id) => {
                *event = Event::ConnectFailed(ConnectFailed {
                    token: connected.token,
                    reason: format!(
                        "connection {} was closed by the guest before it was reported",
                        connected.info.id
                    ),
                });
                true
            }
            _ => event_conn(event).is_none_or(|id| !closed.contains(&id)),
        });
        self.batch_bytes = self.events.iter().map(received_bytes).sum();
    }

    /// Applies `change` to connection `id` (if it is open) and services it
    /// on the next turn.
    fn touch(&mut self, id: u64, change: impl FnOnce(&mut EventConn)) {
        if let Some(conn) = self.conns.get_mut(&id) {
            change(conn);
            self.carry.push(id);
        }
    }

    /// Sends the guest's bytes (written now when the transport takes
    /// them, else queued); a connection past the hard cap is closed. Not
    /// serviced next turn for it: what is left is written when the
    /// transport wakes the connection.
    fn send(&mut self, id: u64, bytes: Cow<'_, [u8]>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let sent = conn.send(bytes);
        if let Some(reason) = sent.failed {
            self.remove(id, reason);
            return;
        }
        if !sent.over_cap {
            return;
        }
        if let Some(conn) = self.conns.remove(&id) {
            conn.abort();
        }
        let limit = super::conn::SEND_HARD_CAP;
        self.log.event(
            Some(self.index),
            EventKind::LimitHit {
                limit: "event send queue",
                detail: format!(
                    "closed connection {id}: the guest queued {limit} bytes the client had not \
                     taken; wait for `writable` after the high-water mark"
                ),
            },
        );
        self.events.push(Event::Closed(Closed {
            conn: id,
            reason: CloseReason::Limit(format!(
                "the send queue passed its hard cap ({limit} bytes)"
            )),
        }));
    }

    /// Records, once per instance, that the guest set too many timers.
    fn refuse_timer(&mut self) {
        if std::mem::replace(&mut self.timers_refused, true) {
            return;
        }
        self.log.event(
            Some(self.index),
            EventKind::LimitHit {
                limit: "event timers",
                detail: format!(
                    "the guest has {} timers pending; further ones are ignored",
                    self.timers.len()
                ),
            },
        );
    }

    /// The drain deadline passed: close what is left.
    fn end_drain(&mut self) {
        let closed = self.conns.len();
        for (_, conn) in self.conns.drain() {
            conn.abort();
        }
        self.log
            .event(Some(self.index), EventKind::DrainDeadline { closed });
    }
}

mod batch;
mod connects;
#[cfg(test)]
mod tests;
