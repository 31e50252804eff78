//! `powerapi serve`: the `record` pipeline (one sensor, one attribution) with a Prometheus
//! endpoint as its output. The collector thread renders the metrics once per interval; HTTP
//! handlers only clone that text, so no client — slow, stalled or hostile — can hold up the
//! sensor. Connections are capped, request headers must arrive within a deadline, bodies are
//! never read, and every connection has a lifetime limit.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::sync::{Notify, Semaphore};

use crate::{
    collect::Snapshot,
    collect::{CollectError, Collector, CollectorConfig},
    export::{ContainerNames, Exporter},
    identity::Identities,
    record::{Filter, Granularity, RunInfo, announce, build_records, run_info},
    sink::{Sink, SinkError},
    sinks::{Fanout, Outputs},
};

/// Connections served at once; more are closed on accept. Each idle one costs a few KiB until
/// its header deadline, so this bounds memory; it is high enough that a thousand stalled
/// clients still leave room for Prometheus.
const MAX_CONNECTIONS: usize = 1024;
/// A request's headers must be complete within this (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer, keep-alive included.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Request line and headers larger than this are refused by hyper.
const MAX_HEADER_BYTES: usize = 16 * 1024;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error(
        "cannot listen on {addr}: {source}; choose another address with --listen (e.g. 127.0.0.1:9186)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the HTTP runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the collector stopped: {0}")]
    Collector(String),
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub collector: CollectorConfig,
    pub interval: Duration,
    pub listen: SocketAddr,
    /// Processes with a series of their own.
    pub top: usize,
    /// The kubelet's pod log directory, whose entries name pods (`<ns>_<name>_<uid>`).
    pub pods_dir: PathBuf,
    /// Docker's container state directory (`<id>/config.v2.json` holds the name).
    pub docker_dir: PathBuf,
    /// Records written beside the metrics (`--sink`), as `record` writes them.
    pub outputs: Outputs,
}

/// What the handlers serve: replaced whole once per interval.
#[derive(Debug, Default)]
struct Page {
    metrics: Bytes,
    html: Bytes,
    updated: Option<Instant>,
}

struct Shared {
    page: Mutex<Arc<Page>>,
    scrapes: AtomicU64,
    stopping: AtomicBool,
    stop: Notify,
    failure: Mutex<Option<String>>,
    interval: Duration,
}

impl Shared {
    fn page(&self) -> Arc<Page> {
        self.page
            .lock()
            .map(|p| p.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn shut_down(&self, failure: Option<String>) {
        if let (Some(f), Ok(mut slot)) = (failure, self.failure.lock()) {
            *slot = Some(f);
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
        self.stop.notify_one();
    }
}

/// The default soft limit of 1,024 descriptors is below what MAX_CONNECTIONS plus the sensor's
/// per-CPU descriptors need; raise it toward the hard limit (failure only lowers the ceiling).
fn raise_open_files() {
    let wanted = (MAX_CONNECTIONS as libc::rlim_t) * 2 + 256;
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html_page(exporter: &Exporter) -> String {
    let rows: String = exporter
        .top_processes()
        .iter()
        .take(20)
        .map(|(pid, comm, watts)| {
            format!(
                "<tr><td>{pid}</td><td>{}</td><td>{watts:.2}</td></tr>",
                escape_html(comm)
            )
        })
        .collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>powerapi</title></head><body>\
         <h1>powerapi</h1><p><a href=\"/metrics\">/metrics</a> · <a href=\"/healthz\">/healthz</a></p>\
         <h2>Top consumers (last interval)</h2><table><tr><th>PID</th><th>COMMAND</th><th>W</th></tr>{rows}</table>\
         </body></html>"
    )
}

/// The collector's loop: one interval, one rendering, until `stop`.
fn collect_loop(
    mut collector: Collector,
    config: &ServeConfig,
    shared: &Shared,
    stop: &Receiver<()>,
) {
    let mut exporter = Exporter::new(config.top, &collector.sensor().counter_names());
    let mut names = ContainerNames::new(config.pods_dir.clone(), config.docker_dir.clone());
    let mut records = match RecordsOut::open(&config.outputs, &collector, stop) {
        Ok(out) => out,
        Err(e) => {
            shared.shut_down(Some(e.to_string()));
            return;
        }
    };
    let started = Instant::now();
    let mut seq = 0u32;
    loop {
        seq += 1;
        let deadline = started + config.interval * seq;
        if !matches!(
            stop.recv_timeout(deadline.saturating_duration_since(Instant::now())),
            Err(RecvTimeoutError::Timeout)
        ) || shared.stopping.load(Ordering::SeqCst)
        {
            // What was measured since the last interval still reaches the outputs.
            if let (Some(out), Ok(snapshot)) = (records.as_mut(), collector.collect()) {
                out.write(&snapshot, &collector, seq, true);
            }
            shared.shut_down(None);
            return;
        }
        let snapshot = match collector.collect() {
            Ok(s) => s,
            Err(e) => {
                shared.shut_down(Some(e.to_string()));
                return;
            }
        };
        if let Some(out) = records.as_mut() {
            out.write(&snapshot, &collector, seq, false);
        }
        names.refresh();
        exporter.update(
            &snapshot,
            collector.resolver(),
            &mut names,
            shared.scrapes.load(Ordering::SeqCst),
        );
        let page = Page {
            metrics: Bytes::from(exporter.render()),
            html: Bytes::from(html_page(&exporter)),
            updated: Some(Instant::now()),
        };
        if let Ok(mut slot) = shared.page.lock() {
            *slot = Arc::new(page);
        }
    }
}

/// `serve --sink`: the same records `record` writes, beside the metrics. A failing output is
/// said once; the metrics go on either way.
struct RecordsOut {
    sinks: Fanout,
    run: RunInfo,
    ids: Identities,
    said: bool,
}

impl RecordsOut {
    fn open(
        outputs: &Outputs,
        collector: &Collector,
        stop: &Receiver<()>,
    ) -> Result<Option<Self>, SinkError> {
        if outputs.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            sinks: outputs.open(stop)?,
            run: run_info(collector),
            ids: Identities::new(false),
            said: false,
        }))
    }

