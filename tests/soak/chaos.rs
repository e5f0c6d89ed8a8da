//! The bad things, all at once: deploys, rollbacks and removals; hostile
//! guests; connection floods from many loopback addresses and slow
//! clients; `kill -9` of the gateway; the ACME CA going away.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::clients::Rng;
use crate::watch::settle_resources;
use crate::world::{Soak, Tally};
use sockgate_testkit::guests::guest_component;
use sockgate_testkit::paths::sockgate_binary;

/// Time between two changes of the `churn` app.
const DEPLOY_EVERY: Duration = Duration::from_secs(2);

/// Connections in one flood wave (below the per-client cap of 512: they
/// come from many addresses anyway) and how long they are held.
const FLOOD_CONNECTIONS: usize = 400;
const FLOOD_HOLD: Duration = Duration::from_secs(1);
/// Slow clients per wave, each dripping a request head byte by byte.
const SLOW_CLIENTS: usize = 20;
/// Time between two waves.
const WAVE_EVERY: Duration = Duration::from_secs(6);

/// What `churn` serves: `echo` and `hostile` tell themselves apart by
/// `compute 1`; `None` is removed.
type Version = Option<&'static str>;

/// Runs the CLI against the soak's gateway; `Ok` when it exits 0.
async fn cli(soak: &Soak, args: Vec<String>) -> Result<String, String> {
    let (admin, state) = (soak.admin.to_string(), soak.state.clone());
    tokio::task::spawn_blocking(move || {
        let output = Command::new(sockgate_binary())
            .args(&args)
            .env("SOCKGATE_ADMIN", admin)
            .env("SOCKGATE_STATE_DIR", state)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            Ok(text)
        } else {
            Err(format!("sockgate {}: {text}", args.join(" ")))
        }
    })
    .await
    .unwrap()
}

/// Which version `churn` serves now (`None`: nothing listens).
async fn served(soak: &Soak) -> Result<Version, String> {
    let Ok(mut stream) = TcpStream::connect(soak.tcp["churn"]).await else {
        return Ok(None);
    };
    stream
        .write_all(b"compute 1\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    match tokio::time::timeout(Duration::from_secs(15), reader.read_line(&mut line)).await {
        Err(_) => return Err("churn did not answer".to_owned()),
        // A removed app's listener may close with connections still in its
        // accept queue: the kernel resets them. Nothing serves: `None`.
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
        Ok(Err(err)) => return Err(err.to_string()),
        Ok(Ok(_)) => {}
    }
    match line.trim_end() {
        "compute 1" => Ok(Some("echo")),
        reply if reply.starts_with("computed ") => Ok(Some("hostile")),
        "" => Ok(None),
        other => Err(format!("churn answered {other:?}")),
    }
}

/// Deploys, rolls back and removes `churn` every couple of seconds; each
/// change must end on the old or the new version, whatever else happens.
pub async fn deployer(soak: Arc<Soak>) {
    let listen = soak.tcp["churn"].to_string();
    let mut current: Version = None;
    // A deploy of a new app, a new version, a rollback, another new
    // version, a removal: then again.
    let steps: [(&str, Version); 5] = [
        ("echo", Some("echo")),
        ("hostile", Some("hostile")),
        ("rollback", Some("echo")),
        ("hostile", Some("hostile")),
        ("rm", None),
    ];
    for step in (0..).map(|i| steps[i % steps.len()]) {
        if soak.stopping() {
            break;
        }
        tokio::time::sleep(DEPLOY_EVERY).await;
        let epoch = soak.serving().await;
        let (action, next) = step;
        let args: Vec<String> = match action {
            "rollback" => vec!["rollback".into(), "churn".into()],
            "rm" => vec!["rm".into(), "churn".into()],
            guest => {
                let mut args = vec![
                    "deploy".into(),
                    "churn".into(),
                    guest_component(guest).display().to_string(),
                ];
                if current.is_none() {
                    args.extend([
                        "--listen".into(),
                        listen.clone(),
                        "--instances".into(),
                        "1".into(),
                    ]);
                }
                args
            }
        };
        let outcome = cli(&soak, args).await;
        let interrupted = soak.epoch() != epoch;
        if let Err(err) = &outcome
            && !interrupted
        {
            soak.violation(format!("{action} of churn failed: {err}"));
        }
        soak.serving().await;
        match served(&soak).await {
            Ok(now) if now == next || (interrupted && now == current) => {
                if outcome.is_ok() {
                    Tally::add(&soak.tally.deploys, 1);
                }
                current = now;
            }
            Ok(now) => {
                soak.violation(format!(
                    "after {action} (interrupted: {interrupted}) churn serves {now:?}, \
                     neither {current:?} nor {next:?}"
                ));
                current = now;
            }
            Err(err) => {
                if !soak.excused(epoch) {
                    soak.violation(format!("after {action}, churn: {err}"));
                }
                // Go on from what the step should have left.
                current = next;
            }
        }
    }
}

