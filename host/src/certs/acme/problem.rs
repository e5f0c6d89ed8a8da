//! What went wrong on the CA's side, classified once from the RFC 8555
//! problem document (section 6.7) by its `type`, never by the text of a
//! formatted error: the ACME task decides from an [`AcmeProblem`] whether
//! to retry at once or to back off.
//!
//! Problem documents reach the gateway two ways: inside an order or a
//! challenge (`rustls_acme::acme::Problem`, already parsed), or as the
//! body of an error answer to a request. rustls-acme 0.15 keeps the latter
//! in `HttpsRequestError::Non2xxStatus { status_code, body }`, in a private
//! module, so the only way to its fields is that variant's `Display`
//! (`non 2xx http status: {status_code} {body:?}`), which
//! [`CaProblem::of_error`] takes apart field by field: the status code,
//! then the body (a Rust string literal) decoded and parsed as JSON.

use std::fmt;

use rustls_acme::acme::{AcmeError, Problem};

/// The namespace of the problem types RFC 8555 defines.
const ACME_ERROR_NS: &str = "urn:ietf:params:acme:error:";

/// The `Display` prefix of rustls-acme's `Non2xxStatus` error.
const NON_2XX_PREFIX: &str = "non 2xx http status: ";

/// A problem the CA reported, by its type (RFC 8555 section 6.7), with
/// what the gateway does about it.
///
/// Whatever the problem, a certificate being served stays in service; a
/// failed order is retried after the renewal back-off (`backoff_initial_secs`
/// doubling to `backoff_max_secs`), since every cause below may go away
/// (a fixed DNS record, a CAA record, a lifted rate limit, a CA back up).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AcmeProblem {
    /// `badNonce`: the CA rejected the anti-replay nonce, which RFC 8555
    /// lets it do at any time. The order is retried at once, a few times,
    /// with a fresh nonce.
    BadNonce,
    /// `rateLimited`: too many orders or failed validations for this
    /// account or name. Backs off; the CA's limits are measured in hours,
    /// which `backoff_max_secs` (6 hours by default) is sized for.
    RateLimited,
    /// `rejectedIdentifier`, `unsupportedIdentifier` or `caa`: the CA will
    /// not issue for this name (policy, a blocked domain, a CAA record).
    /// Backs off; the log says why, for the operator to fix the name or
    /// its DNS.
    Refused,
    /// `connection`, `dns`, `tls`, `incorrectResponse` or `unauthorized`:
    /// the CA could not validate control of the name (DNS not pointing
    /// here, a firewall, the wrong challenge type). Backs off.
    ValidationFailed,
    /// `serverInternal`: the CA failed. Backs off.
    ServerInternal,
    /// `accountDoesNotExist`, `externalAccountRequired`, `invalidContact`,
    /// `unsupportedContact` or `userActionRequired`: the account needs
    /// attention (the settings' `contact`, new terms of service, a CA that
    /// requires external account binding). Backs off.
    Account,
    /// `malformed`, `badCSR`, `badPublicKey`, `badSignatureAlgorithm`,
    /// `badRevocationReason` or `orderNotReady`: the CA rejected a request
    /// as built by the gateway. Backs off.
    BadRequest,
    /// Any other type (a CA's own, or one defined after RFC 8555), as
    /// sent. Backs off.
    Other(String),
    /// A problem document without a type ("about:blank" by RFC 7807).
    /// Backs off.
    Untyped,
}

impl AcmeProblem {
    /// Classifies a problem `type` URI.
    pub(crate) fn from_type(typ: &str) -> Self {
        let Some(name) = typ.strip_prefix(ACME_ERROR_NS) else {
            return if typ.is_empty() || typ == "about:blank" {
                AcmeProblem::Untyped
            } else {
                AcmeProblem::Other(typ.to_owned())
            };
        };
        match name {
            "badNonce" => AcmeProblem::BadNonce,
            "rateLimited" => AcmeProblem::RateLimited,
            "rejectedIdentifier" | "unsupportedIdentifier" | "caa" => AcmeProblem::Refused,
            "connection" | "dns" | "tls" | "incorrectResponse" | "unauthorized" => {
                AcmeProblem::ValidationFailed
            }
            "serverInternal" => AcmeProblem::ServerInternal,
            "accountDoesNotExist"
            | "externalAccountRequired"
            | "invalidContact"
            | "unsupportedContact"
            | "userActionRequired" => AcmeProblem::Account,
            "malformed"
            | "badCSR"
            | "badPublicKey"
            | "badSignatureAlgorithm"
            | "badRevocationReason"
            | "orderNotReady" => AcmeProblem::BadRequest,
            _ => AcmeProblem::Other(typ.to_owned()),
        }
    }

