//! Apps without a port of their own (issue 18, part 3): served by name on
//! the gateway's shared TLS and QUIC listeners, so that thousands of apps
//! do not take thousands of ports — from the configuration file and
//! through `sockgate deploy` without `--port`; a port given and dropped
//! again by redeploys; and the refusal where no name would reach the app.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpStream;

use crate::deploy::{cli, ls, start_admin};
use crate::quic::{DEFAULT_ALPN, connect_quic, echo_stream, quic_client};
use crate::support::{ScratchDir, ask, guest};
use crate::tls_support::{TlsGateway, client_config, connect, dev_ca_root, echo_through};

/// A dev-CA gateway for base domain `sg.test` with an admin API, QUIC, and
/// `apps` (TOML `[[app]]` tables) from its configuration.
fn gateway(state: &Path, apps: &str) -> (TlsGateway, SocketAddr) {
    let gw = TlsGateway::start(
        state,
        &format!(
            "admin = \"127.0.0.1:0\"\n\n[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"sg.test\"\n\
             certificates = \"dev-ca\"\n\n[http]\nenabled = false\n\n\
             [quic]\nlisten = \"127.0.0.1:0\"\n\n{apps}"
        ),
        &[],
    );
    let admin = sockgate_testkit::output::printed_admin(&gw.gateway.stdout.text())
        .expect("no admin address printed");
    (gw, admin)
}

fn status(admin: SocketAddr, state: &Path, name: &str) -> Value {
    ls(admin, state)
        .into_iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no app {name}"))
}

/// Echoes a line through app `name` over TLS (SNI `name.sg.test`) and over
/// QUIC.
async fn reach_by_name(gw: &TlsGateway, state: &Path, name: &str) {
    let server_name = format!("{name}.sg.test");
    let config = client_config(&[dev_ca_root(state)], &[]);
    let mut stream = connect(gw.tls, &server_name, config).await.unwrap();
    echo_through(&mut stream, format!("{name} over tls\n").as_bytes()).await;
    let client = quic_client(&[dev_ca_root(state)], &[DEFAULT_ALPN]);
    let conn = connect_quic(&client, gw.quic.unwrap(), &server_name)
        .await
        .unwrap();
    let line = format!("{name} over quic").into_bytes();
    assert_eq!(echo_stream(&conn, line.clone()).await, line);
}

#[tokio::test]
async fn apps_without_a_port_are_served_by_name_over_tls_and_quic() {
    let state = ScratchDir::new("portless");
    let echo = guest("echo").display().to_string();
    // An app of the configuration file without `listen`.
    let (gw, admin) = gateway(
        &state.0,
        &format!("[[app]]\nname = \"byname\"\ncomponent = {echo:?}\n"),
    );
    let tls_port = gw.tls.port();
    let quic_port = gw.quic.unwrap().port();
    let stdout = gw.gateway.stdout.text();
    assert!(
        stdout.contains(&format!(
            "app byname served by name at tls://byname.sg.test:{tls_port} \
             quic://byname.sg.test:{quic_port}"
        )),
        "{stdout}"
    );
    reach_by_name(&gw, &state.0, "byname").await;

    // A new app deployed without --port gets none, and says where it is.
    let (code, stdout, stderr) = cli(admin, &state.0, &["deploy", "echo", &echo]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("without a port of its own"), "{stdout}");
    assert!(
        stdout.contains(&format!("reachable at tls://echo.sg.test:{tls_port}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("reachable at quic://echo.sg.test:{quic_port}")),
        "{stdout}"
    );
    let app = status(admin, &state.0, "echo");
    assert!(app["tcp"].is_null(), "{app}");
    assert_eq!(
        app["endpoints"],
        serde_json::json!([
            format!("tls://echo.sg.test:{tls_port}"),
            format!("quic://echo.sg.test:{quic_port}")
        ]),
        "{app}"
    );
    let (_, table, _) = cli(admin, &state.0, &["ls"]);
    let row = table.lines().find(|l| l.starts_with("echo ")).unwrap();
    assert!(row.contains(" - "), "no port shown as `-`: {table}");
    reach_by_name(&gw, &state.0, "echo").await;

    // A redeploy asking for a port gets one (and keeps it when it says
    // nothing); --no-port drops it again and its listener closes.
    let (code, stdout, stderr) = cli(
        admin,
        &state.0,
        &["deploy", "echo", &echo, "--listen", "127.0.0.1:0"],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let tcp: SocketAddr = status(admin, &state.0, "echo")["tcp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        stdout.contains(&format!("reachable at tcp://{tcp}")),
        "{stdout}"
    );
    let mut client = TcpStream::connect(tcp).await.unwrap();
    assert_eq!(ask(&mut client, "own port").await, "own port");
    drop(client);
    let (code, stdout, stderr) = cli(admin, &state.0, &["deploy", "echo", &echo]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let kept = &status(admin, &state.0, "echo")["tcp"];
    assert_eq!(kept.as_str(), Some(tcp.to_string().as_str()), "{kept}");
    let (code, stdout, stderr) = cli(admin, &state.0, &["deploy", "echo", &echo, "--no-port"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(status(admin, &state.0, "echo")["tcp"].is_null());
    // The listener is closed once the deploy has returned.
    let refused = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(tcp))
        .await
        .expect("a connect to the dropped port hung");
    assert!(refused.is_err(), "the dropped port still accepts");
    reach_by_name(&gw, &state.0, "echo").await;

    // A restart brings both back without ports, still served by name.
    drop(gw);
    let (gw, admin) = gateway(
        &state.0,
        &format!("[[app]]\nname = \"byname\"\ncomponent = {echo:?}\n"),
    );
    assert!(status(admin, &state.0, "echo")["tcp"].is_null());
    reach_by_name(&gw, &state.0, "echo").await;
    reach_by_name(&gw, &state.0, "byname").await;
}

#[tokio::test]
async fn an_app_no_name_would_reach_is_refused_with_what_to_do() {
    // No [tls]: a deploy without a port would be reachable nowhere.
    let state = ScratchDir::new("portless-refused");
    let (_gateway, admin) = start_admin(&state.0, None);
    let echo = guest("echo").display().to_string();
    let (code, stdout, stderr) = cli(admin, &state.0, &["deploy", "echo", &echo]);
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("has no port of its own"), "{stderr}");
    assert!(stderr.contains("--port"), "{stderr}");
    assert!(stderr.contains("[tls]"), "{stderr}");
    // Nothing was deployed.
    assert!(ls(admin, &state.0).is_empty());

    // The same app in a configuration file fails the start, saying so.
    let dir = ScratchDir::new("portless-config");
    let config = dir.0.join("sockgate.toml");
    std::fs::write(
        &config,
        format!("[[app]]\nname = \"echo\"\ncomponent = {echo:?}\n"),
    )
    .unwrap();
    let (code, stderr) = crate::support::run_expecting_failure(&[
        "serve".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("has no port of its own"), "{stderr}");
}
