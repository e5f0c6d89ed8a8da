//! The chat guest: one instance holds the room, shared by every connection.
//! The same test runs against the chat guest of every language that has one.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::languages::{Lang, language_tests};
use crate::support::{Gateway, TestApp};

const TIMEOUT: Duration = Duration::from_secs(30);

language_tests! {
    languages: [rust: Rust, python: Python, js: Js, ts: Ts, go: Go],
    tests: [a_line_reaches_every_other_client_and_not_the_sender],
}

struct Client {
    lines: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    addr: String,
}

impl Client {
    /// Connects and waits for the welcome line, after which the client is
    /// in the room.
    async fn join(addr: std::net::SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let local = stream.local_addr().unwrap().to_string();
        let (rd, writer) = stream.into_split();
        let mut client = Self {
            lines: BufReader::new(rd),
            writer,
            addr: local,
        };
        let welcome = client.next_line().await;
        assert!(
            welcome.starts_with(&format!("* welcome {}", client.addr)),
            "unexpected welcome: {welcome:?}"
        );
        client
    }

    async fn say(&mut self, text: &str) {
        self.writer
            .write_all(format!("{text}\n").as_bytes())
            .await
            .unwrap();
    }

    async fn next_line(&mut self) -> String {
        let mut line = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.lines.read_line(&mut line))
            .await
            .expect("no line arrived")
            .unwrap();
        assert!(n > 0, "connection closed while waiting for a line");
        line
    }
}

async fn a_line_reaches_every_other_client_and_not_the_sender(lang: Lang) {
    let gateway = Gateway::start(&[TestApp {
        name: "chat",
        guest: &lang.guest("chat"),
        extra: "instances = 1",
    }]);
    let addr = gateway.addr("chat");
    let mut a = Client::join(addr).await;
    let mut b = Client::join(addr).await;
    let mut c = Client::join(addr).await;

    a.say("hello from a").await;
    let expected = format!("{}: hello from a\n", a.addr);
    assert_eq!(b.next_line().await, expected);
    assert_eq!(c.next_line().await, expected);

    // A's next line is B's: it never got its own line back.
    b.say("hello from b").await;
    let expected = format!("{}: hello from b\n", b.addr);
    assert_eq!(a.next_line().await, expected);
    assert_eq!(c.next_line().await, expected);

    // C leaves; A and B carry on undisturbed.
    drop(c);
    assert!(
        gateway.stderr.wait_for(TIMEOUT, |t| t.contains("left")),
        "the guest did not notice the client leaving"
    );
    a.say("after c left").await;
    assert_eq!(b.next_line().await, format!("{}: after c left\n", a.addr));
    b.say("still here").await;
    assert_eq!(a.next_line().await, format!("{}: still here\n", b.addr));
}