    /// Whether the failed request is retried at once rather than after the
    /// back-off.
    pub(crate) fn retry_at_once(&self) -> bool {
        matches!(self, AcmeProblem::BadNonce)
    }
}

/// A problem document from the CA, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CaProblem {
    /// The HTTP status of the answer that carried it; `None` inside an
    /// order or a challenge.
    pub status: Option<u16>,
    /// Its type, classified.
    pub kind: AcmeProblem,
    /// The CA's explanation for people, if any.
    pub detail: Option<String>,
}

impl CaProblem {
    /// Classifies a problem parsed by rustls-acme (an order's or a
    /// challenge's `error`).
    pub(crate) fn of(problem: &Problem) -> Self {
        Self {
            status: None,
            kind: AcmeProblem::from_type(problem.typ.as_deref().unwrap_or("")),
            detail: problem.detail.clone(),
        }
    }

    /// The problem carried by an error answer of the CA to a request
    /// (`status` its HTTP status, `body` a problem document); `None` if
    /// the body is not one.
    pub(crate) fn from_answer(status: u16, body: &str) -> Option<Self> {
        let problem: Problem = serde_json::from_str(body).ok()?;
        Some(Self {
            status: Some(status),
            ..Self::of(&problem)
        })
    }

    /// The problem in an error of rustls-acme, if the CA answered with
    /// one (see the module doc for why this goes through `Display`).
    pub(crate) fn of_error(err: &AcmeError) -> Option<Self> {
        let AcmeError::HttpRequest(request) = err else {
            return None;
        };
        Self::from_non_2xx_text(&request.to_string())
    }

    /// The problem in the `Display` text of rustls-acme's
    /// `HttpsRequestError::Non2xxStatus`.
    fn from_non_2xx_text(text: &str) -> Option<Self> {
        let (status, body) = text.strip_prefix(NON_2XX_PREFIX)?.split_once(' ')?;
        Self::from_answer(status.parse().ok()?, &unescape_debug_str(body)?)
    }

    /// The first problem of the CA among `err` and its causes.
    pub(crate) fn in_chain(err: &anyhow::Error) -> Option<Self> {
        err.chain()
            .filter_map(|cause| cause.downcast_ref::<AcmeError>())
            .find_map(Self::of_error)
    }
}

