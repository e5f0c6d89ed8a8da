//! Certificates from a real ACME CA: Pebble (Let's Encrypt's test server),
//! on loopback with its own DNS server resolving every test name to
//! 127.0.0.1. The gateway orders through TLS-ALPN-01 and HTTP-01, reuses
//! what it stored across restarts, and keeps serving when the CA is gone.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::quic::{connect_quic, echo_stream, quic_client};
use crate::support::{ScratchDir, TestApp};
use crate::tls_support::{
    Pebble, TlsGateway, WAIT, client_config, connect, echo_through, free_port, received_alert,
    served_certificate,
};

const NAME: &str = "echo.sockgate.test";

fn echo_app() -> [TestApp<'static>; 1] {
    [TestApp {
        name: "echo",
        guest: "echo",
        extra: "",
    }]
}

/// The `[tls]` and `[http]` tables of a gateway ordering from `pebble`.
fn tables(
    pebble: &Pebble,
    tls_port: u16,
    http_port: Option<u16>,
    challenge: &str,
    extra: &str,
) -> String {
    let http = match http_port {
        Some(port) => format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
        None => "[http]\nenabled = false\n".to_owned(),
    };
    format!(
        "[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ndomain = \"sockgate.test\"\n\n{}\n{http}",
        pebble.acme_table(challenge, extra)
    )
}

