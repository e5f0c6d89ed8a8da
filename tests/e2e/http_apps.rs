//! HTTP apps (`wasi:http` components) through the real binary and Debian's
//! curl: HTTPS over HTTP/1.1 and HTTP/2 with the dev CA (ALPN picks the
//! version), cleartext HTTP/1.1 and h2c on the app's own port, both worlds
//! (WASI 0.3 `wasi:http/service`, WASI 0.2 `wasi:http/proxy`), `421` for a
//! host that selects another app, and the access lines.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{ScratchDir, TestApp};
use crate::tls_support::TlsGateway;

/// A dev-CA gateway on loopback serving the WASI 0.3 probe as `web`, the
/// WASI 0.2 probe as `web2`, and the raw echo app as a neighbour.
fn http_gateway(state: &ScratchDir, extra_tables: &str) -> TlsGateway {
    TlsGateway::start(
        &state.0,
        &format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"localhost\"\ncertificates = \"dev-ca\"\n\n\
             [http]\nenabled = false\n\n[quic]\nlisten = \"127.0.0.1:0\"\n{extra_tables}\n"
        ),
        &[
            TestApp {
                name: "web",
                guest: "wasi-http-probe",
                extra: "",
            },
            TestApp {
                name: "web2",
                guest: "wasi-http-probe-p2",
                extra: "",
            },
            TestApp {
                name: "echo",
                guest: "echo",
                extra: "",
            },
        ],
    )
}

/// What curl got: the body, then the HTTP version and status it printed.
struct Fetched {
    body: String,
    version: String,
    status: u16,
}

/// Runs curl with `args` (a URL among them) and reads the version and
/// status it reports after the body.
fn curl(args: &[&str]) -> Fetched {
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .output()
        .expect("cannot run curl (Debian package `curl`)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (version, status) = last.split_once(' ').unwrap_or((last, "0"));
    Fetched {
        body: body.to_owned(),
        version: version.to_owned(),
        status: status.parse().unwrap_or(0),
    }
}

/// curl arguments reaching `name.localhost` on the gateway's TLS port
/// with the dev CA trusted.
fn https_args(state: &Path, gw: &TlsGateway, name: &str) -> (Vec<String>, String) {
    let port = gw.tls.port();
    let host = format!("{name}.localhost");
    (
        vec![
            "--cacert".into(),
            state.join("dev-ca/root.pem").display().to_string(),
            "--resolve".into(),
            format!("{host}:{port}:127.0.0.1"),
        ],
        format!("https://{host}:{port}"),
    )
}

fn run(args: &[String], extra: &[&str]) -> Fetched {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    curl(&all)
}

#[test]
fn http_apps_answer_over_https_h1_and_h2_and_cleartext() {
    let state = ScratchDir::new("http-apps");
    let gw = http_gateway(&state, "");
    let port = gw.tls.port();

    for (app, world) in [("web", "p3"), ("web2", "p2")] {
        let (args, base) = https_args(&state.0, &gw, app);
        for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
            let url = format!("{base}/info?q=1");
            let got = run(&args, &[flag, &url]);
            assert_eq!(
                (got.status, got.version.as_str()),
                (200, version),
                "{}",
                got.body
            );
            let body = &got.body;
            assert!(body.contains(&format!("world: {world}")), "{body}");
            assert!(body.contains("scheme: https"), "{body}");
            assert!(
                body.contains(&format!("authority: {app}.localhost:{port}")),
                "{body}"
            );
            assert!(body.contains("path: /info?q=1"), "{body}");
            assert!(
                body.contains("header sockgate-client-addr: 127.0.0.1:"),
                "{body}"
            );
        }
        // A body goes to the guest and back.
        let url = format!("{base}/echo");
        let got = run(&args, &["--http2", "--data-binary", "ping over h2", &url]);
        assert_eq!((got.status, got.body.as_str()), (200, "ping over h2"));
    }

    // The WASI 0.3 instance keeps its state across requests and protocols;
    // each WASI 0.2 request has an instance of its own.
    let (args, base) = https_args(&state.0, &gw, "web2");
    for _ in 0..2 {
        let got = run(&args, &["--http2", &format!("{base}/count")]);
        assert_eq!(got.body, "1\n");
    }

    // A host that selects another app than the connection's name: 421.
    let (args, base) = https_args(&state.0, &gw, "web");
    let foreign = format!("Host: web2.localhost:{port}");
    let got = run(
        &args,
        &["--http1.1", "-H", &foreign, &format!("{base}/info")],
    );
    assert_eq!(got.status, 421, "{}", got.body);
    assert!(got.body.contains("web2.localhost"), "{}", got.body);

    // The app's own TCP port: cleartext HTTP/1.1 and h2c by prior knowledge.
    let plain = gw.gateway.addr("web");
    let url = format!("http://{plain}/info");
    let h1 = curl(&["--http1.1", &url]);
    assert_eq!(
        (h1.status, h1.version.as_str()),
        (200, "1.1"),
        "{}",
        h1.body
    );
    assert!(h1.body.contains("scheme: http\n"), "{}", h1.body);
    assert!(
        h1.body.contains(&format!("authority: {plain}")),
        "{}",
        h1.body
    );
    let h2c = curl(&["--http2-prior-knowledge", &url]);
    assert_eq!(
        (h2c.status, h2c.version.as_str()),
        (200, "2"),
        "{}",
        h2c.body
    );

    // Every request has its access line: method, path, status, protocol.
    assert!(
        gw.gateway.stderr.wait_for(Duration::from_secs(10), |text| {
            text.contains("GET /info?q=1 200") && text.contains(" h2 ") && text.contains(" h1 ")
        }),
        "no access lines:\n{}",
        gw.gateway.stderr.text()
    );
    assert!(
        gw.gateway
            .stderr
            .text()
            .contains("misdirected: web2.localhost selects another app"),
        "the 421 is not logged:\n{}",
        gw.gateway.stderr.text()
    );
}

