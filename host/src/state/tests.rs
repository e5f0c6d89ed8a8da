//! Tests of the state directory: records, blobs and the admin token, on a
//! scratch directory.

use std::path::PathBuf;

use super::*;
use crate::base::names::AppName;
use crate::config::AppConfig;

fn scratch(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sockgate-state-{label}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn record(name: &str, digest: &str) -> AppRecord {
    let mut config = AppConfig::new(
        AppName::parse(name).unwrap(),
        PathBuf::new(),
        Some("127.0.0.1:0".parse().unwrap()),
    );
    config.component = PathBuf::from(format!("{digest}.wasm"));
    AppRecord {
        name: name.to_owned(),
        current: 1,
        versions: vec![VersionRecord {
            number: 1,
            digest: digest.to_owned(),
            deployed_at: 0,
            config,
            origin: None,
            world: None,
        }],
    }
}

#[test]
fn blobs_no_record_references_are_collected() {
    let dir = scratch("gc");
    let store = StateDir::open(&dir).unwrap();
    let kept = store.put_blob(b"kept").unwrap();
    let dropped = store.put_blob(b"dropped").unwrap();
    std::fs::write(dir.join("blobs/.x.wasm.tmp-0123"), b"half").unwrap();
    store.save_app(&record("a", &kept)).unwrap();
    assert_eq!(store.collect_blobs().unwrap(), 1);
    assert!(store.blob_path(&kept).exists());
    assert!(!store.blob_path(&dropped).exists());
    assert_eq!(std::fs::read_dir(dir.join("blobs")).unwrap().count(), 1);

    // A damaged record stops the collection: what it needs is unknown.
    let other = store.put_blob(b"other").unwrap();
    std::fs::write(dir.join("apps/b.json"), b"{ damaged").unwrap();
    assert_eq!(store.collect_blobs().unwrap(), 0);
    assert!(store.blob_path(&other).exists());
    let (records, problems) = store.load_apps().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(problems[0].0.as_deref(), Some("b"));

    // A record under another app's file name is not trusted.
    let renamed = serde_json::to_vec(&record("c", &kept)).unwrap();
    std::fs::write(dir.join("apps/d.json"), renamed).unwrap();
    let (_, problems) = store.load_apps().unwrap();
    assert!(
        problems
            .iter()
            .any(|(name, why)| name.as_deref() == Some("d") && why.contains("holds app `c`"))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_admin_token_others_could_read_is_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("token");
    let store = StateDir::open(&dir).unwrap();
    let token = store.admin_token().unwrap();
    assert_eq!(store.admin_token().unwrap(), token);
    let path = dir.join("admin-token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let fresh = store.admin_token().unwrap();
    assert_ne!(fresh, token);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn versions_are_numbered_after_the_newest_and_the_oldest_are_forgotten() {
    fn version(digest: &str) -> VersionRecord {
        record("a", digest).versions.remove(0)
    }
    let mut app = AppRecord {
        name: "a".to_owned(),
        current: 0,
        versions: Vec::new(),
    };
    assert!(app.current_version().is_none());
    app.push(version("one"));
    app.push(version("two"));
    assert_eq!(
        (app.current, app.current_version().unwrap().digest.as_str()),
        (2, "two")
    );
    assert_eq!(app.previous().map(|v| v.number), Some(1));

    // After a rollback to 1, a deploy is 3 (never a number used before),
    // and the version before it is 2, the newest older one.
    app.current = 1;
    assert!(app.previous().is_none());
    app.push(version("three"));
    assert_eq!(app.current, 3);
    assert_eq!(app.previous().map(|v| v.number), Some(2));

    // Only the newest VERSIONS_KEPT stay; numbers go on.
    for _ in 0..20 {
        app.push(version("more"));
    }
    assert_eq!(app.current, 23);
    let numbers: Vec<u64> = app.versions.iter().map(|v| v.number).collect();
    assert_eq!(numbers, (14..=23).collect::<Vec<u64>>());
}

#[test]
fn a_version_records_its_world_and_one_recorded_before_worlds_reads_without() {
    let mut app = record("a", "one");
    let old = serde_json::to_string(&app).unwrap();
    assert!(!old.contains("world"), "{old}");
    let read: AppRecord = serde_json::from_str(&old).unwrap();
    assert_eq!(read.versions[0].world, None);
    app.versions[0].world = Some(crate::runtime::load::World::HttpService);
    let new = serde_json::to_string(&app).unwrap();
    assert!(new.contains(r#""world":"http-service""#), "{new}");
    let read: AppRecord = serde_json::from_str(&new).unwrap();
    assert_eq!(
        read.versions[0].world,
        Some(crate::runtime::load::World::HttpService)
    );
}
