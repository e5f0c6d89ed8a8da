//! The guest's outbound connects ([`Driver`]'s `connect` actions): each
//! holds one of the app's outbound sockets from the start, runs under the
//! app's outbound policy, and is answered once, as `connected` (the new
//! connection joins the instance's) or `connect-failed`.

use tokio::net::TcpStream;

use super::Driver;
use crate::base::conn::{next_conn_id, socket_addr_text};
use crate::runtime::events::bindings::{
    ConnectFailed, Connected, Event, WitConnInfo, WitTransport,
};
use crate::runtime::events::conn::{ConnWaker, EventConn};
use crate::runtime::events::outbound::{self, ConnectRefused};
use crate::tenant::guest_budget::SocketLease;
use crate::tenant::logs::EventKind;

impl Driver {
    /// Starts an outbound connect, holding one of the app's outbound
    /// sockets from now (so pending connects are bounded by that budget).
    pub(super) fn connect(&mut self, token: u64, host: String, port: u16) {
        let policy = self.policy.clone();
        let lease = match policy.budget().open_socket() {
            Ok(lease) => lease,
            Err(refusal) => {
                self.connect_failed(
                    token,
                    ConnectRefused {
                        reason: format!("refused: {refusal}"),
                        limit: Some(refusal.limit()),
                    },
                );
                return;
            }
        };
        self.connects.push(Box::pin(async move {
            let outcome = outbound::connect(policy, host, port)
                .await
                .map(|stream| (stream, lease));
            (token, outcome)
        }));
    }

    /// An outbound connect finished.
    pub(super) fn connected(
        &mut self,
        token: u64,
        outcome: Result<(TcpStream, SocketLease), ConnectRefused>,
    ) {
        let (stream, lease) = match outcome {
            Ok(opened) => opened,
            Err(refused) => return self.connect_failed(token, refused),
        };
        let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
            return self.connect_failed(
                token,
                ConnectRefused {
                    reason: "the connection closed as it opened".to_owned(),
                    limit: None,
                },
            );
        };
        let id = next_conn_id();
        let (reader, writer) = stream.into_split();
        let waker = ConnWaker::new(id, self.ready.clone());
        let conn = EventConn::new(Box::pin(reader), Box::pin(writer), None, Some(lease), waker);
        self.conns.insert(id, conn);
        self.carry.push(id);
        let info = WitConnInfo {
            id,
            transport: WitTransport::Outbound,
            peer: socket_addr_text(peer),
            local: socket_addr_text(local),
            server_name: None,
            alpn: None,
            quic: None,
        };
        self.events
            .push(Event::Connected(Connected { token, info }));
    }

    fn connect_failed(&mut self, token: u64, refused: ConnectRefused) {
        if let Some(limit) = refused.limit {
            self.log.event(
                Some(self.index),
                EventKind::LimitHit {
                    limit,
                    detail: refused.reason.clone(),
                },
            );
        }
        self.events.push(Event::ConnectFailed(ConnectFailed {
            token,
            reason: refused.reason,
        }));
    }
}
