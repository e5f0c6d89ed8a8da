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
pub(crate) struct Fetched {
    pub(crate) body: String,
    pub(crate) version: String,
    pub(crate) status: u16,
}

/// Runs curl with `args` (a URL among them) and reads the version and
/// status it reports after the body.
pub(crate) fn curl(args: &[&str]) -> Fetched {
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
pub(crate) fn https_args(state: &Path, gw: &TlsGateway, name: &str) -> (Vec<String>, String) {
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
    let server = format!("{name}.localhost");
    let authority = host.map_or_else(|| format!("{server}:{}", addr.port()), str::to_owned);
    h3_request(endpoint, addr, &server, &authority, path).await
}

/// [`h3_get`] for a full server name, the request's authority being it.
pub(crate) async fn h3_get_named(
    endpoint: &quinn::Endpoint,
    addr: std::net::SocketAddr,
    server: &str,
    path: &str,
) -> (u16, String, http::HeaderMap) {
    h3_request(endpoint, addr, server, server, path).await
}

/// One HTTP/3 `GET` of `https://{authority}{path}` over a fresh QUIC
/// connection to `server`.
async fn h3_request(
    endpoint: &quinn::Endpoint,
    addr: std::net::SocketAddr,
    server: &str,
    authority: &str,
    path: &str,
) -> (u16, String, http::HeaderMap) {
    use bytes::Buf;
    let conn = crate::quic::connect_quic(endpoint, addr, server)
        .await
        .expect("QUIC handshake failed");
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .expect("HTTP/3 setup failed");
    let driving = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let request = http::Request::get(format!("https://{authority}{path}"))
        .body(())
        .unwrap();
    let mut stream = send.send_request(request).await.expect("send_request");
    if let Err(err) = stream.finish().await {
        // The gateway may answer before the request ends and stop it with
        // H3_NO_ERROR (RFC 9114 §4.1.2); the response stands.
        assert!(
            matches!(err, h3::error::StreamError::RemoteTerminate { code, .. } if code == h3::error::Code::H3_NO_ERROR),
            "finish: {err}"
        );
    }
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

/// RFC 9114 §4.1.2: a server that answers before the request ends asks
/// the client to stop sending with `H3_NO_ERROR`, and the client keeps the
/// response. Spoken by hand over quinn, so the client can hold its request
/// open while it reads the whole answer, then see the code the gateway
/// stopped it with (quinn's default, 0, made h3 clients fail the request).
#[tokio::test]
async fn an_http3_answer_before_the_request_ends_stops_it_with_h3_no_error() {
    let state = ScratchDir::new("http-apps-h3-stop");
    let gw = http_gateway(&state, "");
    let quic = gw.quic.expect("no QUIC endpoint");
    let root = crate::tls_support::dev_ca_root(&state.0);
    let client = crate::quic::quic_client(std::slice::from_ref(&root), &["h3"]);
    let conn = crate::quic::connect_quic(&client, quic, "web.localhost")
        .await
        .expect("QUIC handshake failed");

    // The client's control stream: its type (0x00), then an empty SETTINGS
    // frame. It stays open for the connection's life.
    let mut control = conn.open_uni().await.unwrap();
    control.write_all(&[0x00, 0x04, 0x00]).await.unwrap();

    // GET https://web.localhost/info as one HEADERS frame, QPACK with the
    // static table only: :method GET (17), :scheme https (23), :path from
    // the name of :path / (1), :authority from the name of entry 0.
    let authority = b"web.localhost";
    let path = b"/info";
    let mut fields = vec![0x00, 0x00, 0xc0 | 17, 0xc0 | 23];
    fields.extend_from_slice(&[0x51, path.len() as u8]);
    fields.extend_from_slice(path);
    fields.extend_from_slice(&[0x50, authority.len() as u8]);
    fields.extend_from_slice(authority);
    let mut frame = vec![0x01, fields.len() as u8];
    frame.extend_from_slice(&fields);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame).await.unwrap();

    // The whole answer arrives while the request is still open…
    let answer = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
        .await
        .expect("no answer while the request was open")
        .expect("the answer stream failed");
    assert_eq!(
        answer.first(),
        Some(&0x01),
        "not a HEADERS frame first: {answer:?}"
    );
    assert!(
        answer
            .windows(b"world: p3".len())
            .any(|w| w == b"world: p3"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // …and the request is stopped with H3_NO_ERROR (0x100), not code 0.
    let stopped = tokio::time::timeout(Duration::from_secs(10), send.stopped())
        .await
        .expect("the gateway never stopped the request it answered")
        .expect("the connection failed");
    assert_eq!(stopped, Some(quinn::VarInt::from_u32(0x100)));
    drop(control);
}

/// Fetches `url` with curl on a blocking thread: status and body.
async fn curl_async(args: Vec<String>) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let got = curl(&args);
        (got.status, got.body)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn trapping_and_spinning_http_guests_leave_their_neighbours_alone() {
    let state = ScratchDir::new("http-apps-traps");
    let gw = http_gateway(&state, "");
    let web = gw.gateway.addr("web");
    let web2 = gw.gateway.addr("web2");
    let echo = gw.gateway.addr("echo");

    // Attacks, several at once: WASI 0.3 requests that trap and spin (each
    // ends its instance), WASI 0.2 ones (each ends its own instance).
    let mut attacks = Vec::new();
    for _ in 0..3 {
        for path in ["trap", "spin"] {
            for addr in [web, web2] {
                attacks.push(tokio::spawn(curl_async(vec![
                    "--http1.1".into(),
                    format!("http://{addr}/{path}"),
                ])));
            }
        }
    }
    // Beside them: a slow WASI 0.2 request (an instance of its own) and
    // the raw neighbour app, whose round trips must stay quick.
    let slow = tokio::spawn(curl_async(vec![
        "--http2-prior-knowledge".into(),
        format!("http://{web2}/sleep?ms=500"),
    ]));
    let mut neighbour = tokio::net::TcpStream::connect(echo).await.unwrap();
    let mut worst = Duration::ZERO;
    for n in 0..20 {
        let started = std::time::Instant::now();
        let line = format!("ping {n}");
        assert_eq!(crate::support::ask(&mut neighbour, &line).await, line);
        worst = worst.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for attack in attacks {
        let (status, body) = attack.await.unwrap();
        assert_eq!(status, 500, "{body}");
    }
    assert_eq!(slow.await.unwrap(), (200, "slept\n".to_owned()));
    assert!(
        worst < Duration::from_secs(1),
        "the neighbour waited {worst:?}"
    );

    // Both apps serve again, and the log says what happened.
    for addr in [web, web2] {
        let (status, body) = curl_async(vec![format!("http://{addr}/info")]).await;
        assert_eq!(status, 200, "{body}");
    }
    // A trap and a spin alone on the WASI 0.3 instance: above, either may
    // end the shared instance (and the other requests in it) first.
    for (path, cause) in [("trap", "guest"), ("spin", "cpu-budget")] {
        let (status, body) = curl_async(vec![format!("http://{web}/{path}")]).await;
        assert_eq!(status, 500, "{body}");
        let event = format!("instance trapped ({cause})");
        assert!(
            gw.gateway
                .stderr
                .wait_for(Duration::from_secs(10), |log| log.contains(&event)),
            "no `{event}`:\n{}",
            gw.gateway.stderr.text()
        );
    }
    let log = gw.gateway.stderr.text();
    assert!(log.contains("instance trapped (guest)"), "{log}");
    assert!(log.contains("instance trapped (cpu-budget)"), "{log}");
    assert!(
        log.contains("request GET /trap trapped its instance (guest)"),
        "{log}"
    );
    assert!(
        log.contains("request GET /spin trapped its instance (cpu-budget)"),
        "{log}"
    );
}

#[tokio::test]
async fn outbound_http_requests_follow_each_apps_policy() {
    // An upstream on loopback that names the path it saw.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = upstream.accept().await else {
                return;
            };
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| {
                    let path = req.uri().path().to_owned();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(format!(
                                "upstream saw {path}"
                            ))),
                        ))
                    }
                }),
            ));
        }
    });
    let state = ScratchDir::new("http-apps-outbound");
    let allowed = format!("outbound = [\"127.0.0.1:{port}\"]");
    let gw = TlsGateway::start(
        &state.0,
        "[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"localhost\"\ncertificates = \"dev-ca\"\n\n\
         [http]\nenabled = false\n\n[quic]\nenabled = false\n",
        &[
            TestApp {
                name: "allowed",
                guest: "wasi-http-probe",
                extra: &allowed,
            },
            TestApp {
                name: "allowed2",
                guest: "wasi-http-probe-p2",
                extra: &allowed,
            },
            TestApp {
                name: "denied",
                guest: "wasi-http-probe",
                extra: "",
            },
            TestApp {
                name: "denied2",
                guest: "wasi-http-probe-p2",
                extra: "",
            },
        ],
    );
    let target = format!("http://127.0.0.1:{port}/there");
    for app in ["allowed", "allowed2"] {
        let url = format!("http://{}/fetch?url={target}", gw.gateway.addr(app));
        let (status, body) = curl_async(vec![url]).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "upstream 200\nupstream saw /there"),
            "{app}"
        );
    }
    for app in ["denied", "denied2"] {
        let url = format!("http://{}/fetch?url={target}", gw.gateway.addr(app));
        let (status, body) = curl_async(vec![url]).await;
        assert_eq!(status, 502, "{app}: {body}");
        assert!(body.contains("fetch failed"), "{app}: {body}");
    }
    assert!(
        gw.gateway.stderr.wait_for(Duration::from_secs(10), |log| {
            log.contains("outbound access denied") && log.contains(&format!(":{port}"))
        }),
        "no outbound-denied event:\n{}",
        gw.gateway.stderr.text()
    );
}

