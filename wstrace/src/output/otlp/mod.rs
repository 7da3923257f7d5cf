//! `--otlp URL`: every close as one OpenTelemetry log record
//! (`event.name` = `websocket.close`, see [`record`]) and the counters
//! `--metrics` serves as OTLP metrics, both over OTLP/HTTP protobuf to
//! `URL/v1/logs` and `URL/v1/metrics`, with the OpenTelemetry SDK's record
//! types, meter provider and OTLP exporters.
//!
//! The collector must never slow tracing, stdout or `--output`: a record
//! is handed to a bounded queue (`try_send`, never a wait) and a thread of
//! its own batches, exports and retries with back-off (the exporter's
//! retry policy, within its timeout). A full queue, or a batch the
//! collector did not take after its retries, is counted in
//! `wstrace_lost_events_total{reason="otlp"}`. Metrics are read and sent by
//! the SDK's periodic reader on its own thread (`OTEL_METRIC_EXPORT_INTERVAL`,
//! default 60 s) and once more at exit.
//!
//! The SDK's batch log processor drops on a full queue too, but counts
//! only in its own diagnostics; [`QueueProcessor`] is the same design with
//! the drops where wstrace counts every other loss.
mod http;
pub mod record;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use opentelemetry::{
    InstrumentationScope, KeyValue,
    logs::{LogRecord as _, Logger as _, LoggerProvider as _},
    metrics::{Counter, Gauge, Histogram, MeterProvider as _},
};
use opentelemetry_otlp::{Protocol, RetryPolicy, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord, SdkLogger, SdkLoggerProvider},
    metrics::{PeriodicReader, SdkMeterProvider},
};

use crate::output::view::View;

/// The `wstrace_lost_events_total` reason of records the collector did not
/// get (queue full, or refused or unreachable after the retries).
pub const OTLP_LOST: &str = "otlp";

