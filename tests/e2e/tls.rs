//! TLS termination without an ACME CA: SNI routing with certificates from
//! the development CA and from static files, refusals that never show a
//! certificate (unknown name, no name, garbage, stalled handshakes), ALPN
//! as the guest sees it, `openssl s_client` against the dev CA, and the
//! plain-HTTP port's redirects.

use std::process::{Command, Stdio};
use std::time::Duration;

use rustls::AlertDescription;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::support::{ScratchDir, TestApp};
use crate::tls_support::{
    TlsGateway, WAIT, client_config, client_hello, connect, dev_ca_root, echo_through,
    make_test_ca, received_alert, send_and_read_until_closed,
};

/// The handshake deadline the refusal tests configure.
const HANDSHAKE_TIMEOUT_MS: u64 = 2000;

/// A dev-CA gateway on loopback serving `echo`, and `hostile` (which
/// reports its connection info) declaring ALPN `x-test`.
fn dev_ca_gateway(state: &ScratchDir) -> TlsGateway {
    TlsGateway::start(
        &state.0,
        &format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"localhost\"\ncertificates = \"dev-ca\"\n\
             handshake_timeout_ms = {HANDSHAKE_TIMEOUT_MS}\n\n\
             [http]\nlisten = \"127.0.0.1:0\"\n"
        ),
        &[
            TestApp {
                name: "echo",
                guest: "echo",
                extra: "domains = [\"echo.custom.test\"]",
            },
            TestApp {
                name: "hostile",
                guest: "hostile",
                extra: "alpn = [\"x-test\"]",
            },
        ],
    )
}

#[tokio::test]
async fn subdomains_and_custom_domains_route_to_their_app() {
    let state = ScratchDir::new("tls-state");
    let gw = dev_ca_gateway(&state);
    let config = client_config(&[dev_ca_root(&state.0)], &[]);
    for name in ["echo.localhost", "ECHO.localhost", "echo.custom.test"] {
        let mut stream = connect(gw.tls, name, config.clone()).await.unwrap();
        echo_through(&mut stream, format!("hello {name}\n").as_bytes()).await;
        // A large payload through TLS, in both directions at once.
        let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let (mut rd, mut wr) = tokio::io::split(stream);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            wr.write_all(&sent).await.unwrap();
            wr.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        tokio::time::timeout(WAIT, rd.read_to_end(&mut back))
            .await
            .expect("bulk echo timed out")
            .unwrap();
        writer.await.unwrap();
        assert!(back == data, "bulk echo through {name} differs");
    }
    // The hostile app sees its own name, TLS, and no ALPN offered.
    let mut stream = connect(gw.tls, "hostile.localhost", config).await.unwrap();
    assert_eq!(
        ask_info(&mut stream).await,
        "info transport=Transport::Tls server-name=hostile.localhost alpn=-"
    );
}

/// Sends the hostile guest's `info` command and returns its answer.
async fn ask_info(stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    stream.write_all(b"info\n").await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(WAIT, BufReader::new(stream).read_line(&mut line))
        .await
        .expect("no info answer")
        .unwrap();
    line.trim_end().to_owned()
}

#[tokio::test]
async fn alpn_declared_by_the_app_is_negotiated_and_seen_by_the_guest() {
    let state = ScratchDir::new("tls-state");
    let gw = dev_ca_gateway(&state);
    let root = dev_ca_root(&state.0);

    let offer = client_config(std::slice::from_ref(&root), &["x-test", "http/1.1"]);
    let mut stream = connect(gw.tls, "hostile.localhost", offer).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"x-test"[..]));
    let info = ask_info(&mut stream).await;
    assert_eq!(
        info,
        "info transport=Transport::Tls server-name=hostile.localhost alpn=x-test"
    );

    // Offering only protocols the app does not speak: refused (RFC 7301).
    let wrong = client_config(std::slice::from_ref(&root), &["h2"]);
    let err = connect(gw.tls, "hostile.localhost", wrong)
        .await
        .unwrap_err();
    assert_eq!(
        received_alert(&err),
        Some(AlertDescription::NoApplicationProtocol),
        "{err}"
    );

    // An app without ALPN negotiates none, whatever the client offers.
    let offer = client_config(&[root], &["x-test"]);
    let stream = connect(gw.tls, "echo.localhost", offer).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
}