/// One `GET /` on a new cleartext connection: the status and body, or
/// what failed.
async fn get_once(addr: std::net::SocketAddr) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

#[tokio::test]
async fn http_apps_of_each_world_deploy_and_hot_swap_under_load_without_a_failed_request() {
    use crate::deploy::{app_addr, cli, deploy, ls, start_admin};
    use crate::support::{guest, lang_guest};
    let dir = ScratchDir::new("http-deploy");
    let state = dir.0.join("state");
    let (_gateway, admin) = start_admin(&state, None);
    let world_of = |name: &str| {
        ls(admin, &state)
            .iter()
            .find(|app| app["name"] == name)
            .map(|app| app["load"]["world"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    deploy(
        admin,
        &state,
        "svc",
        &guest("wasi-http-probe"),
        &["--listen", "127.0.0.1:0"],
    );
    assert_eq!(world_of("svc"), "http-service");
    let addr = app_addr(admin, &state, "svc");
    assert_eq!(
        get_once(addr).await.unwrap(),
        (200, "hello from p3\n".into())
    );

    // Load: 4 clients, each request on a new connection, through two
    // redeploys (WASI 0.3 → 0.3 hello → 0.2 hello).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut bodies) =
                (0u32, Vec::new(), std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match get_once(addr).await {
                    Ok((200, body)) => {
                        ok += 1;
                        bodies.insert(body.lines().next().unwrap_or("").to_owned());
                    }
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed, bodies)
        }));
    }
    // And one keep-alive connection, opened before the swaps: its requests
    // move to each new version, none fails.
    let keep_alive = {
        let stop = stop.clone();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        tokio::spawn(async move {
            let mut bodies = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let request = http::Request::get("/")
                    .header("host", "svc")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let response = sender
                    .send_request(request)
                    .await
                    .expect("keep-alive request");
                assert_eq!(response.status(), 200);
                let body = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                let body = String::from_utf8_lossy(&body).into_owned();
                bodies.insert(body.lines().next().unwrap_or("").to_owned());
            }
            bodies
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let swap = |component: std::path::PathBuf| {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            deploy(
                admin,
                &state,
                "svc",
                &component,
                &["--listen", &addr.to_string()],
            )
        })
    };
    swap(guest("wasi-http-hello-p3")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    swap(guest("wasi-http-hello")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed, mut bodies) = (0, Vec::new(), std::collections::BTreeSet::new());
    for client in clients {
        let (o, f, b) = client.await.unwrap();
        ok += o;
        failed.extend(f);
        bodies.extend(b);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    let kept = keep_alive.await.unwrap();
    assert!(
        kept.contains("hello from p3") && kept.contains("<!doctype html>"),
        "the keep-alive connection saw {kept:?}"
    );
    assert!(bodies.contains("hello from p3"), "{bodies:?}");
    assert!(bodies.contains("<!doctype html>"), "{bodies:?}");
    assert_eq!(world_of("svc"), "http-proxy");

    // Components from other toolchains: Python (componentize-py, WASI 0.3)
    // and JavaScript (componentize-js on StarlingMonkey, WASI 0.2).
    for (name, lang, world, page) in [
        ("py", "python", "http-service", "Hello from Python"),
        (
            "js",
            "starlingmonkey",
            "http-proxy",
            "Hello from JavaScript",
        ),
    ] {
        deploy(
            admin,
            &state,
            name,
            &lang_guest(lang, "http-hello"),
            &["--listen", "127.0.0.1:0"],
        );
        assert_eq!(world_of(name), world);
        let (status, body) = get_once(app_addr(admin, &state, name)).await.unwrap();
        assert_eq!(status, 200, "{name}: {body}");
        assert!(body.contains(page), "{name}: {body}");
    }
    let (code, stdout, stderr) = cli(admin, &state, &["ls"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("http-service") && stdout.contains("http-proxy"),
        "{stdout}"
    );
}

/// The base64 SHA-256 of the public key of `certificate` (DER), as
/// Chromium's `--ignore-certificate-errors-spki-list` takes it (openssl).
fn spki_hash(dir: &Path, certificate: &[u8]) -> String {
    let path = dir.join("leaf.der");
    std::fs::write(&path, certificate).unwrap();
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "openssl x509 -inform der -in {} -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | base64",
            path.display()
        ))
        .output()
        .expect("cannot run openssl");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn chromium_fetches_an_http_app_over_http3() {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        panic!("Debian's chromium is needed for this test: apt-get install chromium");
    };
    let state = ScratchDir::new("http-apps-chromium");
    let gw = http_gateway(&state, "");
    let quic = gw.quic.expect("no QUIC endpoint");
    // Chromium trusts the dev CA's leaf by its key (QUIC needs a trusted
    // certificate; the dev CA is not in Chromium's store).
    let root = crate::tls_support::dev_ca_root(&state.0);
    let config = crate::tls_support::client_config(&[root], &[]);
    let stream = crate::tls_support::connect(gw.tls, "web.localhost", config)
        .await
        .unwrap();
    let spki = spki_hash(&state.0, &crate::tls_support::served_certificate(&stream));
    let origin = format!("web.localhost:{}", quic.port());
    let profile = state.0.join("profile");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--enable-quic",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            // *.localhost is ::1 first to Chromium; the endpoint is on
            // 127.0.0.1.
            .arg("--host-resolver-rules=MAP web.localhost 127.0.0.1")
            .arg(format!("--origin-to-force-quic-on={origin}"))
            .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
            .arg(format!("https://{origin}/info"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("world: p3") && dom.contains("scheme: https"),
        "chromium did not get the page:\n{dom}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The gateway's access line names the protocol the browser used.
    assert!(
        gw.gateway.stderr.wait_for(Duration::from_secs(10), |log| {
            log.lines()
                .any(|l| l.contains("GET /info 200") && l.contains(" h3 "))
        }),
        "chromium did not use HTTP/3:\n{}",
        gw.gateway.stderr.text()
    );
}

#[tokio::test]
async fn an_http_app_gets_its_certificate_from_acme_and_serves_h1_h2_and_h3_with_it() {
    use crate::tls_support::{Pebble, WAIT, client_config, connect, free_port};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls_port = free_port();
    let pebble = Pebble::start(tls_port, free_port());
    let state = ScratchDir::new("http-apps-acme");
    let gw = TlsGateway::start(
        &state.0,
        &format!(
            "[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ndomain = \"sockgate.test\"\n\n{}\n\
             [http]\nenabled = false\n",
            pebble.acme_table("tls-alpn-01", "")
        ),
        &[TestApp {
            name: "web",
            guest: "wasi-http-probe",
            extra: "",
        }],
    );
    let name = "web.sockgate.test";
    assert!(
        gw.gateway.stderr.wait_for(WAIT, |log| log
            .contains(&format!("certificate for {name} issued"))),
        "no certificate issued:\n{}",
        gw.gateway.stderr.text()
    );
    let root = pebble.root().await;
    // HTTP/1.1 and HTTP/2 over TLS (ALPN), verified against Pebble's root.
    for (alpn, version) in [("http/1.1", "HTTP/1.1"), ("h2", "h2")] {
        let config = client_config(std::slice::from_ref(&root), &[alpn]);
        let mut stream = connect(gw.tls, name, config).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn.as_bytes()));
        if alpn == "h2" {
            continue;
        }
        stream
            .write_all(
                format!("GET /info HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(&format!("{version} 200")), "{answer}");
        assert!(answer.contains(&format!("authority: {name}")), "{answer}");
    }
    // HTTP/3 on the same port over UDP, with the same certificate.
    let quic = gw.quic.expect("QUIC is on by default with [tls]");
    let client = crate::quic::quic_client(std::slice::from_ref(&root), &["h3"]);
    let conn = crate::quic::connect_quic(&client, quic, name)
        .await
        .unwrap();
    drop(conn);
    let (status, body, _) = h3_get_named(&client, quic, name, "/info").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("scheme: https"), "{body}");
    assert_eq!(pebble.orders(), 1);
}

/// Through `sockgate deploy` and the admin API: a WASI 0.3 app deployed
/// with a short request timeout answers a slow request `504` (and a quick
/// one `200`), `ls` shows its world, `/metrics` counts both answers and
/// their durations, and a timeout over the operator's ceiling is refused.
#[tokio::test]
async fn a_deployed_http_app_times_out_with_504_and_is_counted_in_metrics() {
    use crate::deploy::{authed, cli, deploy, ls, parse_prometheus, start_admin};
    use crate::support::guest;

    let dir = ScratchDir::new("http-deploy-metrics");
    let state = dir.0.join("state");
    let (_gateway, admin) = start_admin(&state, None);
    deploy(
        admin,
        &state,
        "slow",
        &guest("wasi-http-probe"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--http-request-timeout-ms",
            "300",
        ],
    );
    let apps = ls(admin, &state);
    let app = apps.iter().find(|a| a["name"] == "slow").unwrap();
    assert_eq!(app["load"]["world"], "http-service", "{app}");
    let addr: std::net::SocketAddr = app["tcp"].as_str().unwrap().parse().unwrap();

    let started = std::time::Instant::now();
    let slow = curl_async(vec![format!("http://{addr}/sleep?ms=5000")]).await;
    assert_eq!(slow.0, 504, "{}", slow.1);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the 504 came after {:?}",
        started.elapsed()
    );
    let quick = curl_async(vec![format!("http://{addr}/info")]).await;
    assert_eq!(quick.0, 200, "{}", quick.1);

    let raw = authed(admin, &state, "GET /metrics HTTP/1.1");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let metrics = parse_prometheus(body);
    for code in ["504", "200"] {
        let key =
            format!("sockgate_http_requests_total{{app=\"slow\",protocol=\"h1\",code=\"{code}\"}}");
        assert_eq!(metrics.get(&key), Some(&1.0), "{key} in:\n{body}");
    }
    let count = "sockgate_http_request_duration_seconds_count{app=\"slow\"}";
    assert_eq!(metrics.get(count), Some(&2.0), "{count} in:\n{body}");

    // A deployer may not ask for more than the operator's ceiling.
    let guest_path = guest("wasi-http-probe").display().to_string();
    let (code, stdout, stderr) = cli(
        admin,
        &state,
        &[
            "deploy",
            "slower",
            &guest_path,
            "--listen",
            "127.0.0.1:0",
            "--http-request-timeout-ms",
            "3600000",
        ],
    );
    assert_ne!(code, 0, "{stdout}");
    assert!(
        stderr.contains("http_request_timeout_ms = 3600000 is over this gateway's ceiling"),
        "{stderr}"
    );
    assert!(ls(admin, &state).iter().all(|a| a["name"] != "slower"));
}
