//! ECS Exec's stream: `GET /ecs-exec/<session id>` upgraded to a WebSocket, opened once with
//! the session's token (the `X-Gantry-Exec-Token` header), within a minute of
//! ExecuteCommand. Frames are binary, their first byte says what they are:
//! client to server `0` input, `1` resize (columns and rows, u16 big-endian each), `2` end of
//! input; server to client `0` output, `3` exit (the code, i32 big-endian).

use crate::api::Api;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gantry_control::exec::{ExecInput, ExecLog, ExecProcess};
use gantry_control::logfeed::Logs;
use gantry_control::logstore::{LogOp, LogWrite};
use std::sync::Arc;
use std::time::Duration;

pub const TOKEN_HEADER: &str = "x-gantry-exec-token";

#[derive(serde::Deserialize)]
pub struct StreamQuery {
    /// Whether the command runs in a terminal.
    #[serde(default)]
    tty: bool,
}

pub fn routes() -> axum::Router<Api> {
    axum::Router::new().route("/ecs-exec/{id}", axum::routing::get(open))
}

async fn open(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let session = match api.control.open_exec_session(&id, token).await {
        Ok(s) => s,
        Err(why) => return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response(),
    };
    let Some(runner) = api.exec.clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no node to run the command on\n").into_response();
    };
    let process = match runner.start(&session, q.tty).await {
        Ok(p) => p,
        Err(why) => return (StatusCode::CONFLICT, format!("the command could not start: {why}\n")).into_response(),
    };
    tracing::info!(session = %session.id, task = %session.task_arn, container = %session.container, "exec session opened");
    let log = session
        .log
        .map(|l| SessionLog::start(api.logs.clone(), l, api.control.clock.clone()));
    ws.on_upgrade(move |socket| relay(socket, process, log))
}

/// Makes a session's log stream when ExecuteCommand answers (the group must exist, as ECS
/// Exec's agent does not make it).
pub async fn create_session_stream(api: &Api, log: &ExecLog, now_ms: i64) -> Result<(), crate::api::ApiError> {
    let op = LogOp::CreateStream {
        stream: log.stream.clone(),
    };
    let w = LogWrite::new((&log.account, &log.region), &log.group, now_ms, op);
    api.logs.write(w).await.map_err(|e| {
        crate::api::ApiError::client(
            "InvalidParameterException",
            format!(
                "The execute command session cannot be logged to log group {}, as the cluster's executeCommandConfiguration asks: {e}",
                log.group
            ),
        )
    })
}

/// The largest event CloudWatch Logs takes, less its 26 bytes of overhead.
const MAX_EVENT: usize = 256 * 1024 - 26;

/// Writes a session's output to its log stream, a line an event, from a task of its own so
/// the terminal never waits for the log.
struct SessionLog {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
}

impl SessionLog {
    fn start(logs: Arc<Logs>, log: ExecLog, clock: Arc<dyn gantry_control::Clock>) -> SessionLog {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            let mut pending = Vec::new();
            loop {
                let Some(first) = rx.recv().await else { break };
                pending.extend_from_slice(&first);
                while let Ok(more) = rx.try_recv() {
                    pending.extend_from_slice(&more);
                }
                let lines = complete_lines(&mut pending);
                put(&logs, &log, clock.now_ms(), lines).await;
            }
            // The session ended: what is left is its last line.
            let rest = (!pending.is_empty()).then(|| event_text(&pending));
            put(&logs, &log, clock.now_ms(), rest.into_iter().collect()).await;
        });
        SessionLog { tx }
    }

    fn output(&self, data: &[u8]) {
        let _ = self.tx.send(data.to_vec());
    }
}

async fn put(logs: &Logs, log: &ExecLog, now_ms: i64, lines: Vec<String>) {
    if lines.is_empty() {
        return;
    }
    let op = LogOp::Put {
        stream: log.stream.clone(),
        events: lines.into_iter().map(|l| (now_ms, l)).collect(),
    };
    let w = LogWrite::new((&log.account, &log.region), &log.group, now_ms, op);
    if let Err(e) = logs.write(w).await {
        tracing::warn!(group = %log.group, stream = %log.stream, error = %e, "logging an exec session");
    }
}