#[tokio::test]
async fn unknown_or_missing_server_names_get_unrecognized_name_and_no_certificate() {
    let state = ScratchDir::new("tls-state");
    let gw = dev_ca_gateway(&state);
    let config = client_config(&[dev_ca_root(&state.0)], &[]);
    for name in [
        "nope.localhost",
        "localhost",
        "a.echo.localhost",
        "other.test",
    ] {
        let err = connect(gw.tls, name, config.clone()).await.unwrap_err();
        assert_eq!(
            received_alert(&err),
            Some(AlertDescription::UnrecognisedName),
            "{name}: {err}"
        );
    }
    // At the byte level: the whole answer is one plaintext alert record,
    // unrecognized_name, then the close: no ServerHello, no certificate.
    let alert = [21, 3, 3, 0, 2, 2, 112];
    for sni in [Some("nope.localhost"), None] {
        let (answer, closed) = send_and_read_until_closed(gw.tls, &client_hello(sni), WAIT).await;
        assert_eq!(answer, alert, "answer to a ClientHello with SNI {sni:?}");
        assert!(closed.is_some(), "connection left open for SNI {sni:?}");
    }
    // The gateway still serves.
    let mut stream = connect(gw.tls, "echo.localhost", config).await.unwrap();
    echo_through(&mut stream, b"still here\n").await;
}

#[tokio::test]
async fn garbage_and_stalled_handshakes_are_closed_promptly_without_a_certificate() {
    let state = ScratchDir::new("tls-state");
    let gw = dev_ca_gateway(&state);
    let limit = Duration::from_secs(15);
    let deadline = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let hello = client_hello(Some("echo.localhost"));
    // Every misbehaving client at once; each is judged on its own.
    let garbage: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: echo.localhost\r\n\r\n",
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00],
        &[0u8; 64],
    ];
    let stalled: [&[u8]; 2] = [&[], &hello[..hello.len() / 2]];
    let (garbage_answers, stalled_answers, unfinished) = tokio::join!(
        futures::future::join_all(
            garbage
                .iter()
                .map(|bytes| send_and_read_until_closed(gw.tls, bytes, limit))
        ),
        futures::future::join_all(
            stalled
                .iter()
                .map(|bytes| send_and_read_until_closed(gw.tls, bytes, limit))
        ),
        send_and_read_until_closed(gw.tls, &hello, limit),
    );

    // Not TLS at all: closed at once (well before the handshake deadline),
    // at most with an alert.
    for (bytes, (answer, closed)) in garbage.iter().zip(garbage_answers) {
        let closed = closed.unwrap_or_else(|| panic!("{bytes:?}: connection left open"));
        assert!(closed < deadline, "{bytes:?}: closed only after {closed:?}");
        assert!(
            answer.is_empty() || (answer[0] == 21 && answer.len() == 7),
            "{bytes:?}: answered {answer:?}"
        );
    }

    // Silent clients, and a ClientHello cut in half: closed at the
    // handshake deadline, having received nothing.
    for (bytes, (answer, closed)) in stalled.iter().zip(stalled_answers) {
        let closed = closed.unwrap_or_else(|| panic!("{bytes:?}: stalled handshake left open"));
        assert!(
            closed >= deadline - Duration::from_millis(100) && closed < deadline * 3,
            "stalled handshake closed after {closed:?}"
        );
        assert!(answer.is_empty(), "stalled handshake got {answer:?}");
    }

    // A client that stops after the ServerHello (never sends Finished)
    // receives the certificate it asked for, and is closed on the deadline.
    let (answer, closed) = unfinished;
    let closed = closed.expect("a handshake without Finished was never closed");
    assert!(
        closed >= deadline - Duration::from_millis(100),
        "closed after {closed:?}"
    );
    assert_eq!(answer.first(), Some(&22), "expected a ServerHello");

    // Unaffected.
    let config = client_config(&[dev_ca_root(&state.0)], &[]);
    let mut stream = connect(gw.tls, "echo.localhost", config).await.unwrap();
    echo_through(&mut stream, b"unaffected\n").await;
}