/// What the hostile guests are asked to do: spin in every loop shape,
/// exhaust memory, trap, log flat out, open sockets and connections.
fn misdeeds(sink: SocketAddr) -> Vec<String> {
    [
        "spin",
        "spin-float",
        "spin-memory",
        "spin-recurse",
        "alloc 1024",
        "alloc-abort",
        "panic",
        "log-flood 2000",
        "sockets 32",
        "flood",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([format!("connect {sink}"), format!("streams 8 {sink}")])
    .collect()
}

/// Sends hostile requests to `app` one after another, each on its own
/// connection, reading what comes back for a while.
pub async fn hostile(soak: Arc<Soak>, app: &'static str, seed: u64) {
    let mut rng = Rng::new(seed);
    let misdeeds = misdeeds(soak.sink);
    while !soak.stopping() {
        soak.serving().await;
        let misdeed = &misdeeds[rng.below(misdeeds.len() as u64) as usize];
        let Ok(mut stream) = TcpStream::connect(soak.tcp[app]).await else {
            // Refusals are the gateway's right (crash-loop back-off).
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        Tally::add(&soak.tally.hostile, 1);
        if stream
            .write_all(format!("{misdeed}\n").as_bytes())
            .await
            .is_err()
        {
            continue;
        }
        // Read (a flood, a reply or the close) for at most two seconds.
        let mut buf = vec![0; 64 * 1024];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 || misdeed == "flood" {
                    break;
                }
            }
        })
        .await;
    }
}

/// Accepts the hostile guest's outbound connections and holds them until
/// the peer goes.
pub async fn sink(soak: Arc<Soak>) {
    let listener = TcpListener::bind(soak.sink)
        .await
        .expect("cannot bind the soak's sink");
    while !soak.stopping() {
        let Ok(Ok((mut stream, _))) =
            tokio::time::timeout(Duration::from_secs(1), listener.accept()).await
        else {
            continue;
        };
        tokio::spawn(async move {
            let _ = stream.write_all(b"sink\n").await;
            let mut buf = [0; 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
    }
}

/// Waves of connections from many loopback addresses to `echo`, and slow
/// clients to `web`; after each wave the gateway's descriptors and memory
/// must come back to their baseline.
pub async fn flood(soak: Arc<Soak>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut wave = 0u32;
    while !soak.stopping() {
        tokio::time::sleep(WAVE_EVERY).await;
        let epoch = soak.serving().await;
        wave += 1;
        let mut held = Vec::new();
        for _ in 0..FLOOD_CONNECTIONS {
            let source = Ipv4Addr::new(
                127,
                1 + rng.below(250) as u8,
                rng.below(256) as u8,
                1 + rng.below(250) as u8,
            );
            let socket = TcpSocket::new_v4().expect("socket");
            if socket.bind(SocketAddr::from((source, 0))).is_err() {
                continue;
            }
            if let Ok(Ok(mut stream)) =
                tokio::time::timeout(Duration::from_secs(2), socket.connect(soak.tcp["echo"])).await
            {
                let _ = stream.write_all(b"flood\n").await;
                held.push(stream);
            }
        }
        let slow: Vec<_> = (0..SLOW_CLIENTS)
            .map(|_| tokio::spawn(slow_client(soak.tcp["web"])))
            .collect();
        Tally::add(
            &soak.tally.flood_connections,
            (held.len() + SLOW_CLIENTS) as u64,
        );
        tokio::time::sleep(FLOOD_HOLD).await;
        drop(held);
        for client in slow {
            let _ = client.await;
        }
        settle_resources(&soak, epoch, wave).await;
    }
}

/// Drips an HTTP request head one byte every 100 ms for two seconds.
async fn slow_client(addr: SocketAddr) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return;
    };
    for byte in b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: ".iter().take(20) {
        if stream.write_all(&[*byte]).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kill -9` of the gateway at spread-out moments, each followed by a
/// restart on the same configuration and state.
pub async fn killer(soak: Arc<Soak>, seed: u64) {
    let mut rng = Rng::new(seed);
    let kills = soak.plan.kills;
    let slot = soak.plan.duration / (kills + 1);
    for k in 1..=kills {
        let jitter = Duration::from_millis(rng.below(slot.as_millis() as u64 / 2 + 1));
        let at = slot * k - slot / 4 + jitter;
        tokio::time::sleep(at.saturating_sub(soak.elapsed())).await;
        if soak.stopping() {
            break;
        }
        let soak = soak.clone();
        tokio::task::spawn_blocking(move || soak.kill_and_restart())
            .await
            .unwrap();
    }
}

/// Stops the ACME CA for a while and brings it back, `ca_outages` times.
pub async fn ca_outages(soak: Arc<Soak>) {
    let outages = soak.plan.ca_outages;
    let slot = soak.plan.duration / (outages + 1);
    for k in 1..=outages {
        tokio::time::sleep((slot * k).saturating_sub(soak.elapsed())).await;
        if soak.stopping() {
            break;
        }
        soak.pebble.lock().unwrap().stop();
        Tally::add(&soak.tally.ca_outages, 1);
        tokio::time::sleep(slot / 2).await;
        let soak = soak.clone();
        tokio::task::spawn_blocking(move || soak.pebble.lock().unwrap().resume())
            .await
            .unwrap();
    }
}
