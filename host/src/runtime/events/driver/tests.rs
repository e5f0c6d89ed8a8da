//! The driver's batching and closing rules, on real loopback connections.

use std::net::Ipv4Addr;

use tokio::net::TcpListener;

use super::*;
use crate::base::conn::{ConnInfo, Transport, next_conn_id};
use crate::limits::AppLimits;
use crate::runtime::events::bindings::sockgate::events::types::{Connect, Send};
use crate::runtime::events::conn::SEND_HARD_CAP;
use crate::tenant::conns::{AppAccount, ConnTracker, ShardLoad, admit};

/// A driver for an app with `rules` and four outbound sockets.
fn driver(rules: &[&str]) -> Driver {
    let limits = AppLimits {
        max_outbound_sockets: 4,
        ..AppLimits::default()
    };
    let rules: Vec<String> = rules.iter().map(|r| (*r).to_owned()).collect();
    let policy = OutboundPolicy::parse(&rules).unwrap().with_budget(&limits);
    Driver::new(
        Arc::new(AppLog::new("test")),
        Arc::new(policy),
        Duration::from_secs(30),
        0,
        IoProgress::default(),
    )
}

/// The batches the driver gathers until it stays pending (the
/// runtime's I/O polled between tries).
async fn batches(driver: &mut Driver, rx: &mut mpsc::Receiver<Assigned>) -> Vec<Vec<Event>> {
    let mut batches = Vec::new();
    let mut idle = 0;
    while idle < 4 {
        let polled = std::future::poll_fn(|cx| Poll::Ready(driver.poll_batch(cx, rx))).await;
        match polled {
            Poll::Ready(Some(batch)) => {
                idle = 0;
                batches.push(batch);
            }
            Poll::Ready(None) => break,
            Poll::Pending => {
                idle += 1;
                tokio::task::yield_now().await;
            }
        }
    }
    batches
}

/// A loopback client connection, admitted and assigned as the gateway
/// does it (`apps::app::assign`, from the halves of the accepted stream);
/// returns the client's end and the connection's id.
async fn client(tx: &mpsc::Sender<Assigned>) -> (tokio::net::TcpStream, u64) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    let (stream, peer) = accepted.unwrap();
    let info = ConnInfo {
        id: next_conn_id(),
        transport: Transport::Tcp,
        peer,
        local: stream.local_addr().unwrap(),
        server_name: None,
        alpn: None,
        quic: None,
    };
    let (reader, writer) = stream.into_split();
    let log = Arc::new(AppLog::new("test"));
    let account = AppAccount::new(log, &AppLimits::default());
    let admission = admit(&ConnTracker::new(16), &account, peer.ip()).unwrap();
    let active = Arc::new(ShardLoad::default());
    active.acquire();
    let id = info.id;
    let assigned = Assigned {
        info: info.clone(),
        reader: Box::pin(reader),
        writer: Box::pin(writer),
        guard: admission.finish(info, active, Box::new(|| {})),
    };
    assert!(tx.try_send(assigned).is_ok());
    (client.unwrap(), id)
}

fn connect(token: u64) -> Action {
    Action::Connect(Connect {
        token,
        host: "127.0.0.1".to_owned(),
        port: 9,
    })
}

/// Regression (fuzz target `event_actions`, input
/// `fuzz/corpus/event_actions/refused_connects`): connects refused at
/// once (the socket budget) each added an event to the next batch,
/// with no bound — a guest returning many got a batch far past
/// `MAX_BATCH_EVENTS`. Now the rest waits for the following batches.
#[tokio::test]
async fn events_refused_connects_past_a_batch_go_in_the_next_batches() {
    let (_tx, mut rx) = mpsc::channel(1);
    let mut driver = driver(&[]);
    driver.apply((0..600).map(connect).collect());
    let batches = batches(&mut driver, &mut rx).await;
    assert!(batches.len() >= 3);
    let mut tokens = Vec::new();
    for batch in batches {
        assert!(!batch.is_empty() && batch.len() <= MAX_BATCH_EVENTS);
        for event in batch {
            let Event::ConnectFailed(failed) = event else {
                panic!("not a connect-failed");
            };
            tokens.push(failed.token);
        }
    }
    tokens.sort_unstable();
    assert_eq!(tokens, (0..600).collect::<Vec<_>>(), "each answered once");
}

/// The guest hears nothing more of a connection it closed, not even
/// the `closed` of a limit it hit in the same call, while its other
/// events still wait for a batch.
#[tokio::test]
async fn events_nothing_follows_the_guests_close() {
    let (tx, mut rx) = mpsc::channel(1);
    let mut driver = driver(&[]);
    let (_peer, id) = client(&tx).await;
    let opened = batches(&mut driver, &mut rx).await.concat();
    assert!(matches!(&opened[..], [Event::Opened(info)] if info.id == id));
    let mut actions: Vec<Action> = (0..300).map(connect).collect();
    for _ in 0..2 {
        actions.push(Action::Send(Send {
            conn: id,
            bytes: vec![7; SEND_HARD_CAP / 2 + 1],
        }));
    }
    actions.push(Action::Close(id));
    driver.apply(actions);
    let events = batches(&mut driver, &mut rx).await.concat();
    assert_eq!(events.len(), 300);
    assert!(events.iter().all(|e| matches!(e, Event::ConnectFailed(_))));
}
