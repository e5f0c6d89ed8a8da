//! The wasm side against real `wasi:http` guests (guests/wasi-http-probe,
//! WASI 0.3, and guests/wasi-http-probe-p2, WASI 0.2), without sockets:
//! requests are built in the test, answers read from the channels.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{AsContextMut, Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::hooks::GatewayHooks;
use super::outbound::Outbound;
use super::proxy::{self, ProxyEnd};
use super::service::{HttpJob, InFlight, JobError, ServiceEnd, ServiceSettings, serve_jobs};
use super::{Detected, HttpWorld, detect};
use crate::tenant::conns::ShardLoad;
use crate::tenant::logs::{AppLog, EventKind};
use crate::tenant::outbound::OutboundPolicy;

/// A store's data with what `wasi:http` needs, and nothing of the
/// gateway's own (the gateway's `HostState` adds supervision and budgets).
struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: GatewayHooks,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

fn view(state: &mut State) -> WasiHttpCtxView<'_> {
    state.http()
}

struct Host {
    engine: Engine,
    linker: Linker<State>,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.wasm_component_model_async(true);
        let engine = Engine::new(&config).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        wasmtime_wasi::p3::add_to_linker(&mut linker).unwrap();
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
        wasmtime_wasi_http::p3::add_to_linker(&mut linker).unwrap();
        Host { engine, linker }
    })
}

/// The component built from `guests/<name>`, building the guests once.
fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let guests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guests");
    BUILT.get_or_init(|| {
        let status = std::process::Command::new(env!("CARGO"))
            .current_dir(&guests)
            .args(["build", "--release", "--quiet", "--target", "wasm32-wasip2"])
            .status()
            .expect("cannot run cargo to build the guests");
        assert!(status.success(), "building the guests failed");
    });
    guests
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")))
}

fn component(name: &str) -> Component {
    Component::from_file(&host().engine, guest(name)).unwrap()
}

fn state(policy: OutboundPolicy, log: &Arc<AppLog>) -> State {
    let mut builder = WasiCtx::builder();
    builder.allow_tcp(false).allow_udp(false);
    State {
        wasi: builder.build(),
        table: ResourceTable::new(),
        http: WasiHttpCtx::new(),
        hooks: GatewayHooks::new(Outbound {
            policy: Arc::new(policy),
            log: log.clone(),
            instance: 0,
        }),
    }
}

