//! Sending on one connection: written at once, queued only when the
//! transport does not take it, in order either way.

use std::borrow::Cow;
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use super::*;

/// A connection whose transport takes `room` bytes before it blocks;
/// returns it, the client's end and the ready list its waker reports to.
fn conn(room: usize) -> (EventConn, tokio::io::DuplexStream, Arc<ReadyList>) {
    let (client, server) = tokio::io::duplex(room);
    let (reader, writer) = tokio::io::split(server);
    let ready = Arc::new(ReadyList::default());
    let waker = ConnWaker::new(7, ready.clone());
    let conn = EventConn::new(Box::pin(reader), Box::pin(writer), None, None, waker);
    (conn, client, ready)
}

#[tokio::test]
async fn a_send_is_written_at_once_and_only_what_the_transport_leaves_is_queued() {
    let (mut conn, mut client, ready) = conn(4);
    let sent = conn.send(Cow::Borrowed(b"0123456789"));
    assert!(sent.failed.is_none() && !sent.over_cap && !sent.writable);
    assert_eq!(
        (conn.queue.len(), conn.queued),
        (1, 6),
        "4 bytes went at once"
    );
    // A send behind queued bytes waits its turn, whatever room there is.
    conn.send(Cow::Owned(b"ab".to_vec()));
    assert_eq!((conn.queue.len(), conn.queued), (2, 8));

    let mut got = Vec::new();
    while got.len() < 12 {
        let waiting = !conn.queue.is_empty();
        let mut buf = [0; 4];
        let n = client.read(&mut buf).await.unwrap();
        got.extend_from_slice(&buf[..n]);
        // With bytes waiting, the transport woke the connection for the
        // room it made.
        let mut woken = Vec::new();
        ready.take(&mut woken);
        assert_eq!(woken, if waiting { vec![7] } else { vec![] });
        conn.waker().taken();
        assert!(conn.flush().failed.is_none());
    }
    assert_eq!(got, b"0123456789ab");
    assert!(conn.queue.is_empty() && conn.queued == 0);
}

#[tokio::test]
async fn a_send_the_transport_takes_whole_queues_nothing() {
    let (mut conn, mut client, _ready) = conn(64);
    conn.send(Cow::Borrowed(b"hello"));
    assert!(conn.queue.is_empty() && conn.queued == 0);
    let mut buf = [0; 5];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
}
