//! Requests as guests expect them: what the gateway does to a request's
//! head before an app sees it. A pure function of the head and the
//! connection, so tests give it heads and compare.

use http::header::{CONTENT_LENGTH, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Uri};

use super::ConnMeta;

/// The header that carries the client's address (`ip:port`, IPv6 in
/// brackets) to the guest. The gateway sets it on every request and
/// removes any copy the client sent, so a guest may trust it. WASI's HTTP
/// interfaces have no other way to tell a guest who is calling.
pub(crate) const CLIENT_ADDR_HEADER: &str = "sockgate-client-addr";

/// Why a request head is answered by the gateway instead of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// `400 Bad Request`: the head is malformed or ambiguous.
    BadRequest(String),
    /// `421 Misdirected Request`: the authority names another app than the
    /// one the connection's server name (TLS SNI) selected; the client
    /// should open a connection for that name (HTTP/2 and HTTP/3 clients
    /// reuse connections across names a certificate covers).
    Misdirected {
        /// The host the request named.
        host: String,
    },
    /// `413 Content Too Large`: the declared body is over the app's cap.
    TooLarge {
        /// The declared length.
        declared: u64,
        /// The cap, in bytes.
        limit: u64,
    },
    /// `501 Not Implemented`: a method the gateway cannot carry to a
    /// `wasi:http` guest (`CONNECT`: no tunnels).
    NotImplemented(String),
}

/// Normalises a request head in place, for an app whose origin says which
/// hosts it serves (`serves_host`, lowercase hosts without port), with a
/// body cap of `max_body` bytes:
///
/// - the URI becomes absolute, `https://authority/path?query` (`http` on a
///   cleartext connection), its authority taken from the request target
///   (HTTP/2 `:authority`, HTTP/3, HTTP/1.1 absolute form) or else from
///   `Host`; both present and different is refused (`400`);
/// - on an encrypted connection, a host that selects another app than the
///   server name is refused (`421`);
/// - [`CLIENT_ADDR_HEADER`] is set to the client's address, copies the
///   client sent are removed;
/// - a declared body over the cap is refused (`413`), `CONNECT` and the
///   asterisk form (`OPTIONS *`) too (`501`, `400`).
pub(crate) fn prepare(
    parts: &mut http::request::Parts,
    conn: &ConnMeta,
    serves_host: &dyn Fn(&str) -> bool,
    max_body: u64,
) -> Result<(), Rejection> {
    if parts.method == Method::CONNECT {
        return Err(Rejection::NotImplemented(
            "CONNECT is not served: wasi:http has no tunnels (serve such clients with a \
             conn-handler app)"
                .into(),
        ));
    }
    let authority = authority_of(parts, conn)?;
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    if let Some(server_name) = &conn.server_name
        && host != *server_name
        && !serves_host(&host)
    {
        return Err(Rejection::Misdirected { host });
    }
    let path = match parts.uri.path_and_query() {
        Some(path) if path.as_str() == "*" => {
            return Err(Rejection::BadRequest(
                "the asterisk form (OPTIONS *) is not served".into(),
            ));
        }
        Some(path) if path.as_str().starts_with('/') => path.clone(),
        Some(path) => {
            return Err(Rejection::BadRequest(format!(
                "the request target {:?} is not a path",
                path.as_str()
            )));
        }
        None => PathAndQuery::from_static("/"),
    };
    let scheme = if conn.secure() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    parts.uri = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|err| Rejection::BadRequest(format!("cannot make the URI absolute: {err}")))?;

    parts.headers.remove(CLIENT_ADDR_HEADER);
    let peer = HeaderValue::from_str(&conn.peer.to_string())
        .map_err(|err| Rejection::BadRequest(format!("client address: {err}")))?;
    parts.headers.insert(CLIENT_ADDR_HEADER, peer);

    if let Some(declared) = declared_length(&parts.headers)?
        && declared > max_body
    {
        return Err(Rejection::TooLarge {
            declared,
            limit: max_body,
        });
    }
    Ok(())
}

