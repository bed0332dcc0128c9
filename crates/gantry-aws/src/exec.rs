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
use gantry_control::exec::{ExecInput, ExecProcess};
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
    ws.on_upgrade(move |socket| relay(socket, process))
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

async fn relay(mut socket: WebSocket, mut p: ExecProcess) {
    let code = loop {
        tokio::select! {
            out = p.output.recv() => match out {
                Some(data) => {
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
}