/// Takes the complete lines (and over-long runs without a newline) out of `buf`, as event
/// texts; a partial last line stays for the next output.
fn complete_lines(buf: &mut Vec<u8>) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) if i <= MAX_EVENT => {
                let line: Vec<u8> = buf.drain(..=i).collect();
                out.push(event_text(&line[..i]));
            }
            _ if buf.len() > MAX_EVENT => {
                let chunk: Vec<u8> = buf.drain(..MAX_EVENT).collect();
                out.push(event_text(&chunk));
            }
            _ => return out,
        }
    }
}

/// A line as an event's text: terminal carriage returns dropped, invalid UTF-8 replaced.
fn event_text(line: &[u8]) -> String {
    String::from_utf8_lossy(line).trim_end_matches('\r').to_string()
}

/// One input frame as what it asks of the command.
fn input(frame: &[u8]) -> Option<ExecInput> {
    match frame.split_first()? {
        (0, data) => Some(ExecInput::Data(data.to_vec())),
        (1, [c1, c2, r1, r2]) => Some(ExecInput::Resize(
            u16::from_be_bytes([*c1, *c2]),
            u16::from_be_bytes([*r1, *r2]),
        )),
        (2, []) => Some(ExecInput::Eof),
        _ => None,
    }
}

async fn relay(mut socket: WebSocket, mut p: ExecProcess, log: Option<SessionLog>) {
    let logged = |data: &[u8]| {
        if let Some(l) = &log {
            l.output(data);
        }
    };
    let code = loop {
        tokio::select! {
            out = p.output.recv() => match out {
                Some(data) => {
                    logged(&data);
                    let frame = [&[0u8][..], &data].concat();
                    if socket.send(Message::Binary(frame.into())).await.is_err() {
                        return;
                    }
                }
                // Output over: the exit code follows.
                None => break (&mut p.exit).await.unwrap_or(255),
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let Some(i) = input(&b) {
                        let _ = p.input.send(i).await;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            code = &mut p.exit => {
                // Output written just before the exit may still be in flight: drain it.
                let code = code.unwrap_or(255);
                while let Ok(Some(data)) = tokio::time::timeout(Duration::from_millis(500), p.output.recv()).await {
                    logged(&data);
                    let frame = [&[0u8][..], &data].concat();
                    if socket.send(Message::Binary(frame.into())).await.is_err() {
                        return;
                    }
                }
                break code;
            }
        }
    };
    let frame = [&[3u8][..], &code.to_be_bytes()].concat();
    let _ = socket.send(Message::Binary(frame.into())).await;
    let _ = socket.send(Message::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_and_malformed_ones_are_dropped() {
        assert_eq!(input(&[0, b'h', b'i']), Some(ExecInput::Data(b"hi".to_vec())));
        assert_eq!(input(&[1, 0, 80, 0, 24]), Some(ExecInput::Resize(80, 24)));
        assert_eq!(input(&[2]), Some(ExecInput::Eof));
        for bad in [&[][..], &[1, 0, 80], &[2, 1], &[9, 1]] {
            assert_eq!(input(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn session_output_is_logged_a_line_an_event() {
        let mut buf = b"one\r\ntwo\nthr".to_vec();
        assert_eq!(complete_lines(&mut buf), ["one", "two"]);
        assert_eq!(buf, b"thr");
        buf.extend_from_slice(b"ee\n");
        assert_eq!(complete_lines(&mut buf), ["three"]);
        assert!(buf.is_empty());
        // A run longer than an event can hold is cut, not held back forever.
        let mut long = vec![b'x'; MAX_EVENT + 10];
        let events = complete_lines(&mut long);
        assert_eq!((events.len(), events[0].len(), long.len()), (1, MAX_EVENT, 10));
        assert_eq!(event_text(&[0xff, b'a']), "\u{fffd}a");
    }
}