fn request(method: &str, uri: &str, body: &'static [u8]) -> http::Request<WasiBody> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header("sockgate-client-addr", "203.0.113.7:5")
        .body(
            Full::new(Bytes::from_static(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap()
}

async fn text(response: http::Response<WasiBody>) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A running WASI 0.3 instance and the channel that feeds it.
struct Instance {
    jobs: mpsc::Sender<HttpJob>,
    load: Arc<ShardLoad>,
    ended: tokio::task::JoinHandle<wasmtime::Result<ServiceEnd>>,
}

fn start_service(policy: OutboundPolicy, log: &Arc<AppLog>, max_lingering: usize) -> Instance {
    start_service_with(policy, log, max_lingering, None)
}

fn start_service_with(
    policy: OutboundPolicy,
    log: &Arc<AppLog>,
    max_lingering: usize,
    hibernate_after: Option<Duration>,
) -> Instance {
    let pre = ServicePre::new(
        host()
            .linker
            .instantiate_pre(&component("wasi-http-probe"))
            .unwrap(),
    )
    .unwrap();
    let (jobs, mut rx) = mpsc::channel(64);
    let load = Arc::new(ShardLoad::default());
    let mut store = Store::new(&host().engine, state(policy, log));
    let instance_load = load.clone();
    let ended = tokio::spawn(async move {
        let service = pre.instantiate_async(&mut store).await?;
        let settings = ServiceSettings {
            drain: Duration::from_secs(5),
            max_lingering,
            max_requests: 1000,
            hibernate_after,
        };
        store
            .run_concurrent(async |accessor| {
                serve_jobs(accessor, &service, view, &mut rx, &instance_load, settings).await
            })
            .await?
    });
    Instance { jobs, load, ended }
}

impl Instance {
    async fn send(
        &self,
        request: http::Request<WasiBody>,
        timeout: Duration,
    ) -> Result<http::Response<WasiBody>, Option<JobError>> {
        let (reply, answer) = oneshot::channel();
        let job = HttpJob {
            request,
            deadline: Instant::now() + timeout,
            reply,
            guard: InFlight::new(self.load.clone()),
        };
        self.jobs.send(job).await.unwrap();
        match answer.await {
            Ok(result) => result.map_err(Some),
            Err(_) => Err(None),
        }
    }
}

#[tokio::test]
async fn an_idle_service_instance_hibernates_but_not_while_a_request_sleeps() {
    let log = Arc::new(AppLog::new("api"));
    let after = Duration::from_millis(200);
    let instance = start_service_with(OutboundPolicy::default(), &log, 4, Some(after));
    let sent = std::time::Instant::now();
    let slept = instance
        .send(
            request("GET", "https://api.example.org/sleep?ms=600", b""),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(text(slept).await, (200, "slept\n".into()));
    let ended = tokio::time::timeout(Duration::from_secs(10), instance.ended)
        .await
        .expect("the idle instance did not hibernate")
        .unwrap()
        .unwrap();
    assert_eq!(ended, ServiceEnd::Hibernate);
    assert!(
        sent.elapsed() >= Duration::from_millis(600),
        "hibernated {:?} after a 600 ms request began",
        sent.elapsed()
    );
    assert_eq!(instance.load.active(), 0);
}

#[test]
fn the_probe_guests_export_their_worlds() {
    let service = component("wasi-http-probe");
    let engine = &host().engine;
    let exports: Vec<String> = service
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    assert!(matches!(
        detect(&exports),
        Detected::Http(HttpWorld::Service, _)
    ));
    let proxy = component("wasi-http-probe-p2");
    let exports: Vec<String> = proxy
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    assert!(matches!(
        detect(&exports),
        Detected::Http(HttpWorld::Proxy, _)
    ));
}

#[tokio::test]
async fn one_wasi_03_instance_serves_many_requests_with_shared_state() {
    let log = Arc::new(AppLog::new("probe"));
    let instance = start_service(OutboundPolicy::default(), &log, 4);
    let second = Duration::from_secs(10);

    let info = instance
        .send(
            request("GET", "https://api.example.org/info?x=1", b""),
            second,
        )
        .await
        .unwrap();
    let (status, body) = text(info).await;
    assert_eq!(status, 200);
    assert!(body.contains("scheme: https"), "{body}");
    assert!(body.contains("authority: api.example.org"), "{body}");
    assert!(body.contains("path: /info?x=1"), "{body}");
    assert!(
        body.contains("header sockgate-client-addr: 203.0.113.7:5"),
        "{body}"
    );

    let echo = instance
        .send(
            request("POST", "https://api.example.org/echo", b"ping!"),
            second,
        )
        .await
        .unwrap();
    assert_eq!(text(echo).await, (200, "ping!".into()));

    // Many at once on the one instance: the sleeps overlap.
    let started = std::time::Instant::now();
    let sleeps = (0..20).map(|_| {
        instance.send(
            request("GET", "https://api.example.org/sleep?ms=300", b""),
            second,
        )
    });
    for answer in futures::future::join_all(sleeps).await {
        assert_eq!(text(answer.unwrap()).await, (200, "slept\n".into()));
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "20 sleeps of 300 ms took {:?}: not concurrent",
        started.elapsed()
    );

    // State lives across requests: 1 info + 1 echo + 20 sleeps + this one.
    let count = instance
        .send(request("GET", "https://api.example.org/count", b""), second)
        .await
        .unwrap();
    assert_eq!(text(count).await, (200, "23\n".into()));

    let missing = instance
        .send(request("GET", "https://api.example.org/nope", b""), second)
        .await
        .unwrap();
    assert_eq!(text(missing).await.0, 404);
    drop(instance.jobs);
    assert_eq!(instance.ended.await.unwrap().unwrap(), ServiceEnd::Closed);
    assert_eq!(instance.load.active(), 0);
}

#[tokio::test]
async fn a_late_request_expires_and_too_many_recycle_the_instance() {
    let log = Arc::new(AppLog::new("probe"));
    let instance = start_service(OutboundPolicy::default(), &log, 1);
    let late = |ms| request("GET", &format!("https://a.test/sleep?ms={ms}"), b"");
    let short = Duration::from_millis(100);
    assert_eq!(
        instance.send(late(400), short).await.unwrap_err(),
        Some(JobError::Expired)
    );
    // The instance goes on serving while one call lingers.
    let hello = instance
        .send(
            request("GET", "https://a.test/", b""),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(text(hello).await, (200, "hello from p3\n".into()));
    assert_eq!(
        instance.send(late(2000), short).await.unwrap_err(),
        Some(JobError::Expired)
    );
    assert_eq!(
        instance.send(late(2000), short).await.unwrap_err(),
        Some(JobError::Expired)
    );
    // Two lingering calls, over the cap of one: recycled without waiting
    // for them.
    let ended = tokio::time::timeout(Duration::from_secs(1), instance.ended)
        .await
        .expect("the instance did not stop taking requests")
        .unwrap()
        .unwrap();
    assert!(
        matches!(ended, ServiceEnd::Recycle { lingering: 2 }),
        "{ended:?}"
    );
}

#[tokio::test]
async fn a_trap_ends_the_instance_and_drops_its_requests_answers() {
    let log = Arc::new(AppLog::new("probe"));
    let instance = start_service(OutboundPolicy::default(), &log, 4);
    let trap = instance
        .send(
            request("GET", "https://a.test/trap", b""),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(trap.unwrap_err(), None, "a trapped request has no answer");
    let err = instance.ended.await.unwrap().unwrap_err();
    assert!(format!("{err:?}").contains("unreachable"), "{err:?}");
}

#[tokio::test]
async fn outbound_requests_follow_the_policy() {
    // An upstream on loopback, and a policy that names it exactly.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (stream, _) = upstream.accept().await.unwrap();
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| {
                    let path = req.uri().path().to_owned();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(format!("upstream saw {path}")),
                        )))
                    }
                }),
            ));
        }
    });
    let url = format!("http://127.0.0.1:{port}/there");
    let fetch = format!("https://a.test/fetch?url={url}");

    let log = Arc::new(AppLog::new("probe"));
    let allowed = OutboundPolicy::parse(&[format!("127.0.0.1:{port}")]).unwrap();
    let instance = start_service(allowed, &log, 4);
    let answer = instance
        .send(request("GET", &fetch, b""), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        text(answer).await,
        (200, "upstream 200\nupstream saw /there".into())
    );

    let denied_log = Arc::new(AppLog::new("probe"));
    let denied = start_service(OutboundPolicy::default(), &denied_log, 4);
    let answer = denied
        .send(request("GET", &fetch, b""), Duration::from_secs(10))
        .await
        .unwrap();
    let (status, body) = text(answer).await;
    assert_eq!(status, 502);
    assert!(body.contains("DestinationIpProhibited"), "{body}");
    assert!(
        denied_log
            .events()
            .iter()
            .any(|e| matches!(&e.kind, EventKind::OutboundDenied { target } if target.contains(&port.to_string()))),
        "no outbound-denied event"
    );

    // WASI 0.2 guests reach it through the same policy.
    let proxy_log = Arc::new(AppLog::new("probe"));
    let allowed = OutboundPolicy::parse(&[format!("127.0.0.1:{port}")]).unwrap();
    let (status, body) = serve_p2(allowed, &proxy_log, request("GET", &fetch, b"")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "upstream 200\nupstream saw /there")
    );
}

