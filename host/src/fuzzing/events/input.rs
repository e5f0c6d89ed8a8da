//! The input of the `event_actions` target, read with
//! [`arbitrary::Unstructured`] as the plain byte format the parent module
//! documents: the plan of turns, what the peers do, and the guest's
//! actions naming connections and timers.

use arbitrary::{Arbitrary, Result as ArbResult, Unstructured};

/// Most turns (guest calls) of one input, so an execution stays short.
pub(super) const MAX_TURNS: usize = 32;
/// Most timers one `set-timers` action of the harness sets (its
/// `fill-timers` reaches the instance's limit, [`MAX_TIMERS`], which is
/// small in the fuzzing build).
pub(super) const MAX_TIMERS_AT_ONCE: u16 = 256;

/// A whole input.
#[derive(Debug)]
pub(super) struct Plan {
    /// Client connections the instance holds from the start (1 to 4).
    pub(super) clients: usize,
    /// The app's outbound policy allows the harness's loopback listener
    /// (`127.0.0.1:PORT`); otherwise nothing.
    pub(super) allow_loopback: bool,
    pub(super) turns: Vec<Turn>,
}

impl<'a> Arbitrary<'a> for Plan {
    fn arbitrary(u: &mut Unstructured<'a>) -> ArbResult<Self> {
        let clients = 1 + usize::from(u.arbitrary::<u8>()? % 4);
        let allow_loopback = u.arbitrary::<u8>()? & 1 == 1;
        let mut turns = Vec::new();
        while !u.is_empty() && turns.len() < MAX_TURNS {
            turns.push(u.arbitrary()?);
        }
        Ok(Self {
            clients,
            allow_loopback,
            turns,
        })
    }
}

/// What the peers do, then what the guest answers.
#[derive(Debug)]
pub(super) struct Turn {
    pub(super) peers: Vec<PeerOp>,
    pub(super) actions: Vec<Act>,
}

impl<'a> Arbitrary<'a> for Turn {
    fn arbitrary(u: &mut Unstructured<'a>) -> ArbResult<Self> {
        let peer_ops = u.arbitrary::<u8>()? % 4;
        let peers = (0..peer_ops)
            .map(|_| u.arbitrary())
            .collect::<ArbResult<_>>()?;
        let count = u.arbitrary::<u16>()?;
        let mut actions = Vec::new();
        while !u.is_empty() && actions.len() < usize::from(count) {
            actions.push(u.arbitrary()?);
        }
        Ok(Self { peers, actions })
    }
}

/// Something a connection's peer (the client, or the server an outbound
/// connection reached) does; `peer` picks one of them.
#[derive(Debug)]
pub(super) enum PeerOp {
    /// Sends `len` bytes (as many as the socket takes now).
    Write { peer: u8, len: u16 },
    /// Reads everything that arrived.
    Read { peer: u8 },
    /// Finishes sending (FIN).
    Shutdown { peer: u8 },
    /// Resets the connection (RST) and forgets it.
    Reset { peer: u8 },
}

impl<'a> Arbitrary<'a> for PeerOp {
    fn arbitrary(u: &mut Unstructured<'a>) -> ArbResult<Self> {
        let tag = u.arbitrary::<u8>()?;
        let peer = u.arbitrary::<u8>()?;
        Ok(match tag % 4 {
            0 => Self::Write {
                peer,
                len: u.arbitrary()?,
            },
            1 => Self::Read { peer },
            2 => Self::Shutdown { peer },
            _ => Self::Reset { peer },
        })
    }
}

/// A connection the guest names: mostly an open one, sometimes one that
/// is gone, a guess at ids (the gateway hands them out in sequence), or
/// any number.
#[derive(Debug, Clone, Copy)]
pub(super) enum ConnRef {
    Open(u8),
    Gone(u8),
    Guess(u8),
    Any(u64),
}

impl<'a> Arbitrary<'a> for ConnRef {
    fn arbitrary(u: &mut Unstructured<'a>) -> ArbResult<Self> {
        let tag = u.arbitrary::<u8>()?;
        Ok(match tag {
            0..=191 => Self::Open(tag),
            192..=223 => Self::Gone(tag),
            224..=247 => Self::Guess(tag - 224),
            _ => Self::Any(u.arbitrary()?),
        })
    }
}

/// A timer or connect token: small ones collide (moving timers, repeated
/// connect tokens), any other is possible.
#[derive(Debug, Clone, Copy)]
pub(super) struct Token(pub(super) u64);

impl<'a> Arbitrary<'a> for Token {
    fn arbitrary(u: &mut Unstructured<'a>) -> ArbResult<Self> {
        let tag = u.arbitrary::<u8>()?;
        Ok(Self(if tag < 0xf0 {
            u64::from(tag % 16)
        } else {
            u.arbitrary()?
        }))
    }
}

/// Where a connect goes.
#[derive(Debug)]
pub(super) enum Host {
    /// The listener's address, `127.0.0.1`.
    Listener,
    /// Any text (a name is refused without a lookup by both policies).
    Text(String),
}

/// One action of the guest (what the WIT `action` carries), with lengths
/// instead of bytes and references instead of ids.
#[derive(Debug)]
pub(super) enum Act {
    Send {
        conn: ConnRef,
        len: u32,
    },
    Shutdown(ConnRef),
    Close(ConnRef),
    Pause(ConnRef),
    Resume(ConnRef),
    SetTimer {
        token: Token,
        after_ms: u32,
    },
    /// `count` `set-timer`s with tokens from `first`, in one action of the
    /// harness.
    SetTimers {
        first: u64,
        count: u16,
        after_ms: u32,
    },
    /// `set-timer`s with tokens from `first`, one more than the instance
    /// may have pending (the limit needs more than an input holds).
    FillTimers {
        first: u64,
        after_ms: u32,
    },
    CancelTimer(Token),
    Connect {
        token: Token,
        host: Host,
        /// `None`: the listener's port.
        port: Option<u16>,
    },
}

impl<'a> Arbitrary<'a> for Act {
    fn arbitrary(u: &mut Unstructured<'a>) -> ArbResult<Self> {
        let tag = u.arbitrary::<u8>()?;
        if tag == u8::MAX {
            return Ok(Self::FillTimers {
                first: u.arbitrary()?,
                after_ms: u.arbitrary()?,
            });
        }
        Ok(match tag % 9 {
            0 => Self::Send {
                conn: u.arbitrary()?,
                len: u.arbitrary()?,
            },
            1 => Self::Shutdown(u.arbitrary()?),
            2 => Self::Close(u.arbitrary()?),
            3 => Self::Pause(u.arbitrary()?),
            4 => Self::Resume(u.arbitrary()?),
            5 => Self::SetTimer {
                token: u.arbitrary()?,
                after_ms: u.arbitrary()?,
            },
            6 => Self::SetTimers {
                first: u.arbitrary()?,
                count: u.arbitrary::<u16>()? % (MAX_TIMERS_AT_ONCE + 1),
                after_ms: u.arbitrary()?,
            },
            7 => Self::CancelTimer(u.arbitrary()?),
            _ => {
                let token = u.arbitrary()?;
                let host = match u.arbitrary::<u8>()? {
                    0..=127 => Host::Listener,
                    len => {
                        let len = usize::from(len - 128).min(u.len());
                        Host::Text(String::from_utf8_lossy(u.bytes(len)?).into_owned())
                    }
                };
                let port = match u.arbitrary::<u8>()? {
                    0..=127 => None,
                    _ => Some(u.arbitrary()?),
                };
                Self::Connect { token, host, port }
            }
        })
    }
}