#[tokio::test]
async fn tls_1_2_clients_are_served_too() {
    let state = ScratchDir::new("tls-state");
    let gw = dev_ca_gateway(&state);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(dev_ca_root(&state.0)).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut stream = connect(gw.tls, "echo.localhost", std::sync::Arc::new(config))
        .await
        .unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    echo_through(&mut stream, b"over TLS 1.2\n").await;
}

#[tokio::test]
async fn openssl_s_client_verifies_the_dev_ca_chain_printed_by_sockgate_dev_ca() {
    let state = ScratchDir::new("tls-state");
    let gw = dev_ca_gateway(&state);

    // `sockgate dev-ca` prints the root the gateway uses.
    let printed = Command::new(env!("CARGO_BIN_EXE_sockgate"))
        .args(["dev-ca", "--state-dir"])
        .arg(&state.0)
        .output()
        .unwrap();
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let root = CertificateDer::from_pem_slice(&printed.stdout).expect("no PEM printed");
    assert_eq!(root, dev_ca_root(&state.0));
    let root_file = state.0.join("printed-root.pem");
    std::fs::write(&root_file, &printed.stdout).unwrap();

    let output = Command::new("openssl")
        .args(["s_client", "-connect", &gw.tls.to_string()])
        .args([
            "-servername",
            "echo.localhost",
            "-verify_return_error",
            "-showcerts",
        ])
        .arg("-CAfile")
        .arg(&root_file)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run openssl (apt-get install openssl)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains(" 0 s:CN = echo.localhost"), "{text}");
    assert!(
        text.contains("i:O = sockgate, CN = sockgate development CA "),
        "{text}"
    );
    // The server sends the leaf only; the root is the client's to trust.
    assert!(!text.contains(" 1 s:"), "{text}");

    // Without the root, verification fails.
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &gw.tls.to_string()])
        .args(["-servername", "echo.localhost", "-verify_return_error"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("Verify return code: 0 (ok)"), "{text}");
}

#[tokio::test]
async fn plain_http_redirects_app_names_to_https() {
    let state = ScratchDir::new("tls-state");
    let gw = dev_ca_gateway(&state);
    let http = gw.http.expect("no http listener");
    let request = |host: &str, path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test\r\n\r\n").into_bytes()
    };
    let (answer, _) =
        send_and_read_until_closed(http, &request("echo.localhost:80", "/a?b=c"), WAIT).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
        "{answer}"
    );
    let location = format!(
        "Location: https://echo.localhost:{}/a?b=c\r\n",
        gw.tls.port()
    );
    assert!(answer.contains(&location), "{answer}");

    let (answer, _) = send_and_read_until_closed(http, &request("nope.localhost", "/"), WAIT).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 404 "));
    let (answer, _) = send_and_read_until_closed(
        http,
        &request("echo.localhost", "/.well-known/acme-challenge/x"),
        WAIT,
    )
    .await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 404 "));
    let (answer, _) = send_and_read_until_closed(http, b"\x16\x03\x01garbage\r\n\r\n", WAIT).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400 "));
}