/// Serves one request on a fresh WASI 0.2 instance of the p2 probe.
async fn serve_p2(
    policy: OutboundPolicy,
    log: &Arc<AppLog>,
    request: http::Request<WasiBody>,
) -> (u16, String) {
    let pre = ProxyPre::new(
        host()
            .linker
            .instantiate_pre(&component("wasi-http-probe-p2"))
            .unwrap(),
    )
    .unwrap();
    let store = Store::new(&host().engine, state(policy, log));
    let (run, response) = proxy::start(
        pre,
        store,
        view,
        request,
        || {},
        |error, _state| format!("{error:?}"),
    );
    let ended = tokio::spawn(run);
    let result = match response.await {
        Ok(Ok(response)) => text(response).await,
        Ok(Err(code)) => (0, format!("{code:?}")),
        Err(_) => (0, "no response".into()),
    };
    match ended.await.unwrap() {
        ProxyEnd::Served => result,
        ProxyEnd::NotStarted(err) => (0, format!("not started: {err:#}")),
        ProxyEnd::Trapped(why) => (0, format!("trapped: {why}")),
    }
}

#[tokio::test]
async fn a_wasi_02_request_gets_an_instance_of_its_own() {
    let log = Arc::new(AppLog::new("probe"));
    let policy = || OutboundPolicy::default();
    let (status, body) = serve_p2(
        policy(),
        &log,
        request("GET", "https://api.example.org/info", b""),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("world: p2"), "{body}");
    assert!(body.contains("scheme: https"), "{body}");
    assert!(body.contains("authority: api.example.org"), "{body}");
    let echo = serve_p2(
        policy(),
        &log,
        request("POST", "http://x.test/echo", b"hey"),
    )
    .await;
    assert_eq!(echo, (200, "hey".into()));
    // A fresh instance each time.
    for _ in 0..2 {
        let count = serve_p2(policy(), &log, request("GET", "http://x.test/count", b"")).await;
        assert_eq!(count, (200, "1\n".into()));
    }
    let (status, body) = serve_p2(policy(), &log, request("GET", "http://x.test/trap", b"")).await;
    assert_eq!(status, 0);
    assert!(body.starts_with("trapped"), "{body}");
}

