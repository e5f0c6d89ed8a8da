//! What the gateway keeps for each app (tenant) while it runs, and hands
//! to the runtime as its inputs: the connection account and its sweeper
//! ([`conns`]), the budgets of host resources a guest may hold
//! ([`guest_budget`]), the log and event records ([`logs`]), the
//! outbound policy ([`outbound`], with [`public_ip`]), hibernation's
//! policy and wake record ([`hibernation`]) and the gateway-wide ceiling on
//! guest memory ([`memory`]).
//!
//! **Architecture invariant:** these sit below the runtime: they know
//! nothing of WebAssembly, listeners or the routing table, so the runtime
//! can be handed them and tested with them alone.

pub mod conns;
pub mod guest_budget;
pub mod hibernation;
pub mod logs;
pub mod memory;
pub mod outbound;
pub(crate) mod public_ip;
