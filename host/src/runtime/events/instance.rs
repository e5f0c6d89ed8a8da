//! One instance of an event-world app: created, supervised and, when it
//! traps, disposed of exactly as a `conn-handler` instance is
//! ([`crate::runtime::instance`]); only what runs inside differs — the
//! [`Driver`]'s event loop instead of concurrent `handle` calls.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::driver::Driver;
use crate::runtime::instance::{Assigned, InstanceError, InstanceSettings, dispose_after_trap};
use crate::runtime::load::GuestPre;
use crate::runtime::slow_lane;
use crate::tenant::logs::EventKind;

/// Creates event-world instance `index` and serves connections from `rx`
/// on it until the channel closes and its connections drained (`Ok`), or
/// the instance traps (ending the connections it held; those still queued
/// go to the next instance). Returns `rx` for the next instance.
pub async fn run_events_instance(
    settings: Arc<InstanceSettings>,
    index: u32,
    mut rx: mpsc::Receiver<Assigned>,
) -> (Result<(), InstanceError>, mpsc::Receiver<Assigned>) {
    let GuestPre::Events(pre) = &settings.pre else {
        let error = wasmtime::format_err!("not a conn-events component");
        return (Err(InstanceError::Instantiate(error)), rx);
    };
    let pre = pre.clone();
    let (mut store, progress, meter) = settings.supervised_store(pre.engine(), index);
    // The store and the connections move into one future: it may go on in
    // the slow lane, on another thread, while the guest computes.
    let serving = {
        let settings = settings.clone();
        async move {
            let served = match pre.instantiate_async(&mut store).await {
                Ok(guest) => {
                    settings.log.event(Some(index), EventKind::InstanceStarted);
                    let driver = Driver::new(
                        settings.log.clone(),
                        settings.policy.clone(),
                        settings.drain,
                        index,
                        progress,
                    );
                    Ok(driver.serve(&mut store, &guest, &mut rx).await)
                }
                Err(error) => Err(error),
            };
            (store, rx, served)
        }
    };
    let (store, rx, served) = slow_lane::run(meter, serving).await;
    let (error, connections) = match served {
        Ok(Ok(())) => return (Ok(()), rx),
        Err(error) => return (Err(InstanceError::Instantiate(error)), rx),
        Ok(Err(trapped)) => trapped,
    };
    let (cause, reason) = dispose_after_trap(store, error, &settings.limits).await;
    let trapped = InstanceError::Trap {
        cause,
        reason,
        connections,
    };
    (Err(trapped), rx)
}