/// One HTTP/3 request over a fresh QUIC connection to `name.localhost`:
/// the status, the body, and the response's headers.
async fn h3_get(
    endpoint: &quinn::Endpoint,
    addr: std::net::SocketAddr,
    name: &str,
    path: &str,
    host: Option<&str>,
) -> (u16, String, http::HeaderMap) {
    use bytes::Buf;
    let conn = crate::quic::connect_quic(endpoint, addr, &format!("{name}.localhost"))
        .await
        .expect("QUIC handshake failed");
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .expect("HTTP/3 setup failed");
    let driving = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let authority = host.map_or_else(
        || format!("{name}.localhost:{}", addr.port()),
        str::to_owned,
    );
    let request = http::Request::get(format!("https://{authority}{path}"))
        .body(())
        .unwrap();
    let mut stream = send.send_request(request).await.expect("send_request");
    stream.finish().await.expect("finish");
    let response = stream.recv_response().await.expect("recv_response");
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.expect("recv_data") {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    drop(send);
    driving.abort();
    (
        response.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
        response.headers().clone(),
    )
}

#[tokio::test]
async fn http_apps_answer_over_http3_and_advertise_it() {
    let state = ScratchDir::new("http-apps-h3");
    let gw = http_gateway(&state, "");
    let quic = gw.quic.expect("no QUIC endpoint");
    let root = crate::tls_support::dev_ca_root(&state.0);
    let client = crate::quic::quic_client(std::slice::from_ref(&root), &["h3"]);

    for (app, world) in [("web", "p3"), ("web2", "p2")] {
        let (status, body, headers) = h3_get(&client, quic, app, "/info?via=h3", None).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("world: {world}")), "{body}");
        assert!(body.contains("scheme: https"), "{body}");
        assert!(body.contains("path: /info?via=h3"), "{body}");
        assert!(headers.contains_key("date"), "{headers:?}");
        assert!(!headers.contains_key("alt-svc"), "{headers:?}");
    }
    // 421 over HTTP/3 too.
    let foreign = format!("web2.localhost:{}", quic.port());
    let (status, _, _) = h3_get(&client, quic, "web", "/", Some(&foreign)).await;
    assert_eq!(status, 421);

    // HTTP/1.1 and HTTP/2 answers advertise HTTP/3 on the QUIC port.
    let (args, base) = https_args(&state.0, &gw, "web");
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    let url = format!("{base}/");
    all.extend_from_slice(&["--http2", "-D", "-", "-o", "/dev/null", &url]);
    let headers = curl(&all).body;
    assert!(
        headers
            .to_ascii_lowercase()
            .contains(&format!("alt-svc: h3=\":{}\"; ma=86400", quic.port())),
        "{headers}"
    );

    // The raw neighbour still speaks its own protocol over QUIC.
    let raw = crate::quic::quic_client(std::slice::from_ref(&root), &[crate::quic::DEFAULT_ALPN]);
    let conn = crate::quic::connect_quic(&raw, quic, "echo.localhost")
        .await
        .unwrap();
    assert_eq!(
        crate::quic::echo_stream(&conn, b"raw".to_vec()).await,
        b"raw"
    );
    assert!(
        gw.gateway.stderr.wait_for(Duration::from_secs(10), |t| t
            .contains("GET /info?via=h3 200")
            && t.contains(" h3 ")),
        "no h3 access line:\n{}",
        gw.gateway.stderr.text()
    );
}
