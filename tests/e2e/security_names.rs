//! Names and certificates under attack: a deployer claiming other apps'
//! names, the base domain and third-party names; the development CA asked
//! to vouch for `www.google.com`; the bare base domain listing tenants.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use rustls::AlertDescription;

use crate::support::{ScratchDir, TestApp, guest};
use crate::tls_support::{
    TlsGateway, WAIT, client_config, connect, dev_ca_root, echo_through, received_alert,
    send_and_read_until_closed,
};

/// A dev-CA gateway for base domain `sg.test` with an admin API and app
/// `echo` from the configuration; `tls` adds lines to `[tls]`.
fn gateway(state: &Path, tls: &str) -> (TlsGateway, SocketAddr) {
    let gw = TlsGateway::start(
        state,
        &format!(
            "admin = \"127.0.0.1:0\"\n\n[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"sg.test\"\n\
             certificates = \"dev-ca\"\n{tls}\n\n[http]\nlisten = \"127.0.0.1:0\"\n"
        ),
        &[TestApp {
            name: "echo",
            guest: "echo",
            extra: "",
        }],
    );
    let admin = sockgate_testkit::output::printed_admin(&gw.gateway.stdout.text())
        .expect("no admin address printed");
    (gw, admin)
}

/// `sockgate deploy NAME hostile --listen 127.0.0.1:0 --domain D...`;
/// returns exit code and stderr.
fn deploy(admin: SocketAddr, state: &Path, name: &str, domains: &[&str]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sockgate"));
    command
        .arg("deploy")
        .arg(name)
        .arg(guest("hostile"))
        .args(["--listen", "127.0.0.1:0", "--admin", &admin.to_string()])
        .arg("--state-dir")
        .arg(state);
    for domain in domains {
        command.args(["--domain", domain]);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The app a TLS connection for `name` reaches (the hostile guest tells
/// its server name), or the alert it got.
async fn reach(gw: &TlsGateway, state: &Path, name: &str) -> Result<(), AlertDescription> {
    let config = client_config(&[dev_ca_root(state)], &[]);
    match connect(gw.tls, name, config).await {
        Ok(mut stream) => {
            echo_through(&mut stream, b"hello\n").await;
            Ok(())
        }
        Err(err) => Err(received_alert(&err).unwrap_or_else(|| panic!("{name}: {err}"))),
    }
}

#[tokio::test]
async fn domain_claims_are_owned_refused_with_the_reason_and_dropped_with_the_app() {
    let state = ScratchDir::new("sec-names");
    // Deploys may claim names under `allowed.test`.
    let (gw, admin) = gateway(&state.0, "allowed_domains = [\"*.allowed.test\"]");
    let (code, stderr) = deploy(admin, &state.0, "victim", &[]);
    assert_eq!(code, 0, "{stderr}");

    // Another app's name, the base domain, a name nobody allowed, another
    // app of the configuration's name: each fails the deploy, and nothing
    // of `squat` is persisted.
    for (domain, reason) in [
        ("victim.sg.test", "belongs to app `victim`"),
        ("api.victim.sg.test", "belongs to app `victim`"),
        ("echo.sg.test", "belongs to app `echo`"),
        ("sg.test", "base domain"),
        ("www.google.com", "allowed_domains"),
    ] {
        let (code, stderr) = deploy(admin, &state.0, "squat", &[domain]);
        assert_eq!(code, 1, "{domain} was accepted");
        assert!(stderr.contains(reason), "{domain}: {stderr}");
    }
    let too_many: Vec<String> = (0..17).map(|i| format!("n{i}.allowed.test")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let (code, stderr) = deploy(admin, &state.0, "squat", &too_many);
    assert_eq!(code, 1);
    assert!(stderr.contains("custom domains"), "{stderr}");
    assert!(!state.0.join("apps/squat.json").exists());
    assert_eq!(reach(&gw, &state.0, "victim.sg.test").await, Ok(()));
    assert_eq!(
        reach(&gw, &state.0, "www.google.com").await,
        Err(AlertDescription::UnrecognisedName)
    );

    // An allowed name, its own subdomain: served; claimed, refused to
    // another app.
    let (code, stderr) = deploy(
        admin,
        &state.0,
        "squat",
        &["shop.allowed.test", "api.squat.sg.test"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(reach(&gw, &state.0, "shop.allowed.test").await, Ok(()));
    assert_eq!(reach(&gw, &state.0, "api.squat.sg.test").await, Ok(()));
    let (code, stderr) = deploy(admin, &state.0, "victim", &["shop.allowed.test"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("already app `squat`'s"), "{stderr}");

    // A redeploy replaces the set; removal drops it.
    let (code, stderr) = deploy(admin, &state.0, "squat", &["api.squat.sg.test"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        reach(&gw, &state.0, "shop.allowed.test").await,
        Err(AlertDescription::UnrecognisedName)
    );
    let (code, stderr) = deploy(admin, &state.0, "victim", &["shop.allowed.test"]);
    assert_eq!(code, 0, "the dropped name is still held: {stderr}");
    let rm = Command::new(env!("CARGO_BIN_EXE_sockgate"))
        .args(["rm", "squat", "--admin", &admin.to_string(), "--state-dir"])
        .arg(&state.0)
        .output()
        .unwrap();
    assert!(rm.status.success());
    assert_eq!(
        reach(&gw, &state.0, "api.squat.sg.test").await,
        Err(AlertDescription::UnrecognisedName)
    );
    assert_eq!(reach(&gw, &state.0, "victim.sg.test").await, Ok(()));
}

/// Runs `openssl` with `args` in `dir`; returns whether it succeeded and
/// what it printed.
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("cannot run openssl (apt-get install openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn the_dev_ca_root_vouches_only_for_the_gateways_names() {
    let state = ScratchDir::new("sec-dev-ca");
    let (_gw, _admin) = gateway(&state.0, "");
    let ca = state.0.join("dev-ca");
    let (ok, text) = openssl(&ca, &["x509", "-in", "root.pem", "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(text.contains("X509v3 Name Constraints"), "{text}");
    for name in ["DNS:localhost", "DNS:sg.test"] {
        assert!(text.contains(name), "{name} not permitted:\n{text}");
    }

    // Even a leaf signed with the root's own key is refused by clients for
    // a name outside the constraints (and accepted for one inside).
    for (name, valid) in [("www.google.com", false), ("chat.sg.test", true)] {
        let (ok, text) = openssl(
            &ca,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "leaf-key.pem",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                &format!("subjectAltName=DNS:{name}"),
                "-out",
                "leaf.csr",
            ],
        );
        assert!(ok, "{text}");
        let (ok, text) = openssl(
            &ca,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "root.pem",
                "-CAkey",
                "root-key.pem",
                "-CAcreateserial",
                "-days",
                "1",
                "-copy_extensions",
                "copy",
                "-out",
                "leaf.pem",
            ],
        );
        assert!(ok, "{text}");
        let (ok, text) = openssl(&ca, &["verify", "-CAfile", "root.pem", "leaf.pem"]);
        assert_eq!(ok, valid, "{name}: {text}");
        if !valid {
            assert!(text.contains("permitted subtree violation"), "{text}");
        }
    }
}

#[tokio::test]
async fn the_bare_base_domain_lists_no_app_names_unless_the_operator_asks() {
    let state = ScratchDir::new("sec-info-page");
    let (gw, _admin) = gateway(&state.0, "");
    let http = gw.http.expect("no http listener");
    let (answer, _) = send_and_read_until_closed(
        http,
        b"GET / HTTP/1.1\r\nHost: sg.test\r\nUser-Agent: test\r\n\r\n",
        WAIT,
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    assert!(!answer.contains("echo.sg.test"), "{answer}");

    let listed_state = ScratchDir::new("sec-info-page-on");
    let listed = TlsGateway::start(
        &listed_state.0,
        "[tls]\nlisten = \"127.0.0.1:0\"\ndomain = \"sg.test\"\ncertificates = \"dev-ca\"\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\nlist_apps = true\n",
        &[TestApp {
            name: "echo",
            guest: "echo",
            extra: "",
        }],
    );
    let (answer, _) = send_and_read_until_closed(
        listed.http.unwrap(),
        b"GET / HTTP/1.1\r\nHost: sg.test\r\nUser-Agent: test\r\n\r\n",
        WAIT,
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("echo.sg.test"), "{answer}");
}