#[tokio::test]
async fn static_certificate_files_serve_their_names_including_wildcards() {
    let state = ScratchDir::new("tls-state");
    let (ca, cert, key) = make_test_ca(&state.0, &["*.files.test"], &[]);
    let gw = TlsGateway::start(
        &state.0,
        &format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"files.test\"\ncertificates = \"files\"\n\n\
             [[tls.certificate]]\ncert = {:?}\nkey = {:?}\n\n[http]\nenabled = false\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
        &[TestApp {
            name: "echo",
            guest: "echo",
            extra: "",
        }],
    );
    assert!(gw.http.is_none());
    let root = CertificateDer::from_pem_file(&ca).unwrap();
    let config = client_config(&[root], &[]);
    let mut stream = connect(gw.tls, "echo.files.test", config.clone())
        .await
        .unwrap();
    echo_through(&mut stream, b"from a file\n").await;
    let err = connect(gw.tls, "other.files.test", config)
        .await
        .unwrap_err();
    assert_eq!(
        received_alert(&err),
        Some(AlertDescription::UnrecognisedName)
    );
    // Nothing was written to the state directory: no CA, no ACME.
    assert!(!state.0.join("dev-ca").exists() && !state.0.join("acme").exists());
}

#[tokio::test]
async fn a_bad_certificate_file_refuses_the_start() {
    let state = ScratchDir::new("tls-state");
    let (_, cert, _) = make_test_ca(&state.0, &["echo.files.test"], &[]);
    // The key of another certificate.
    let other = ScratchDir::new("tls-other");
    let (_, _, wrong_key) = make_test_ca(&other.0, &["x.test"], &[]);
    let config = state.0.join("bad.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nstate_dir = {:?}\n\n[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"files.test\"\n\
             certificates = \"files\"\n[[tls.certificate]]\ncert = {:?}\nkey = {:?}\n[http]\nenabled = false\n\n\
             [[app]]\nname = \"echo\"\ncomponent = {:?}\nlisten = \"127.0.0.1:0\"\n",
            state.0.display().to_string(),
            cert.display().to_string(),
            wrong_key.display().to_string(),
            crate::support::guest("echo").display().to_string(),
        ),
    )
    .unwrap();
    let (code, stderr) = crate::support::run_expecting_failure(&[
        "serve".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("does not hold the private key"), "{stderr}");
}

#[tokio::test]
async fn an_app_deployed_while_running_is_served_over_tls_with_its_domains_and_alpn() {
    let state = ScratchDir::new("tls-state");
    // An admin API (to deploy through) and no configured app.
    let gw = TlsGateway::start(
        &state.0,
        "admin = \"127.0.0.1:0\"\n\n[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"localhost\"\n\
         certificates = \"dev-ca\"\nallowed_domains = [\"*.custom.test\"]\n\n\
         [http]\nenabled = false\n",
        &[],
    );
    let admin = sockgate_testkit::output::printed_admin(&gw.gateway.stdout.text())
        .expect("no admin address printed");
    let config = client_config(&[dev_ca_root(&state.0)], &["x-test"]);
    let err = connect(gw.tls, "late.localhost", config.clone())
        .await
        .unwrap_err();
    assert_eq!(
        received_alert(&err),
        Some(AlertDescription::UnrecognisedName)
    );

    let hostile = crate::support::guest("hostile");
    let deployed = Command::new(env!("CARGO_BIN_EXE_sockgate"))
        .arg("deploy")
        .arg("late")
        .arg(&hostile)
        .args(["--listen", "127.0.0.1:0", "--domain", "late.custom.test"])
        .args([
            "--alpn",
            "x-test",
            "--admin",
            &admin.to_string(),
            "--state-dir",
        ])
        .arg(&state.0)
        .output()
        .unwrap();
    assert!(
        deployed.status.success(),
        "deploy failed: {}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    for name in ["late.localhost", "late.custom.test"] {
        let mut stream = connect(gw.tls, name, config.clone()).await.unwrap();
        assert_eq!(
            ask_info(&mut stream).await,
            format!("info transport=Transport::Tls server-name={name} alpn=x-test")
        );
    }
}