/// The request's authority: the request target's, else `Host`'s, else (an
/// HTTP/1.0 request without `Host`) the server name or the local address.
fn authority_of(parts: &http::request::Parts, conn: &ConnMeta) -> Result<Authority, Rejection> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::BadRequest("more than one Host header".into()));
    }
    let host = host
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| text.parse::<Authority>().ok())
                .ok_or_else(|| Rejection::BadRequest(format!("invalid Host header {value:?}")))
        })
        .transpose()?;
    let authority = match (parts.uri.authority(), host) {
        (Some(target), Some(host)) if !same_authority(target, &host) => {
            return Err(Rejection::BadRequest(format!(
                "the Host header names {host} and the request target {target}"
            )));
        }
        (Some(target), _) => target.clone(),
        (None, Some(host)) => host,
        (None, None) => {
            let fallback = match &conn.server_name {
                Some(name) => name.clone(),
                None => conn.local.to_string(),
            };
            fallback
                .parse()
                .map_err(|_| Rejection::BadRequest("the request names no host".into()))?
        }
    };
    if authority.as_str().contains('@') {
        return Err(Rejection::BadRequest(
            "an authority with user information is not served".into(),
        ));
    }
    if authority.host().is_empty() {
        return Err(Rejection::BadRequest(
            "the request names an empty host".into(),
        ));
    }
    Ok(authority)
}

fn same_authority(a: &Authority, b: &Authority) -> bool {
    a.host().eq_ignore_ascii_case(b.host()) && a.port_u16() == b.port_u16()
}