impl fmt::Display for CaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            AcmeProblem::Other(typ) => write!(f, "{typ}")?,
            kind => write!(f, "{kind:?}")?,
        }
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// Decodes a string as `{:?}` writes it (quoted, with `\"`, `\\`, `\n`,
/// `\r`, `\t`, `\0`, `\'` and `\u{…}` escapes); `None` if `literal` is not
/// exactly one such string.
fn unescape_debug_str(literal: &str) -> Option<String> {
    let inner = literal.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(match chars.next()? {
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                '0' => '\0',
                c @ ('\\' | '"' | '\'') => c,
                'u' => {
                    if chars.next()? != '{' {
                        return None;
                    }
                    let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                }
                _ => return None,
            }),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Problem documents as Pebble sends them (captured from Pebble 2.x:
    /// a request with a rejected nonce, an order for a blocked domain, a
    /// JWS without payload).
    const BAD_NONCE: &str = "{\n   \"type\": \"urn:ietf:params:acme:error:badNonce\",\n   \
        \"detail\": \"JWS has an invalid anti-replay nonce: QWYssBo_Gv-8eBoMhFWYXQ\",\n   \
        \"status\": 400\n}";
    const REJECTED: &str = "{\n   \"type\": \"urn:ietf:params:acme:error:rejectedIdentifier\",\n   \
        \"detail\": \"Order included an identifier for which issuance is forbidden by policy: \
        \\\"www.blocked.example\\\"\",\n   \"status\": 400\n}";
    const MALFORMED: &str = "{\n   \"type\": \"urn:ietf:params:acme:error:malformed\",\n   \
        \"detail\": \"Parse error reading JWS: square/go-jose: missing payload in JWS message\",\n   \
        \"status\": 400\n}";
    /// As Let's Encrypt (Boulder) sends it.
    const RATE_LIMITED: &str = r#"{
  "type": "urn:ietf:params:acme:error:rateLimited",
  "detail": "too many failed authorizations (5) for \"app.example.org\" in the last 1h0m0s",
  "status": 429
}"#;

    /// The text of rustls-acme 0.15's `Non2xxStatus` error, built the way
    /// its `#[error("non 2xx http status: {status_code} {body:?}")]` does.
    fn non_2xx(status_code: u16, body: &str) -> String {
        format!("non 2xx http status: {status_code} {body:?}")
    }

    #[test]
    fn problem_documents_are_classified_by_type() {
        let cases = [
            (BAD_NONCE, 400, AcmeProblem::BadNonce),
            (REJECTED, 400, AcmeProblem::Refused),
            (MALFORMED, 400, AcmeProblem::BadRequest),
            (RATE_LIMITED, 429, AcmeProblem::RateLimited),
        ];
        for (body, status, kind) in cases {
            let problem = CaProblem::from_answer(status, body).unwrap();
            assert_eq!(problem.kind, kind, "{body}");
            assert_eq!(problem.status, Some(status));
            assert_eq!(problem.kind.retry_at_once(), kind == AcmeProblem::BadNonce);
            // Through the error text of rustls-acme, escapes and all.
            assert_eq!(
                CaProblem::from_non_2xx_text(&non_2xx(status, body)),
                Some(problem)
            );
        }
        let rejected = CaProblem::from_non_2xx_text(&non_2xx(400, REJECTED)).unwrap();
        assert_eq!(
            rejected.detail.as_deref(),
            Some(
                "Order included an identifier for which issuance is forbidden by policy: \
                 \"www.blocked.example\""
            )
        );
        assert_eq!(
            rejected.to_string(),
            "Refused (HTTP 400): Order included an identifier for which issuance is \
             forbidden by policy: \"www.blocked.example\""
        );
    }

    #[test]
    fn every_rfc_8555_type_has_its_class() {
        let class = |name: &str| AcmeProblem::from_type(&format!("{ACME_ERROR_NS}{name}"));
        for name in [
            "connection",
            "dns",
            "tls",
            "incorrectResponse",
            "unauthorized",
        ] {
            assert_eq!(class(name), AcmeProblem::ValidationFailed, "{name}");
        }
        for name in ["rejectedIdentifier", "unsupportedIdentifier", "caa"] {
            assert_eq!(class(name), AcmeProblem::Refused, "{name}");
        }
        for name in [
            "accountDoesNotExist",
            "externalAccountRequired",
            "invalidContact",
            "unsupportedContact",
            "userActionRequired",
        ] {
            assert_eq!(class(name), AcmeProblem::Account, "{name}");
        }
        for name in [
            "malformed",
            "badCSR",
            "badPublicKey",
            "badSignatureAlgorithm",
            "badRevocationReason",
            "orderNotReady",
        ] {
            assert_eq!(class(name), AcmeProblem::BadRequest, "{name}");
        }
        assert_eq!(class("serverInternal"), AcmeProblem::ServerInternal);
        assert_eq!(
            class("somethingNew"),
            AcmeProblem::Other(format!("{ACME_ERROR_NS}somethingNew"))
        );
        // Case matters (RFC 8555 names are exact), and a look-alike
        // outside the namespace is not an ACME type.
        assert_ne!(class("badnonce"), AcmeProblem::BadNonce);
        assert_eq!(
            AcmeProblem::from_type("urn:example:badNonce"),
            AcmeProblem::Other("urn:example:badNonce".into())
        );
        assert_eq!(AcmeProblem::from_type(""), AcmeProblem::Untyped);
        assert_eq!(AcmeProblem::from_type("about:blank"), AcmeProblem::Untyped);
    }

    #[test]
    fn a_problem_inside_an_order_is_classified_too() {
        let problem: Problem = serde_json::from_str(
            r#"{"type": "urn:ietf:params:acme:error:connection",
                "detail": "Connection refused", "status": 400}"#,
        )
        .unwrap();
        let problem = CaProblem::of(&problem);
        assert_eq!(problem.kind, AcmeProblem::ValidationFailed);
        assert_eq!(problem.status, None);
        assert_eq!(problem.detail.as_deref(), Some("Connection refused"));
    }

    #[test]
    fn text_that_is_not_a_problem_document_gives_none() {
        // A word in the detail or the body is not a type.
        assert_eq!(
            CaProblem::from_non_2xx_text(&non_2xx(502, "<html>badNonce</html>")),
            None
        );
        assert_eq!(CaProblem::from_non_2xx_text("io error: badNonce"), None);
        assert_eq!(
            CaProblem::from_non_2xx_text("non 2xx http status: 400 {\"type\": 1}"),
            None
        );
        assert_eq!(unescape_debug_str(r#""a\"b""#).as_deref(), Some("a\"b"));
        assert_eq!(
            unescape_debug_str(r#""\u{1f600}\t\\\0""#).as_deref(),
            Some("\u{1f600}\t\\\0")
        );
        assert_eq!(unescape_debug_str(r#""unterminated"#), None);
        assert_eq!(unescape_debug_str(r#""two" "strings""#), None);
        assert_eq!(unescape_debug_str(r#""\q""#), None);
    }
}
