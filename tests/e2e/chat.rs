//! The chat guest: one instance holds the room, shared by every connection.
//! The same test runs against the chat guest of every language that has one.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::languages::{Lang, language_tests};
use crate::support::{Gateway, ScratchDir, TestApp, guest, shared_cache_dir};

const TIMEOUT: Duration = Duration::from_secs(30);

language_tests! {
    languages: [
        rust: Rust,
        python: Python,
        js: Js,
        ts: Ts,
        go: Go,
        rust_events: RustEvents,
        c_events: CEvents,
        python_events: PythonEvents,
        js_events: JsEvents,
    ],
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

/// `sockgate run chat.wasm`, with no `--instances`: one instance, so one
/// room for every client (with an instance per core, clients would land in
/// different rooms).
#[tokio::test]
async fn sockgate_run_serves_one_room_to_every_client() {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sockgate"));
    command
        .arg("run")
        .arg(guest("chat"))
        .args(["--listen", "127.0.0.1:0", "--cache-dir"])
        .arg(shared_cache_dir());
    let gateway = Gateway::spawn(command, ScratchDir::new("run-chat"));
    let addr = gateway.addr("chat");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::join(addr).await);
    }
    for speaker in 0..clients.len() {
        let text = format!("line {speaker}");
        clients[speaker].say(&text).await;
        let expected = format!("{}: {text}\n", clients[speaker].addr);
        for listener in (0..clients.len()).filter(|&i| i != speaker) {
            assert_eq!(
                clients[listener].next_line().await,
                expected,
                "client {listener} missed client {speaker}'s line"
            );
        }
    }
}
