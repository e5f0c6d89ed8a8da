//! Which version of the event world's contract a guest speaks, and the one
//! call the driver makes through it. The driver gathers and carries out
//! 0.1.0's events and actions for every guest; a 0.2.0 guest
//! (`wit/events-0.2/`, a batch's bytes in one buffer) has its batch packed
//! and its reply unpacked around the call ([`super::bindings_v2`]).

use wasmtime::Store;

use super::bindings::{Action, ConnEvents, ConnEventsPre, Event, Handler};
use super::bindings_v2::{
    self, Batch, ConnEvents as ConnEventsV2, ConnEventsPre as ConnEventsPreV2, HandlerV2,
};
use super::spare::SpareBuffers;
use crate::runtime::host_state::HostState;

/// A loaded event-world component, ready to instantiate, by the version of
/// the contract it exports.
#[derive(Clone)]
pub enum EventsPre {
    /// `sockgate:events@0.1.0`: a list of bytes per message.
    V1(ConnEventsPre<HostState>),
    /// `sockgate:events@0.2.0`: a batch's bytes in one buffer.
    V2(ConnEventsPreV2<HostState>),
}

/// An instantiated event-world guest.
pub(crate) enum EventsGuest {
    V1(ConnEvents),
    V2(ConnEventsV2),
}

impl EventsPre {
    /// The component, as wasmtime compiled it.
    pub(crate) fn component(&self) -> &wasmtime::component::Component {
        match self {
            EventsPre::V1(pre) => pre.instance_pre().component(),
            EventsPre::V2(pre) => pre.instance_pre().component(),
        }
    }

    /// The engine the component was compiled for.
    pub(crate) fn engine(&self) -> &wasmtime::Engine {
        match self {
            EventsPre::V1(pre) => pre.engine(),
            EventsPre::V2(pre) => pre.engine(),
        }
    }

    /// A new instance in `store`.
    pub(crate) async fn instantiate(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<EventsGuest> {
        Ok(match self {
            EventsPre::V1(pre) => EventsGuest::V1(pre.instantiate_async(store).await?),
            EventsPre::V2(pre) => EventsGuest::V2(pre.instantiate_async(store).await?),
        })
    }
}

impl EventsGuest {
    /// The guest's handler, as the driver calls it.
    pub(crate) fn contract(&self) -> Contract<'_> {
        match self {
            EventsGuest::V1(guest) => Contract::V1(guest.sockgate_events_handler()),
            EventsGuest::V2(guest) => Contract::V2 {
                handler: guest.sockgate_events_handler(),
                batch: bindings_v2::empty_batch(),
            },
        }
    }
}

/// A guest's handler and, for 0.2.0, the buffers its batches are packed
/// into (kept from call to call).
pub(crate) enum Contract<'a> {
    V1(&'a Handler),
    V2 {
        handler: &'a HandlerV2,
        batch: Batch,
    },
}

/// A guest's actions, in the version of the contract it speaks.
pub(crate) enum Reply {
    V1(Vec<Action>),
    /// Sends' bytes still in the reply's data, so the driver writes them
    /// from there ([`bindings_v2::unpack`]).
    V2(bindings_v2::Reply),
}

impl Contract<'_> {
    /// Calls the guest with `events` (emptied for 0.2.0, whose batch takes
    /// them, their buffers given to `spare`) and returns its reply.
    pub(crate) async fn call(
        &mut self,
        store: &mut Store<HostState>,
        events: &mut Vec<Event>,
        spare: &mut SpareBuffers,
    ) -> wasmtime::Result<Reply> {
        match self {
            Contract::V1(handler) => Ok(Reply::V1(handler.call_handle(store, events).await?)),
            Contract::V2 { handler, batch } => {
                bindings_v2::pack(events, batch, |bytes| spare.give(bytes));
                Ok(Reply::V2(handler.call_handle(store, batch).await?))
            }
        }
    }
}
