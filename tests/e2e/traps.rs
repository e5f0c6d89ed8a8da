//! A guest that traps: its instance is the failure domain. The instance's
//! connections close, the instance is replaced, new connections are served,
//! and the app's log and events say why.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::{Gateway, TestApp};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn echo_line(stream: &mut TcpStream, line: &str) {
    stream.write_all(line.as_bytes()).await.unwrap();
    let mut back = String::new();
    tokio::time::timeout(TIMEOUT, BufReader::new(&mut *stream).read_line(&mut back))
        .await
        .expect("no echo")
        .unwrap();
    assert_eq!(back, line);
}

/// Waits until the gateway closes `stream` (end of stream or reset).
async fn closed_by_gateway(stream: &mut TcpStream) -> bool {
    let mut buf = [0; 64];
    match tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test]
async fn a_trapped_instance_is_replaced_and_the_log_says_why() {
    let gateway = Gateway::start(&[TestApp {
        name: "hostile",
        guest: "hostile",
        extra: "instances = 1",
    }]);
    let addr = gateway.addr("hostile");
    assert!(
        gateway
            .stderr
            .wait_for_count(TIMEOUT, "instance started", 1)
    );

    // A bystander on the same instance, proven to be served.
    let mut bystander = TcpStream::connect(addr).await.unwrap();
    echo_line(&mut bystander, "hello\n").await;

    let mut attacker = TcpStream::connect(addr).await.unwrap();
    attacker.write_all(b"panic\n").await.unwrap();

    // The whole instance went down: both its connections are closed.
    assert!(
        closed_by_gateway(&mut attacker).await,
        "attacker not closed"
    );
    assert!(
        closed_by_gateway(&mut bystander).await,
        "bystander not closed"
    );

    // The event names the trap, the guest's own stderr says why.
    let stderr = &gateway.stderr;
    assert!(
        stderr.wait_for(TIMEOUT, |t| t.contains("instance trapped")
            && t.contains("wasm trap")
            && t.contains("hostile guest asked to panic")),
        "no trap event with its reason:\n{}",
        stderr.text()
    );
    // A fresh instance took over, and new connections are served.
    assert!(
        stderr.wait_for_count(TIMEOUT, "instance started", 2),
        "instance not replaced:\n{}",
        stderr.text()
    );
    let mut next = TcpStream::connect(addr).await.unwrap();
    echo_line(&mut next, "served again\n").await;
}

#[tokio::test]
async fn repeated_traps_back_off_instead_of_spinning() {
    let gateway = Gateway::start(&[TestApp {
        name: "hostile",
        guest: "hostile",
        extra: "instances = 1",
    }]);
    let addr = gateway.addr("hostile");
    // Crash the instance three times in quick succession.
    for round in 1..=3 {
        assert!(
            gateway
                .stderr
                .wait_for_count(TIMEOUT, "instance started", round),
            "instance {round} did not start"
        );
        let mut attacker = TcpStream::connect(addr).await.unwrap();
        attacker.write_all(b"panic\n").await.unwrap();
        assert!(closed_by_gateway(&mut attacker).await);
    }
    assert!(
        gateway.stderr.wait_for(TIMEOUT, |t| t
            .contains("crash loop: restarting instance in")),
        "no crash-loop back-off recorded:\n{}",
        gateway.stderr.text()
    );
    // Still serving after the back-off.
    let mut next = TcpStream::connect(addr).await.unwrap();
    echo_line(&mut next, "alive\n").await;
}

#[tokio::test]
async fn a_guest_that_traps_on_every_connection_does_not_disturb_its_neighbours() {
    let gateway = Gateway::start(&[
        TestApp {
            name: "crasher",
            guest: "crash-on-connect",
            extra: "instances = 1",
        },
        TestApp {
            name: "neighbour",
            guest: "hostile",
            extra: "instances = 1",
        },
    ]);
    let mut neighbour = TcpStream::connect(gateway.addr("neighbour")).await.unwrap();
    echo_line(&mut neighbour, "before\n").await;
    // A burst of connections, each one crashing the crasher's instance:
    // every one is closed (none hangs), the shard backs off, and the
    // neighbour keeps answering throughout.
    for round in 0..5 {
        let mut victim = TcpStream::connect(gateway.addr("crasher")).await.unwrap();
        assert!(
            closed_by_gateway(&mut victim).await,
            "connection {round} hung"
        );
        echo_line(&mut neighbour, &format!("during {round}\n")).await;
    }
    let stderr = &gateway.stderr;
    assert!(
        stderr.wait_for(TIMEOUT, |t| t
            .contains("crash-on-connect: refusing connection")
            && t.contains("crash loop: restarting instance in")),
        "{}",
        stderr.text()
    );
    assert!(
        stderr
            .text()
            .matches("instance started app=neighbour")
            .count()
            == 1,
        "the neighbour's instance was restarted:\n{}",
        stderr.text()
    );
}
