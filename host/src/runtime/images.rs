//! Compiled components shared in memory: apps whose components have the
//! same bytes (a team's hundred preview deployments of one build, a
//! thousand customers of one template) share one compiled image and one
//! pre-linked instance, instead of each deserializing its own copy.
//!
//! A compiled component is most of what an idle app costs (its code
//! mapping and wasmtime's metadata: about 400 KiB for a small Rust guest,
//! tens of MiB for an interpreter), and it is the same for every app of the
//! same bytes. The table is keyed by the compile cache's key (the bytes'
//! hash with the engine's settings: [`super::cache::CompileCache::key`]),
//! so an image is shared only by apps of the same engine and linker, and
//! it holds its images weakly: an image lives exactly as long as some app
//! (any version of any app still serving) holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::load::GuestPre;
use crate::base::locks::lock;

/// The live compiled images of the process, by compile cache key.
#[derive(Default)]
pub struct LoadedImages {
    by_key: Mutex<HashMap<String, Weak<GuestPre>>>,
}

impl LoadedImages {
    /// The image loaded for `key`, if an app still holds it.
    pub fn get(&self, key: &str) -> Option<Arc<GuestPre>> {
        lock(&self.by_key).get(key).and_then(Weak::upgrade)
    }

    /// Records `image` as the one for `key`, forgetting the images no app
    /// holds any more (so the table is as large as the live images, not
    /// as every component ever loaded). Two loads of the same new bytes
    /// racing each compile it; the later one's image is recorded, and the
    /// earlier one's lives on with its app.
    pub fn insert(&self, key: String, image: &Arc<GuestPre>) {
        let mut by_key = lock(&self.by_key);
        by_key.retain(|_, image| image.strong_count() > 0);
        by_key.insert(key, Arc::downgrade(image));
    }

    /// How many distinct compiled images apps hold now (`/metrics`).
    pub fn live(&self) -> usize {
        lock(&self.by_key)
            .values()
            .filter(|image| image.strong_count() > 0)
            .count()
    }
}
