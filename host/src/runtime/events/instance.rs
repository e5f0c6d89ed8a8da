//! One instance of an event-world app: created, supervised and, when it
//! traps, disposed of exactly as a `conn-handler` instance is
//! ([`crate::runtime::instance`]); only what runs inside differs — the
//! [`Driver`]'s event loop instead of concurrent `handle` calls.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::driver::{Driver, Guest};
use crate::runtime::instance::{
    Assigned, Ended, InstanceError, InstanceSettings, dispose_after_trap,
};
use crate::runtime::load::GuestPre;
use crate::runtime::slow_lane;
use crate::runtime::supervisor::Activation;

/// Creates event-world instance `index` and serves connections from `rx`
/// on it until the channel closes and its connections drained
/// ([`Ended::Closed`]), it has been idle for the app's
/// `hibernate_after_secs` ([`Ended::Hibernate`]), or the instance traps
/// (ending the connections it held; those still queued go to the next
/// instance). `woke` is when the connection that woke a hibernated shard
/// arrived. Returns `rx` for the next instance.
pub async fn run_events_instance(
    settings: Arc<InstanceSettings>,
    index: u32,
    mut rx: mpsc::Receiver<Assigned>,
    woke: Option<tokio::time::Instant>,
) -> (Result<Ended, InstanceError>, mpsc::Receiver<Assigned>) {
    let GuestPre::Events(pre) = &*settings.pre else {
        let error = wasmtime::format_err!("not a conn-events component");
        return (Err(InstanceError::Instantiate(error)), rx);
    };
    let pre = pre.clone();
    let (mut store, progress, meter) =
        settings.supervised_store_with(pre.engine(), index, Activation::PerCall);
    // The driver starts each call's activation (when guests are supervised).
    let calls = settings.supervision.epoch().then(|| meter.clone());
    // The store and the connections move into one future: it may go on in
    // the slow lane, on another thread, while the guest computes.
    let serving = {
        let settings = settings.clone();
        async move {
            let served = match pre.instantiate(&mut store).await {
                Ok(guest) => {
                    settings.started(index, woke);
                    let driver = Driver::new(
                        settings.log.clone(),
                        settings.policy.clone(),
                        settings.drain,
                        index,
                        progress,
                    );
                    let after = settings.hibernate_after;
                    let guest = Guest {
                        calls: calls.as_deref(),
                        contract: guest.contract(),
                    };
                    Ok(driver.serve(&mut store, guest, &mut rx, after).await)
                }
                Err(error) => Err(error),
            };
            (store, rx, served)
        }
    };
    let (store, rx, served) = slow_lane::run(meter, serving).await;
    let (error, connections) = match served {
        Ok(Ok(ended)) => return (Ok(ended), rx),
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