/// Requests in the instance at once in
/// [`a_busy_instance_finishes_its_requests_before_taking_more`].
const MAX_REQUESTS: usize = 16;
/// Table entries one request of `wasi-http-hello-p3` holds at most, with
/// room to spare (about nine were measured).
const ENTRIES_PER_REQUEST: usize = 16;

/// Entries in the store's two tables: the component model's (tasks,
/// streams, futures, waitable sets) and `wasi:http`'s resources.
fn table_entries(store: &mut wasmtime::StoreContextMut<'_, State>) -> (usize, usize) {
    let concurrent = store
        .concurrent_resource_table()
        .map_or(0, |table| table.iter_mut().count());
    (concurrent, store.data_mut().table.iter_mut().count())
}

/// 50 clients that drop each response body after its data (as hyper does
/// once `content-length` bytes are out) keep one instance busy: the ends
/// of their requests must not pile up in the store's table.
#[tokio::test]
async fn a_busy_instance_finishes_its_requests_before_taking_more() {
    let log = Arc::new(AppLog::new("hello"));
    let pre = ServicePre::new(
        host()
            .linker
            .instantiate_pre(&component("wasi-http-hello-p3"))
            .unwrap(),
    )
    .unwrap();
    let (jobs, mut rx) = mpsc::channel(64);
    let load = Arc::new(ShardLoad::default());
    let mut store = Store::new(&host().engine, state(OutboundPolicy::default(), &log));
    let service = pre.instantiate_async(&mut store).await.unwrap();
    let settings = ServiceSettings {
        drain: Duration::from_secs(5),
        max_lingering: 4,
        max_requests: MAX_REQUESTS,
        hibernate_after: None,
    };
    let counts = store
        .run_concurrent(async |accessor| {
            let serving = serve_jobs(accessor, &service, view, &mut rx, &load, settings);
            let driving = async {
                let mut counts = Vec::new();
                for _round in 0..3 {
                    // 50 clients at once, 4 requests each.
                    let clients = (0..50).map(|_| async {
                        for _ in 0..4 {
                            let (reply, answer) = oneshot::channel();
                            let job = HttpJob {
                                request: request("GET", "http://hello.localhost/", b""),
                                deadline: Instant::now() + Duration::from_secs(10),
                                reply,
                                guard: InFlight::new(load.clone()),
                            };
                            jobs.send(job).await.unwrap();
                            let response = answer.await.unwrap().unwrap();
                            assert_eq!(response.status(), 200);
                            // As hyper does once `content-length` bytes are
                            // out: the body is dropped before its end.
                            let mut body = response.into_body();
                            let frame = body.frame().await.unwrap().unwrap();
                            assert!(frame.is_data());
                            drop(body);
                        }
                    });
                    futures::future::join_all(clients).await;
                    counts.push(
                        accessor.with(|mut store| table_entries(&mut store.as_context_mut())),
                    );
                }
                drop(jobs);
                counts
            };
            let (served, counts) = futures::join!(serving, driving);
            served.unwrap();
            counts
        })
        .await
        .unwrap();
    // Without the bound on requests in the instance: 1 880, 3 767, 5 630
    // entries (the ends of the bodies wait behind new calls, growing until
    // the table is full and the instance traps).
    eprintln!("table entries after 200, 400, 600 requests: {counts:?}");
    for (concurrent, wasi) in counts {
        assert!(
            concurrent <= ENTRIES_PER_REQUEST * MAX_REQUESTS
                && wasi <= ENTRIES_PER_REQUEST * MAX_REQUESTS,
            "{concurrent} and {wasi} entries for at most {MAX_REQUESTS} requests in the instance"
        );
    }
}
