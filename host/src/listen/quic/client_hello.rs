//! The server name of a QUIC client's TLS ClientHello, read from the
//! handshake bytes (the contents of its CRYPTO frames, RFC 9001) before
//! rustls sees them, so the endpoint can start the TLS session with the
//! configuration of the app that name selects: that app's ALPN protocols
//! only, in its own order.
//!
//! The bytes come from the network: every read is checked, and anything
//! unexpected is [`Hello::Unreadable`] (rustls then reads it with the
//! endpoint's default configuration and refuses it properly).

/// Largest ClientHello waited for; a longer one is read with the default
/// configuration. Real ones are a few KiB (post-quantum key shares
/// included); quinn's crypto buffer is 16 KiB.
pub(crate) const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// What the handshake bytes received so far say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// The ClientHello is not complete yet.
    Incomplete,
    /// A complete ClientHello, with its server name if it has one.
    Complete(Option<String>),
    /// Not a ClientHello, or malformed.
    Unreadable,
}

const CLIENT_HELLO: u8 = 1;
const SERVER_NAME_EXTENSION: u16 = 0;
const HOST_NAME: u8 = 0;

/// Reads the server name of the ClientHello at the start of `bytes`.
pub(crate) fn server_name(bytes: &[u8]) -> Hello {
    let mut header = Reader(bytes);
    let (Some(kind), Some(length)) = (header.u8(), header.u24()) else {
        return Hello::Incomplete;
    };
    if kind != CLIENT_HELLO {
        return Hello::Unreadable;
    }
    let Some(body) = header.take(length) else {
        return Hello::Incomplete;
    };
    match read_server_name(Reader(body)) {
        Some(name) => Hello::Complete(name),
        None => Hello::Unreadable,
    }
}

/// The server name in a ClientHello body; `None` when malformed,
/// `Some(None)` when it names no server.
fn read_server_name(mut hello: Reader<'_>) -> Option<Option<String>> {
    hello.take(2 + 32)?; // legacy_version, random
    let session_id = usize::from(hello.u8()?);
    hello.take(session_id)?;
    let suites = usize::from(hello.u16()?);
    hello.take(suites)?;
    let compression = usize::from(hello.u8()?);
    hello.take(compression)?;
    if hello.0.is_empty() {
        return Some(None);
    }
    let extensions_length = usize::from(hello.u16()?);
    let mut extensions = Reader(hello.take(extensions_length)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let length = usize::from(extensions.u16()?);
        let data = extensions.take(length)?;
        if kind != SERVER_NAME_EXTENSION {
            continue;
        }
        let mut list = Reader(data);
        let list_length = usize::from(list.u16()?);
        let mut names = Reader(list.take(list_length)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name_length = usize::from(names.u16()?);
            let name = names.take(name_length)?;
            if name_type == HOST_NAME {
                return Some(std::str::from_utf8(name).ok().map(str::to_owned));
            }
        }
        return Some(None);
    }
    Some(None)
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello handshake message with `extensions`.
    fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(32);
        body.extend([9u8; 32]);
        body.extend([0, 2, 0x13, 0x01]);
        body.extend([1, 0]);
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend(kind.to_be_bytes());
            ext.extend((data.len() as u16).to_be_bytes());
            ext.extend(data);
        }
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut message = vec![CLIENT_HELLO];
        message.extend(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend(body);
        message
    }

    fn sni(name: &str) -> (u16, Vec<u8>) {
        let mut entry = vec![HOST_NAME];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name.as_bytes());
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend(entry);
        (SERVER_NAME_EXTENSION, data)
    }

    #[test]
    fn the_server_name_is_read_once_the_hello_is_complete() {
        let alpn = (16u16, vec![0, 3, 2, b'h', b'3']);
        let message = hello(&[alpn.clone(), sni("chat.example.org")]);
        assert_eq!(
            server_name(&message),
            Hello::Complete(Some("chat.example.org".into()))
        );
        for cut in [0, 1, 3, 4, 40, message.len() - 1] {
            assert_eq!(
                server_name(&message[..cut]),
                Hello::Incomplete,
                "cut at {cut}"
            );
        }
        assert_eq!(server_name(&hello(&[alpn])), Hello::Complete(None));
    }

    #[test]
    fn malformed_hellos_are_unreadable_never_a_panic() {
        let message = hello(&[sni("a.example")]);
        let mut wrong_kind = message.clone();
        wrong_kind[0] = 2;
        assert_eq!(server_name(&wrong_kind), Hello::Unreadable);
        // Lengths inside the body that overrun it.
        for at in 4..message.len() {
            let mut broken = message.clone();
            broken[at] = 0xff;
            let _ = server_name(&broken);
        }
        let mut overrun = message.clone();
        let last = overrun.len() - "a.example".len() - 2;
        overrun[last] = 0x7f;
        assert_eq!(server_name(&overrun), Hello::Unreadable);
    }
}