/// Records waiting for the exporter at most (the SDK's default): about
/// 2 MB of records while the collector is away.
pub const QUEUE_RECORDS: usize = 2048;
/// Records per export request.
const BATCH_RECORDS: usize = 512;
/// A partial batch waits at most this long for company.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// One export, its retries included (the exporter's own deadline).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// One HTTP exchange (connect, send, answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// What exit waits for the last batch and metrics before giving up on them.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// `URL` as given to `--otlp`: `http://HOST:PORT` (a path prefix allowed),
/// without the `/v1/...` signal path. Empty (an empty `WSTRACE_OTLP` in a
/// unit's environment file) is "no OTLP", returned as "".
pub fn parse_url(s: &str) -> Result<String, String> {
    let t = s.trim().trim_end_matches('/');
    if t.is_empty() {
        return Ok(String::new());
    }
    let uri: ::http::Uri = t
        .parse()
        .map_err(|e| format!("{s:?} is not a URL ({e}): use http://HOST:4318"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{s:?}: https is not supported; send to an OpenTelemetry Collector on this node over http (it forwards with TLS)"
            ));
        }
        _ => {
            return Err(format!(
                "{s:?}: use http://HOST:PORT (OTLP/HTTP, e.g. port 4318)"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{s:?}: no host: use http://HOST:PORT"));
    }
    if t.ends_with("/v1/logs") || t.ends_with("/v1/metrics") {
        return Err(format!(
            "{s:?}: give the collector's base URL; wstrace adds /v1/logs and /v1/metrics"
        ));
    }
    Ok(t.to_string())
}

/// The OTLP instruments, one per Prometheus metric (same labels as
/// attributes). A collector's Prometheus exporter names them back as
/// `wstrace_closes_total` and so on.
struct Instruments {
    upgrades: Counter<u64>,
    closes: Counter<u64>,
    lifetime: Histogram<f64>,
    lost_events: Counter<u64>,
    stacks_elided: Counter<u64>,
    probe_set: Gauge<u64>,
}

/// The log and metric pipelines. Owned by `Outputs`; every call is cheap
/// and never waits for the network.
pub struct Otlp {
    logger: SdkLogger,
    loggers: SdkLoggerProvider,
    meters: SdkMeterProvider,
    instruments: Instruments,
    lost: Arc<AtomicU64>,
    lost_counted: u64,
}

impl Otlp {
    /// Builds both pipelines and their threads. The threads start from a
    /// thread that dropped every capability first (capabilities are per
    /// thread and inherited): nothing that talks to the network holds
    /// root's powers.
    pub fn start(base_url: &str) -> Result<Otlp> {
        let base = base_url.to_string();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("wstrace-otlp-init".into())
            .spawn(move || {
                crate::hardening::privileges::drop_all_in_this_thread();
                let _ = tx.send(build(&base));
            })
            .context("--otlp: starting its threads")?;
        rx.recv()
            .map_err(|_| anyhow!("--otlp: the set-up thread ended without an answer"))?
    }

    /// One close as one log record.
    pub fn emit(&self, v: &View<'_>) {
        let mut rec = self.logger.create_log_record();
        rec.set_event_name(record::EVENT_NAME);
        rec.set_timestamp(v.ts);
        rec.set_observed_timestamp(std::time::SystemTime::now());
        let sev = record::severity(v);
        rec.set_severity_number(sev);
        rec.set_severity_text(sev.name());
        rec.set_body(record::body(v).into());
        rec.add_attributes(record::attributes(v));
        self.logger.emit(rec);
        let r = v.report;
        self.instruments.closes.add(
            1,
            &[
                KeyValue::new("closed_by", r.closed_by.as_str()),
                KeyValue::new("how", r.how.as_str()),
                KeyValue::new("diagnosis", v.diagnosis.code),
            ],
        );
        self.instruments
            .lifetime
            .record(r.ms_after_upgrade() / 1000.0, &[]);
    }

    pub fn upgrade_seen(&self) {
        self.instruments.upgrades.add(1, &[]);
    }

    pub fn events_lost(&self, reason: &str, n: u64) {
        self.instruments
            .lost_events
            .add(n, &[KeyValue::new("reason", reason.to_string())]);
    }

    pub fn stacks_elided(&self, reason: &str, n: u64) {
        self.instruments
            .stacks_elided
            .add(n, &[KeyValue::new("reason", reason.to_string())]);
    }

    pub fn probe_set(&self, name: &str) {
        self.instruments
            .probe_set
            .record(1, &[KeyValue::new("probe", name.to_string())]);
    }

    /// Records lost since the last call (the caller counts them under
    /// [`OTLP_LOST`], in both metric pipelines).
    pub fn take_lost(&mut self) -> u64 {
        let now = self.lost.load(Ordering::Relaxed);
        let new = now.saturating_sub(self.lost_counted);
        self.lost_counted = now;
        new
    }

    /// At exit: the last batch and a last metrics export, waited for at
    /// most [`SHUTDOWN_WAIT`] (a hung collector does not hold the exit).
    /// Returns the records lost in all.
    pub fn shutdown(&self) -> u64 {
        let (loggers, meters) = (self.loggers.clone(), self.meters.clone());
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("wstrace-otlp-exit".into())
            .spawn(move || {
                let _ = loggers.shutdown_with_timeout(SHUTDOWN_WAIT);
                let _ = meters.shutdown();
                let _ = tx.send(());
            });
        if spawned.is_ok() && rx.recv_timeout(SHUTDOWN_WAIT).is_err() {
            eprintln!(
                "wstrace: warning: --otlp: the collector did not take the last records and metrics within {} s; not waiting longer",
                SHUTDOWN_WAIT.as_secs()
            );
        }
        self.lost.load(Ordering::Relaxed)
    }
}

fn resource() -> Resource {
    // Resource::builder() also reads OTEL_RESOURCE_ATTRIBUTES and
    // OTEL_SERVICE_NAME; service.name is ours regardless.
    let mut attrs = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("host.name", crate::enrich::process::hostname()),
    ];
    // The DaemonSet sets these from the downward API (packaging/k8s).
    for (var, key) in [
        ("K8S_NODE_NAME", "k8s.node.name"),
        ("K8S_POD_NAME", "k8s.pod.name"),
        ("K8S_NAMESPACE_NAME", "k8s.namespace.name"),
        ("K8S_POD_UID", "k8s.pod.uid"),
    ] {
        if let Ok(v) = std::env::var(var)
            && !v.is_empty()
        {
            attrs.push(KeyValue::new(key, record::bounded(&v)));
        }
    }
    Resource::builder()
        .with_service_name("wstrace")
        .with_attributes(attrs)
        .build()
}

fn http_client() -> http::Client {
    http::Client {
        connect_timeout: CONNECT_TIMEOUT,
        request_timeout: REQUEST_TIMEOUT,
    }
}

/// Back-off between attempts: 0.5 s, 1 s, 2 s (jittered), within
/// [`EXPORT_TIMEOUT`].
fn retry_policy() -> RetryPolicy {
    RetryPolicy::recommended()
        .with_max_retries(3)
        .with_initial_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(2))
        .with_max_jitter(Duration::from_millis(200))
}