/// Starts a gateway and waits until it has a certificate for `NAME`.
fn gateway_with_certificate(state: &Path, tables: &str) -> TlsGateway {
    let gw = TlsGateway::start(state, tables, &echo_app());
    let issued = format!("certificate for {NAME} issued");
    assert!(
        gw.gateway
            .stderr
            .wait_for(WAIT, |text| text.contains(&issued)),
        "no certificate issued:\n{}",
        gw.gateway.stderr.text()
    );
    gw
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The stored account key and certificate are private to the gateway's
/// user, in private directories.
fn assert_private_state(state: &Path) {
    let acme = state.join("acme");
    assert_eq!(mode(&acme), 0o700);
    let dirs: Vec<_> = std::fs::read_dir(&acme)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "one directory per ACME CA: {dirs:?}");
    assert_eq!(mode(&dirs[0]), 0o700);
    let listing = |dir: &Path, file_mode: u32| {
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .inspect(|e| {
                let expected = if e.path().is_dir() { 0o700 } else { file_mode };
                assert_eq!(mode(&e.path()), expected, "{:?}", e.path())
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        files
    };
    // Certificates in a directory of their own: no name maps onto the
    // account key's file.
    assert_eq!(listing(&dirs[0], 0o600), ["account-key.pem", "certs"]);
    assert_eq!(
        listing(&dirs[0].join("certs"), 0o600),
        [format!("{NAME}.pem").as_str()]
    );
}

#[tokio::test]
async fn obtains_a_certificate_through_tls_alpn_01_and_serves_echo() {
    let tls_port = free_port();
    let pebble = Pebble::start(tls_port, free_port());
    let state = ScratchDir::new("acme-state");
    // No plain-HTTP port: TLS-ALPN-01 needs the TLS port only.
    let gw = gateway_with_certificate(
        &state.0,
        &tables(&pebble, tls_port, None, "tls-alpn-01", ""),
    );
    assert!(gw.http.is_none());
    let log = gw.gateway.stderr.text();
    assert!(
        log.contains(&format!("answered a tls-alpn-01 challenge for {NAME}")),
        "{log}"
    );

    let root = pebble.root().await;
    let config = client_config(std::slice::from_ref(&root), &[]);
    let mut stream = connect(gw.tls, NAME, config.clone()).await.unwrap();
    echo_through(&mut stream, b"hello over a Pebble certificate\n").await;
    assert_private_state(&state.0);

    // QUIC, on the same port over UDP, serves the same certificate (the
    // client verifies it against Pebble's root) and the same app.
    let quic = gw.quic.expect("QUIC is on by default with [tls]");
    assert_eq!(quic.port(), tls_port);
    let client = quic_client(&[root], &["sockgate"]);
    let conn = connect_quic(&client, quic, NAME).await.unwrap();
    let chain = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .unwrap();
    assert_eq!(chain[0], served_certificate(&stream));
    assert_eq!(
        echo_stream(&conn, b"hello over QUIC".to_vec()).await,
        b"hello over QUIC"
    );
    // Names of no app are refused, and ordered for by no one.
    let err = connect(gw.tls, "nope.sockgate.test", config)
        .await
        .unwrap_err();
    assert_eq!(
        received_alert(&err),
        Some(rustls::AlertDescription::UnrecognisedName)
    );
    assert_eq!(pebble.orders(), 1);
}

#[tokio::test]
async fn obtains_a_certificate_through_http_01_and_serves_echo() {
    let (tls_port, http_port) = (free_port(), free_port());
    let pebble = Pebble::start(tls_port, http_port);
    let state = ScratchDir::new("acme-state");
    let gw = gateway_with_certificate(
        &state.0,
        &tables(&pebble, tls_port, Some(http_port), "http-01", ""),
    );
    assert!(
        pebble
            .output
            .text()
            .contains("Attempting to validate w/ HTTP")
    );
    let log = gw.gateway.stderr.text();
    assert!(
        log.contains(&format!("answered an http-01 challenge for {NAME}")),
        "{log}"
    );
    assert!(!log.contains("tls-alpn-01 challenge"), "{log}");

    let config = client_config(&[pebble.root().await], &[]);
    let mut stream = connect(gw.tls, NAME, config).await.unwrap();
    echo_through(&mut stream, b"hello via http-01\n").await;
    assert_private_state(&state.0);
}

#[tokio::test]
async fn a_restart_serves_the_stored_certificate_without_a_new_order() {
    let tls_port = free_port();
    let pebble = Pebble::start(tls_port, free_port());
    let state = ScratchDir::new("acme-state");
    let tables = tables(&pebble, tls_port, None, "tls-alpn-01", "");
    let config = client_config(&[pebble.root().await], &[]);

    let gw = gateway_with_certificate(&state.0, &tables);
    let first = served_certificate(&connect(gw.tls, NAME, config.clone()).await.unwrap());
    let orders = pebble.orders();
    assert_eq!(orders, 1);
    // Killed, as a crash would.
    drop(gw);

    let gw = TlsGateway::start(&state.0, &tables, &echo_app());
    let loaded = format!("certificate for {NAME} loaded from");
    assert!(
        gw.gateway
            .stderr
            .wait_for(WAIT, |text| text.contains(&loaded)),
        "the stored certificate was not deployed at start:\n{}",
        gw.gateway.stderr.text()
    );
    let mut stream = connect(gw.tls, NAME, config).await.unwrap();
    assert_eq!(
        served_certificate(&stream),
        first,
        "a different certificate after restart"
    );
    echo_through(&mut stream, b"same certificate\n").await;
    assert!(!gw.gateway.stderr.text().contains("ordering a certificate"));
    assert_eq!(pebble.orders(), orders, "the restart ordered again");
    assert!(!gw.gateway.stderr.text().contains("new account key"));
}

#[tokio::test]
async fn with_the_ca_gone_the_gateway_keeps_serving_logs_and_backs_off() {
    let tls_port = free_port();
    let mut pebble = Pebble::start(tls_port, free_port());
    let state = ScratchDir::new("acme-state");
    let config = client_config(&[pebble.root().await], &[]);
    let gw = gateway_with_certificate(
        &state.0,
        &tables(&pebble, tls_port, None, "tls-alpn-01", ""),
    );
    let first = served_certificate(&connect(gw.tls, NAME, config.clone()).await.unwrap());
    drop(gw);
    pebble.stop();

    // Restarted with a renewal window longer than any certificate's life,
    // so the renewal is due at once, and the CA is gone.
    let gw = TlsGateway::start(
        &state.0,
        &tables(
            &pebble,
            tls_port,
            None,
            "tls-alpn-01",
            "renew_before_days = 100000\nbackoff_initial_secs = 1\nbackoff_max_secs = 60",
        ),
        &echo_app(),
    );
    let stderr = &gw.gateway.stderr;
    for (attempt, delay) in [(1, 1), (2, 2), (3, 4)] {
        let failed = format!("order for {NAME} failed (attempt {attempt})");
        let retry = format!("retrying in {delay}s");
        assert!(
            stderr.wait_for(WAIT, |text| text
                .lines()
                .any(|l| l.contains(&failed) && l.contains(&retry))),
            "no failure {attempt} with a {delay}s back-off logged:\n{}",
            stderr.text()
        );
    }
    let log = stderr.text();
    assert!(log.contains("cannot read the ACME directory"), "{log}");
    assert!(
        log.contains("still serving the current certificate"),
        "{log}"
    );

    // Meanwhile the stored certificate is served.
    let mut stream = connect(gw.tls, NAME, config).await.unwrap();
    assert_eq!(served_certificate(&stream), first);
    echo_through(&mut stream, b"served while the CA is down\n").await;
}
