//! OpenTelemetry traces over OTLP/HTTP (JSON encoding), for task starts and API requests.
//!
//! Spans are handed to `record`, which never blocks: with no endpoint configured it does
//! nothing; otherwise spans go through a bounded queue (full: the span is dropped and
//! counted) to one exporter thread that posts batches to `<endpoint>/v1/traces` every
//! second or every `BATCH` spans. A collector that is down loses those batches, never
//! slows a request or a task start.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const QUEUE: usize = 4096;
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// A finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: String,
    /// OTLP's SpanKind: 1 internal, 2 server, 3 client.
    pub kind: u8,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(String, Attr)>,
    /// The operation failed (OTLP status ERROR), with a message.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
}

pub const INTERNAL: u8 = 1;
pub const SERVER: u8 = 2;

struct Exporter {
    queue: SyncSender<Span>,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);
static EXPORTED: AtomicU64 = AtomicU64::new(0);

/// Starts exporting to `endpoint` (the OTLP/HTTP base URL, as OTEL_EXPORTER_OTLP_ENDPOINT
/// gives it) as `service_name`. Later calls change nothing.
pub fn init(endpoint: &str, service_name: &str) {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let service = service_name.to_string();
    EXPORTER.get_or_init(|| {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export_loop(rx, &url, &service))
            .expect("spawning the OTLP exporter thread");
        Exporter { queue: tx }
    });
}

/// Whether spans are being exported (callers skip building spans otherwise).
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

/// Queues a finished span for export; never blocks.
pub fn record(span: Span) {
    if let Some(e) = EXPORTER.get() {
        if e.queue.try_send(span).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Spans exported and dropped (queue full or collector unreachable) so far.
pub fn counts() -> (u64, u64) {
    (EXPORTED.load(Ordering::Relaxed), DROPPED.load(Ordering::Relaxed))
}

fn export_loop(rx: Receiver<Span>, url: &str, service: &str) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut batch = Vec::new();
    loop {
        let deadline = std::time::Instant::now() + FLUSH_EVERY;
        let closed = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) => {
                    batch.push(s);
                    if batch.len() >= BATCH {
                        break false;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break false,
                Err(RecvTimeoutError::Disconnected) => break true,
            }
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let body = encode(service, &batch).to_string();
            let sent = agent
                .post(url)
                .header("content-type", "application/json")
                .send(body.as_bytes());
            match sent {
                Ok(r) if r.status().is_success() => EXPORTED.fetch_add(n, Ordering::Relaxed),
                _ => DROPPED.fetch_add(n, Ordering::Relaxed),
            };
            batch.clear();
        }
        if closed {
            return;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(key: &str, v: &Attr) -> Value {
    let value = match v {
        Attr::Str(s) => json!({"stringValue": s}),
        // int64 is a string in OTLP's JSON, as in proto3's.
        Attr::Int(i) => json!({"intValue": i.to_string()}),
    };
    json!({"key": key, "value": value})
}

/// An ExportTraceServiceRequest in OTLP's JSON encoding (ids in hex, as OTLP specifies).
pub fn encode(service: &str, spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let status = match &s.error {
                Some(m) => json!({"code": 2, "message": m}),
                None => json!({"code": 1}),
            };
            json!({
                "traceId": hex(&s.trace_id), "spanId": hex(&s.span_id),
                "parentSpanId": s.parent.map(|p| hex(&p)).unwrap_or_default(),
                "name": s.name, "kind": s.kind,
                "startTimeUnixNano": s.start_ns.to_string(), "endTimeUnixNano": s.end_ns.to_string(),
                "attributes": s.attributes.iter().map(|(k, v)| attr(k, v)).collect::<Vec<_>>(),
                "status": status,
            })
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", &Attr::Str(service.into()))]},
        "scopeSpans": [{"scope": {"name": "gantry", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
    }]})
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Epoch seconds (as ECS timestamps are) in nanoseconds.
pub fn secs_to_ns(secs: f64) -> u64 {
    (secs * 1e9) as u64
}

/// Parses 2n hex digits into n bytes.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The trace id and parent span id of a W3C `traceparent` header
/// (`00-<32 hex>-<16 hex>-<2 hex>`), when well-formed and not all zeros.
pub fn parse_traceparent(h: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = h.trim().split('-');
    let version = parts.next()?;
    let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || flags.len() != 2 {
        return None;
    }
    let (t, p) = (from_hex::<16>(trace)?, from_hex::<8>(parent)?);
    (t != [0; 16] && p != [0; 8]).then_some((t, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_otlp_json_with_hex_ids_and_string_int64s() {
        let s = Span {
            trace_id: [0xab; 16],
            span_id: [1; 8],
            parent: Some([2; 8]),
            name: "pull".into(),
            kind: INTERNAL,
            start_ns: 1_000,
            end_ns: 2_000,
            attributes: vec![("a".into(), Attr::Str("b".into())), ("n".into(), Attr::Int(3))],
            error: Some("failed".into()),
        };
        let v = encode("gantry-test", &[s]);
        let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "ab".repeat(16));
        assert_eq!(span["parentSpanId"], "0202020202020202");
        assert_eq!(span["startTimeUnixNano"], "1000");
        assert_eq!(span["attributes"][1]["value"]["intValue"], "3");
        assert_eq!(span["status"]["code"], 2);
        let resource = &v["resourceSpans"][0]["resource"]["attributes"][0];
        assert_eq!(resource["value"]["stringValue"], "gantry-test");
    }

    #[test]
    fn traceparent_headers() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, p) = parse_traceparent(h).unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p), "00f067aa0ba902b7");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        assert_eq!(from_hex::<2>("0aff"), Some([0x0a, 0xff]));
        assert_eq!(from_hex::<2>("0af"), None);
    }

    #[test]
    fn recording_without_an_endpoint_does_nothing() {
        assert!(!enabled());
        record(Span {
            trace_id: [1; 16],
            span_id: [1; 8],
            parent: None,
            name: "x".into(),
            kind: SERVER,
            start_ns: 0,
            end_ns: 1,
            attributes: vec![],
            error: None,
        });
        assert_eq!(counts(), (0, 0));
    }
}