fn build(base: &str) -> Result<Otlp> {
    let resource = resource();
    let mut log_exporter = opentelemetry_otlp::LogExporter::builder()
        .with_http()
        .with_http_client(http_client())
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{base}/v1/logs"))
        .with_timeout(EXPORT_TIMEOUT)
        .with_retry_policy(retry_policy())
        .build()
        .context("--otlp: the log exporter")?;
    log_exporter.set_resource(&resource);
    let lost = Arc::new(AtomicU64::new(0));
    let processor = QueueProcessor::start(log_exporter, QUEUE_RECORDS, lost.clone())?;
    let loggers = SdkLoggerProvider::builder()
        .with_resource(resource.clone())
        .with_log_processor(processor)
        .build();
    let logger = loggers.logger("wstrace");

    let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_http_client(http_client())
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{base}/v1/metrics"))
        .with_timeout(EXPORT_TIMEOUT)
        .with_retry_policy(retry_policy())
        .build()
        .context("--otlp: the metric exporter")?;
    let meters = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(PeriodicReader::builder(metric_exporter).build())
        .build();
    let meter = meters.meter("wstrace");
    let instruments = Instruments {
        upgrades: meter
            .u64_counter("wstrace.upgrades")
            .with_unit("{connection}")
            .with_description("Sockets seen switching protocols (HTTP 101) on traced ports")
            .build(),
        closes: meter
            .u64_counter("wstrace.closes")
            .with_unit("{connection}")
            .with_description("Upgraded sockets that closed, by side, FIN/RST and diagnosis")
            .build(),
        lifetime: meter
            .f64_histogram("wstrace.connection_lifetime")
            .with_unit("s")
            .with_description("Time from the 101 to the close")
            .with_boundaries(crate::output::metrics::LIFETIME_BUCKETS.to_vec())
            .build(),
        lost_events: meter
            .u64_counter("wstrace.lost_events")
            .with_unit("{event}")
            .with_description("Events or reports lost, by reason")
            .build(),
        stacks_elided: meter
            .u64_counter("wstrace.stacks_elided")
            .with_unit("{close}")
            .with_description("Closes reported without a user stack copy of their own, by reason")
            .build(),
        probe_set: meter
            .u64_gauge("wstrace.probe_set")
            .with_description("The probe set in use (1)")
            .build(),
    };
    Ok(Otlp {
        logger,
        loggers,
        meters,
        instruments,
        lost,
        lost_counted: 0,
    })
}

type Queued = Box<(SdkLogRecord, InstrumentationScope)>;

/// A bounded queue in front of a log exporter, drained by one thread that
/// batches, exports (the exporter retries with back-off) and counts what
/// it could not deliver.
#[derive(Debug)]
struct QueueProcessor {
    tx: mpsc::SyncSender<Queued>,
    lost: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Signalled by the worker when it has drained and exported all.
    done: Mutex<Option<mpsc::Receiver<()>>>,
}

impl QueueProcessor {
    fn start<E: LogExporter + 'static>(
        exporter: E,
        capacity: usize,
        lost: Arc<AtomicU64>,
    ) -> Result<QueueProcessor> {
        let (tx, rx) = mpsc::sync_channel::<Queued>(capacity);
        let (done_tx, done_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (worker_lost, worker_stop) = (lost.clone(), stop.clone());
        std::thread::Builder::new()
            .name("wstrace-otlp-logs".into())
            .spawn(move || {
                drain(exporter, rx, &worker_lost, &worker_stop);
                let _ = done_tx.send(());
            })
            .context("--otlp: starting the log export thread")?;
        Ok(QueueProcessor {
            tx,
            lost,
            stop,
            done: Mutex::new(Some(done_rx)),
        })
    }
}

