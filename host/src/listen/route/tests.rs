//! [`route_hello`] against a table of hellos, with a routing table made of
//! plain maps: every refusal, its alert and its text, without sockets.

use std::collections::HashMap;

use rustls::AlertDescription;

use super::*;

/// Apps by server name with their protocols, names with certificates, and
/// names with a challenge under way.
struct Table {
    apps: HashMap<&'static str, (&'static str, Vec<String>)>,
    certified: Vec<&'static str>,
    challenges: Vec<&'static str>,
}

impl Lookup for Table {
    type App = &'static str;
    type Certificate = &'static str;

    fn app(&self, name: &str) -> Option<&'static str> {
        self.apps.get(name).map(|(app, _)| *app)
    }

    fn app_name(&self, app: &&'static str) -> String {
        (*app).to_owned()
    }

    fn protocols(&self, app: &&'static str) -> Vec<String> {
        self.apps
            .values()
            .find(|(name, _)| name == app)
            .map(|(_, protocols)| protocols.clone())
            .unwrap_or_default()
    }

    fn certificate(&self, name: &str) -> Option<&'static str> {
        self.certified.iter().find(|n| **n == name).map(|_| "cert")
    }

    fn challenge_under_way(&self, name: &str) -> bool {
        self.challenges.contains(&name)
    }
}

fn table() -> Table {
    Table {
        apps: HashMap::from([
            ("chat.sg.test", ("chat", vec!["x-chat".to_owned()])),
            ("echo.sg.test", ("echo", vec!["sockgate".to_owned()])),
            ("new.sg.test", ("new", vec!["sockgate".to_owned()])),
        ]),
        certified: vec!["chat.sg.test", "echo.sg.test"],
        challenges: vec!["pending.sg.test"],
    }
}

#[test]
fn each_hello_is_routed_or_refused_with_its_alert_and_reason() {
    let x_chat: &[&[u8]] = &[b"x-chat"];
    let other: &[&[u8]] = &[b"h2", b"sockgate"];
    type Expected = Result<(&'static str, &'static str), (AlertDescription, &'static str)>;
    let cases: Vec<(Hello<'_>, Expected)> = vec![
        (
            Hello {
                server_name: Some("chat.sg.test"),
                ..Hello::default()
            },
            Ok(("chat.sg.test", "chat")),
        ),
        // ALPN checked only when the listener asks for it.
        (
            Hello {
                server_name: Some("chat.sg.test"),
                offered_alpn: Some(x_chat),
                ..Hello::default()
            },
            Ok(("chat.sg.test", "chat")),
        ),
        (
            Hello {
                server_name: Some("chat.sg.test"),
                offered_alpn: Some(other),
                ..Hello::default()
            },
            Err((
                AlertDescription::NoApplicationProtocol,
                "app `chat` speaks ALPN x-chat; the client offered none of them",
            )),
        ),
        (
            Hello::default(),
            Err((
                AlertDescription::UnrecognisedName,
                "no server name (SNI): name the app to reach",
            )),
        ),
        (
            Hello {
                server_name: Some("nope.sg.test"),
                offered_alpn: Some(x_chat),
                ..Hello::default()
            },
            Err((
                AlertDescription::UnrecognisedName,
                "server name `nope.sg.test` selects no app",
            )),
        ),
        (
            Hello {
                server_name: Some("new.sg.test"),
                ..Hello::default()
            },
            Err((
                AlertDescription::InternalError,
                "no certificate for `new.sg.test` yet",
            )),
        ),
        // A challenge for a served name without one under way is refused
        // like an unknown name: validations are not a way in.
        (
            Hello {
                server_name: Some("chat.sg.test"),
                acme_challenge: true,
                ..Hello::default()
            },
            Err((
                AlertDescription::UnrecognisedName,
                "ACME challenge connection for `chat.sg.test`, which has no challenge under way",
            )),
        ),
    ];
    let table = table();
    for (hello, expected) in cases {
        let got = route_hello(hello, &table);
        match (got, expected) {
            (
                Routing::Serve {
                    name,
                    app,
                    certificate,
                },
                Ok((want_name, want_app)),
            ) => {
                assert_eq!((name.as_str(), app), (want_name, want_app), "{hello:?}");
                assert_eq!(certificate, "cert");
            }
            (Routing::Refuse(refusal), Err((alert, reason))) => {
                assert_eq!(refusal.alert(), alert, "{hello:?}");
                assert_eq!(refusal.reason(), reason, "{hello:?}");
            }
            (got, expected) => panic!("{hello:?}: got {got:?}, expected {expected:?}"),
        }
    }
}

#[test]
fn a_challenge_under_way_is_answered_whatever_the_name_selects() {
    let hello = Hello {
        server_name: Some("pending.sg.test"),
        acme_challenge: true,
        ..Hello::default()
    };
    assert_eq!(
        route_hello(hello, &table()),
        Routing::Challenge("pending.sg.test".to_owned())
    );
}

#[test]
fn alerts_carry_the_rfc_8446_numbers() {
    assert_eq!(u8::from(Refusal::NoServerName.alert()), 112);
    assert_eq!(
        u8::from(
            Refusal::NoCommonProtocol {
                app: "a".into(),
                accepted: vec![]
            }
            .alert()
        ),
        120
    );
    assert_eq!(u8::from(Refusal::NoCertificate("a".into()).alert()), 80);
}