/// The `Content-Length` a request declares: `None` without one, refused
/// when there are several or one is not a number.
fn declared_length(headers: &http::HeaderMap) -> Result<Option<u64>, Rejection> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::BadRequest("more than one Content-Length".into()));
    }
    let text = value.to_str().unwrap_or("");
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::BadRequest(format!(
            "invalid Content-Length {value:?}"
        )));
    }
    text.parse()
        .map(Some)
        .map_err(|_| Rejection::BadRequest(format!("invalid Content-Length {value:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Protocol;

    fn tls(protocol: Protocol) -> ConnMeta {
        ConnMeta {
            peer: "203.0.113.7:51234".parse().unwrap(),
            local: "192.0.2.1:443".parse().unwrap(),
            server_name: Some("api.example.org".into()),
            protocol,
        }
    }

    fn cleartext() -> ConnMeta {
        ConnMeta {
            peer: "[2001:db8::7]:40000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            server_name: None,
            protocol: Protocol::Http1,
        }
    }

    /// `api.example.org` and its custom domain `api.acme.test` are the
    /// app's; `other.example.org` is another app's.
    fn serves(host: &str) -> bool {
        matches!(host, "api.example.org" | "api.acme.test")
    }

    fn head(request: http::Request<()>) -> http::request::Parts {
        request.into_parts().0
    }

    fn prepared(request: http::Request<()>, conn: &ConnMeta) -> Result<String, Rejection> {
        let mut parts = head(request);
        prepare(&mut parts, conn, &serves, 1000)?;
        Ok(parts.uri.to_string())
    }

    #[test]
    fn the_uri_becomes_absolute_from_host_or_authority() {
        let h1 = http::Request::get("/a/b?c=d")
            .header(HOST, "API.example.org")
            .body(())
            .unwrap();
        assert_eq!(
            prepared(h1, &tls(Protocol::Http1)).unwrap(),
            "https://API.example.org/a/b?c=d"
        );
        let h2 = http::Request::get("https://api.example.org:8443/x")
            .body(())
            .unwrap();
        assert_eq!(
            prepared(h2, &tls(Protocol::Http2)).unwrap(),
            "https://api.example.org:8443/x"
        );
        let plain = http::Request::get("/").header(HOST, "localhost:8080");
        assert_eq!(
            prepared(plain.body(()).unwrap(), &cleartext()).unwrap(),
            "http://localhost:8080/"
        );
        // HTTP/1.0 without Host: the connection's own name.
        let old = http::Request::get("/old").body(()).unwrap();
        assert_eq!(
            prepared(old, &tls(Protocol::Http1)).unwrap(),
            "https://api.example.org/old"
        );
        let old = http::Request::get("/old").body(()).unwrap();
        assert_eq!(
            prepared(old, &cleartext()).unwrap(),
            "http://127.0.0.1:8080/old"
        );
    }

    #[test]
    fn another_apps_authority_is_misdirected() {
        let coalesced = http::Request::get("https://other.example.org/")
            .body(())
            .unwrap();
        assert_eq!(
            prepared(coalesced, &tls(Protocol::Http2)),
            Err(Rejection::Misdirected {
                host: "other.example.org".into()
            })
        );
        // The app's custom domain on a connection made for its base name.
        let custom = http::Request::get("https://api.acme.test/")
            .body(())
            .unwrap();
        assert!(prepared(custom, &tls(Protocol::Http2)).is_ok());
        // Cleartext connections are the app's by their port: any host.
        let any = http::Request::get("/").header(HOST, "other.example.org");
        assert!(prepared(any.body(()).unwrap(), &cleartext()).is_ok());
    }

    #[test]
    fn ambiguous_heads_are_refused() {
        let two = http::Request::get("https://api.example.org/")
            .header(HOST, "other.example.org")
            .body(())
            .unwrap();
        assert!(matches!(
            prepared(two, &tls(Protocol::Http2)),
            Err(Rejection::BadRequest(_))
        ));
        let hosts = http::Request::get("/")
            .header(HOST, "api.example.org")
            .header(HOST, "api.example.org")
            .body(())
            .unwrap();
        assert!(matches!(
            prepared(hosts, &tls(Protocol::Http1)),
            Err(Rejection::BadRequest(_))
        ));
        let user = http::Request::get("/")
            .header(HOST, "me@api.example.org")
            .body(())
            .unwrap();
        assert!(matches!(
            prepared(user, &tls(Protocol::Http1)),
            Err(Rejection::BadRequest(_))
        ));
        let star = http::Request::options("*")
            .header(HOST, "api.example.org")
            .body(())
            .unwrap();
        assert!(matches!(
            prepared(star, &tls(Protocol::Http1)),
            Err(Rejection::BadRequest(_))
        ));
        let connect = http::Request::connect("api.example.org:443")
            .body(())
            .unwrap();
        assert!(matches!(
            prepared(connect, &tls(Protocol::Http1)),
            Err(Rejection::NotImplemented(_))
        ));
    }

    #[test]
    fn the_client_address_is_the_gateways_to_say() {
        let forged = http::Request::get("/")
            .header(HOST, "api.example.org")
            .header(CLIENT_ADDR_HEADER, "127.0.0.1:1")
            .header(CLIENT_ADDR_HEADER, "10.0.0.1:2")
            .body(())
            .unwrap();
        let mut parts = head(forged);
        prepare(&mut parts, &tls(Protocol::Http1), &serves, 1000).unwrap();
        let values: Vec<_> = parts.headers.get_all(CLIENT_ADDR_HEADER).iter().collect();
        assert_eq!(values, ["203.0.113.7:51234"]);
        let mut parts = head(http::Request::get("/x").body(()).unwrap());
        prepare(&mut parts, &cleartext(), &serves, 1000).unwrap();
        assert_eq!(parts.headers[CLIENT_ADDR_HEADER], "[2001:db8::7]:40000");
    }

    #[test]
    fn a_declared_body_over_the_cap_is_refused() {
        let big = http::Request::post("/")
            .header(HOST, "api.example.org")
            .header(CONTENT_LENGTH, "1001")
            .body(())
            .unwrap();
        assert_eq!(
            prepared(big, &tls(Protocol::Http1)),
            Err(Rejection::TooLarge {
                declared: 1001,
                limit: 1000
            })
        );
        let fits = http::Request::post("/")
            .header(HOST, "api.example.org")
            .header(CONTENT_LENGTH, "1000")
            .body(())
            .unwrap();
        assert!(prepared(fits, &tls(Protocol::Http1)).is_ok());
        let bad = http::Request::post("/")
            .header(HOST, "api.example.org")
            .header(CONTENT_LENGTH, "+5")
            .body(())
            .unwrap();
        assert!(matches!(
            prepared(bad, &tls(Protocol::Http1)),
            Err(Rejection::BadRequest(_))
        ));
    }
}