impl LogProcessor for QueueProcessor {
    /// Never waits: a full queue (the collector is away or slow) loses the
    /// record and counts it.
    fn emit(&self, data: &mut SdkLogRecord, scope: &InstrumentationScope) {
        if self
            .tx
            .try_send(Box::new((data.clone(), scope.clone())))
            .is_err()
        {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.stop.store(true, Ordering::Relaxed);
        let done = self.done.lock().ok().and_then(|mut d| d.take());
        match done.map(|d| d.recv_timeout(timeout)) {
            Some(Ok(())) | None => Ok(()),
            Some(Err(_)) => Err(OTelSdkError::Timeout(timeout)),
        }
    }
}

/// The export thread: batches of up to [`BATCH_RECORDS`], sent when full
/// or [`BATCH_DELAY`] after their first record; on stop, what is queued.
fn drain<E: LogExporter>(
    exporter: E,
    rx: mpsc::Receiver<Queued>,
    lost: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(BATCH_RECORDS);
    let mut first_at = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let wait = if batch.is_empty() {
            Duration::from_millis(100)
        } else {
            BATCH_DELAY
                .saturating_sub(first_at.elapsed())
                .min(Duration::from_millis(100))
        };
        let mut closed = false;
        match rx.recv_timeout(wait) {
            Ok(r) => {
                if batch.is_empty() {
                    first_at = Instant::now();
                }
                batch.push(r);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => closed = true,
        }
        while batch.len() < BATCH_RECORDS {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let due =
            batch.len() >= BATCH_RECORDS || first_at.elapsed() >= BATCH_DELAY || stopping || closed;
        if due && !batch.is_empty() {
            export(&exporter, &batch, lost);
            batch.clear();
        }
        if (stopping || closed) && batch.is_empty() {
            // Whatever is still queued goes too, in full batches.
            let rest: Vec<Queued> = rx.try_iter().collect();
            for chunk in rest.chunks(BATCH_RECORDS) {
                export(&exporter, chunk, lost);
            }
            return;
        }
    }
}

fn export<E: LogExporter>(exporter: &E, batch: &[Queued], lost: &AtomicU64) {
    let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
        batch.iter().map(|b| (&b.0, &b.1)).collect();
    // The exporter's future does its I/O synchronously (our HTTP client)
    // and sleeps between retries on this thread: a plain block_on.
    if block_on(exporter.export(LogBatch::new(&refs))).is_err() {
        lost.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}

/// Runs a future to completion on this thread (the exporter's futures
/// never wait on a reactor: see [`http`]).
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::logs::LogBatch;

    #[test]
    fn urls_are_checked_with_what_to_do() {
        assert_eq!(
            parse_url("http://127.0.0.1:4318/").unwrap(),
            "http://127.0.0.1:4318"
        );
        assert_eq!(
            parse_url("http://otel-collector.monitoring:4318").unwrap(),
            "http://otel-collector.monitoring:4318"
        );
        assert!(
            parse_url("https://x:4318")
                .unwrap_err()
                .contains("https is not supported")
        );
        assert!(parse_url("x:4318").is_err());
        assert!(
            parse_url("http://x:4318/v1/logs")
                .unwrap_err()
                .contains("base URL")
        );
        assert!(parse_url("grpc://x:4317").is_err());
        assert_eq!(parse_url(" ").unwrap(), "");
    }

    /// An exporter that hangs until told, as a collector that never answers.
    #[derive(Debug)]
    struct Stuck {
        entered: Arc<AtomicBool>,
        release: Arc<AtomicBool>,
        exported: Arc<AtomicU64>,
        fail: bool,
    }

    impl Stuck {
        fn new(release: bool, fail: bool) -> Stuck {
            Stuck {
                entered: Arc::new(AtomicBool::new(false)),
                release: Arc::new(AtomicBool::new(release)),
                exported: Arc::new(AtomicU64::new(0)),
                fail,
            }
        }
    }

    impl LogExporter for Stuck {
        async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
            self.entered.store(true, Ordering::Relaxed);
            while !self.release.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if self.fail {
                return Err(OTelSdkError::InternalFailure("refused".into()));
            }
            self.exported
                .fetch_add(batch.iter().count() as u64, Ordering::Relaxed);
            Ok(())
        }
    }

    fn provider(p: QueueProcessor) -> (SdkLoggerProvider, SdkLogger) {
        let provider = SdkLoggerProvider::builder().with_log_processor(p).build();
        let logger = provider.logger("test");
        (provider, logger)
    }

    #[test]
    fn a_hung_collector_costs_records_never_a_wait() {
        let exporter = Stuck::new(false, false);
        let (entered, release, exported) = (
            exporter.entered.clone(),
            exporter.release.clone(),
            exporter.exported.clone(),
        );
        let lost = Arc::new(AtomicU64::new(0));
        let (provider, logger) =
            provider(QueueProcessor::start(exporter, 8, lost.clone()).unwrap());
        // One record goes out after the batch delay and its export hangs.
        logger.emit(logger.create_log_record());
        while !entered.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Then 8 fill the queue and 42 are lost; every emit returned at
        // once (this test would hang otherwise).
        for _ in 0..50 {
            logger.emit(logger.create_log_record());
        }
        assert_eq!(lost.load(Ordering::Relaxed), 42);
        release.store(true, Ordering::Relaxed);
        provider.shutdown().unwrap();
        assert_eq!(exported.load(Ordering::Relaxed), 9);
    }

    #[test]
    fn batches_the_collector_refused_are_counted_as_lost() {
        let lost = Arc::new(AtomicU64::new(0));
        let exporter = Stuck::new(true, true);
        let (provider, logger) =
            provider(QueueProcessor::start(exporter, 64, lost.clone()).unwrap());
        for _ in 0..5 {
            logger.emit(logger.create_log_record());
        }
        provider.shutdown().unwrap();
        assert_eq!(lost.load(Ordering::Relaxed), 5);
    }
}