    fn write(&mut self, snapshot: &Snapshot, collector: &Collector, seq: u32, partial: bool) {
        let interval = snapshot.interval(u64::from(seq), partial);
        let mut records = build_records(
            &self.run,
            snapshot,
            collector.resolver(),
            &interval,
            Granularity::Process,
            &Filter::default(),
            &mut self.ids,
        );
        if let Some(crate::report::Record::Machine(machine)) = records.first_mut() {
            machine.meter.dropped_records = self.sinks.dropped_records();
        }
        match self.sinks.write_interval(&records) {
            Ok(()) | Err(SinkError::Closed { .. }) => {}
            Err(e) => {
                if !std::mem::replace(&mut self.said, true) {
                    eprintln!("powerapi: {e} (retried at each interval; the metrics go on)");
                }
            }
        }
    }
}

fn respond(shared: &Shared, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &'static str, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        if let Ok(value) = kind.parse() {
            response.headers_mut().insert(CONTENT_TYPE, value);
        }
        response
    };
    let text = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            text,
            Bytes::from_static(b"GET only\n"),
        );
    }
    let page = shared.page();
    match request.uri().path() {
        "/metrics" => {
            shared.scrapes.fetch_add(1, Ordering::SeqCst);
            if page.updated.is_none() {
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    text,
                    Bytes::from_static(b"no interval measured yet\n"),
                );
            }
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                page.metrics.clone(),
            )
        }
        "/" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page.html.clone(),
        ),
        "/healthz" => {
            // Stalled: no interval for three of them (and a second).
            let stale = shared.interval * 3 + Duration::from_secs(1);
            match page.updated {
                Some(t) if t.elapsed() <= stale => {
                    reply(StatusCode::OK, text, Bytes::from_static(b"ok\n"))
                }
                Some(_) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    text,
                    Bytes::from_static(b"the collector is stalled\n"),
                ),
                None => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    text,
                    Bytes::from_static(b"starting\n"),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            text,
            Bytes::from_static(b"not found: try /metrics\n"),
        ),
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.stop.notified() => return,
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok((stream, _)) = accepted else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream); // over the limit: closed at once
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(|request: Request<Incoming>| {
                let response = respond(&shared, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
}

/// Serves until `stop` receives; the sensor starts before the port opens, so a failure to
/// measure is said before anything listens.
pub fn serve(config: &ServeConfig, stop: Receiver<()>) -> Result<(), ServeError> {
    raise_open_files();
    let collector = Collector::start(&config.collector)?;
    announce(&collector, &run_info(&collector));
    let listener =
        std::net::TcpListener::bind(config.listen).map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(ServeError::Runtime)?;
    let local = listener.local_addr().map_err(ServeError::Runtime)?;
    eprintln!("powerapi: serving http://{local}/metrics");
    let shared = Arc::new(Shared {
        page: Mutex::new(Arc::new(Page::default())),
        scrapes: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        stop: Notify::new(),
        failure: Mutex::new(None),
        interval: config.interval,
    });
    let worker = {
        let shared = shared.clone();
        let config = config.clone();
        std::thread::Builder::new()
            .name("powerapi-collect".into())
            .spawn(move || collect_loop(collector, &config, &shared, &stop))
            .map_err(ServeError::Runtime)?
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(ServeError::Runtime)?;
        accept_loop(listener, shared.clone()).await;
        Ok::<(), ServeError>(())
    })?;
    let _ = worker.join();
    let failure = shared.failure.lock().ok().and_then(|f| f.clone());
    match failure {
        Some(f) => Err(ServeError::Collector(f)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_names() {
        assert_eq!(escape_html("<b>\"x\"&"), "&lt;b&gt;&quot;x&quot;&amp;");
    }
}
