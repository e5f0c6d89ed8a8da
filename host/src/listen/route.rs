//! Where a ClientHello goes: the one decision the TLS listener
//! (`tls::handshake`) and the QUIC endpoint (its certificate resolver) both
//! take before any certificate is shown, and the refusals they share.
//!
//! [`route_hello`] is pure, in the manner of quinn-proto's `Endpoint`: the
//! hello's facts and a [`Lookup`] of the routing table and certificates in,
//! a [`Routing`] out. The listeners only carry it out (send the alert,
//! start the handshake), so every refusal and its alert is decided — and
//! tested — here, without sockets.

use rustls::AlertDescription;

/// What the decision reads of the gateway's state: implemented over the
/// router and the certificates by each listener, and by a table in tests.
pub(crate) trait Lookup {
    /// What a name selects (an app, or its name).
    type App;
    /// What a served name is answered with.
    type Certificate;

    /// The app server name `name` (normalised) selects, if it is served.
    fn app(&self, name: &str) -> Option<Self::App>;
    /// The name of `app`, for refusals.
    fn app_name(&self, app: &Self::App) -> String;
    /// The ALPN protocols `app` accepts (asked only when the hello's
    /// protocols are to be checked).
    fn protocols(&self, app: &Self::App) -> Vec<String>;
    /// The certificate for `name`, if there is one yet.
    fn certificate(&self, name: &str) -> Option<Self::Certificate>;
    /// Whether a TLS-ALPN-01 challenge for `name` is under way.
    fn challenge_under_way(&self, name: &str) -> bool;
}

/// The facts of a ClientHello the decision rests on.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Hello<'a> {
    /// The server name (SNI), normalised ([`crate::base::names::normalize_name`]).
    pub server_name: Option<&'a str>,
    /// Whether the hello is an ACME TLS-ALPN-01 validation (it offers only
    /// `acme-tls/1`).
    pub acme_challenge: bool,
    /// The ALPN protocols offered, when the listener checks them here
    /// (QUIC, where one configuration serves every app); `None` leaves
    /// ALPN to the app's own rustls configuration (TLS).
    pub offered_alpn: Option<&'a [&'a [u8]]>,
}

/// What to do with a ClientHello.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Routing<A, C> {
    /// Answer the ACME TLS-ALPN-01 challenge for this name.
    Challenge(String),
    /// Serve app `app` at `name` with `certificate`.
    Serve {
        /// The server name, normalised.
        name: String,
        /// The app it selects.
        app: A,
        /// The certificate to show.
        certificate: C,
    },
    /// Refuse the handshake with the refusal's alert.
    Refuse(Refusal),
}

/// Why a handshake was refused, before any certificate was shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The client named no server (no SNI).
    NoServerName,
    /// The server name selects no app.
    UnknownName(String),
    /// The client offered none of the app's ALPN protocols.
    NoCommonProtocol {
        /// The app the name selects.
        app: String,
        /// The protocols it accepts.
        accepted: Vec<String>,
    },
    /// The name's certificate is not there yet (an ACME order under way).
    NoCertificate(String),
    /// An ACME validation for a name with no challenge under way.
    NoChallenge(String),
}

impl Refusal {
    /// The TLS alert the refusal is sent as (RFC 8446 section 6, and RFC
    /// 9001 section 8.1 for ALPN over QUIC).
    pub(crate) fn alert(&self) -> AlertDescription {
        match self {
            Refusal::NoServerName | Refusal::UnknownName(_) | Refusal::NoChallenge(_) => {
                AlertDescription::UnrecognisedName
            }
            Refusal::NoCommonProtocol { .. } => AlertDescription::NoApplicationProtocol,
            Refusal::NoCertificate(_) => AlertDescription::InternalError,
        }
    }

    /// What was wrong, for logs and (over QUIC) for the client's library.
    pub(crate) fn reason(&self) -> String {
        match self {
            Refusal::NoServerName => "no server name (SNI): name the app to reach".to_owned(),
            Refusal::UnknownName(name) => format!("server name `{name}` selects no app"),
            Refusal::NoCommonProtocol { app, accepted } => format!(
                "app `{app}` speaks ALPN {}; the client offered none of them",
                accepted.join(", ")
            ),
            Refusal::NoCertificate(name) => format!("no certificate for `{name}` yet"),
            Refusal::NoChallenge(name) => {
                format!("ACME challenge connection for `{name}`, which has no challenge under way")
            }
        }
    }
}

/// Decides where `hello` goes: an ACME challenge, an app, or a refusal.
/// Checked in this order: challenge, server name, app, ALPN (when
/// offered protocols are given), certificate.
pub(crate) fn route_hello<L: Lookup>(
    hello: Hello<'_>,
    lookup: &L,
) -> Routing<L::App, L::Certificate> {
    if hello.acme_challenge {
        let name = hello.server_name.unwrap_or_default().to_owned();
        return if lookup.challenge_under_way(&name) {
            Routing::Challenge(name)
        } else {
            Routing::Refuse(Refusal::NoChallenge(name))
        };
    }
    let Some(name) = hello.server_name else {
        return Routing::Refuse(Refusal::NoServerName);
    };
    let Some(app) = lookup.app(name) else {
        return Routing::Refuse(Refusal::UnknownName(name.to_owned()));
    };
    if let Some(offered) = hello.offered_alpn {
        let accepted = lookup.protocols(&app);
        if !accepted.iter().any(|a| offered.contains(&a.as_bytes())) {
            return Routing::Refuse(Refusal::NoCommonProtocol {
                app: lookup.app_name(&app),
                accepted,
            });
        }
    }
    match lookup.certificate(name) {
        Some(certificate) => Routing::Serve {
            name: name.to_owned(),
            app,
            certificate,
        },
        None => Routing::Refuse(Refusal::NoCertificate(name.to_owned())),
    }
}

#[cfg(test)]
mod tests;
