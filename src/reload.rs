//! `sockgate reload`: asks a running gateway to re-read its configuration
//! file (`POST /v1/reload`), the way SIGHUP does, and says what changed.

use serde_json::Value;

use crate::client::{Client, Failure};

/// Reloads and prints the outcome: what was added, changed and removed on
/// stdout, the settings that wait for a restart as a warning on stderr. A
/// refused file is an error naming the file, the line and the reason
/// (exit code 1); the running configuration keeps serving.
pub async fn reload(client: &Client) -> Result<(), Failure> {
    let reloaded = client.post_json("/v1/reload").await?;
    if client.json() {
        println!(
            "{}",
            serde_json::to_string_pretty(&reloaded).unwrap_or_default()
        );
        return Ok(());
    }
    let names = |key: &str| -> Vec<String> {
        reloaded[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    println!(
        "reloaded {}",
        reloaded["file"]
            .as_str()
            .unwrap_or("the configuration file")
    );
    for (what, key) in [
        ("added", "added"),
        ("changed", "changed"),
        ("removed (connections drain)", "removed"),
        ("unchanged", "unchanged"),
        ("settings applied", "settings"),
    ] {
        let names = names(key);
        if !names.is_empty() {
            println!("  {what}: {}", names.join(", "));
        }
    }
    let restart = names("needs_restart");
    if !restart.is_empty() {
        eprintln!(
            "warning: changed in the file but applied only when the gateway restarts: {}",
            restart.join(", ")
        );
    }
    Ok(())
}
