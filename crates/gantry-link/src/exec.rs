//! ECS Exec in cluster mode. The API server that holds a client's exec stream is rarely the
//! one the task's agent talks to, and agents only dial servers. So the server asks the agent
//! through the store (`/exec-requests/<node>/<session>`, naming the URL agents reach that
//! server by); the agent, long-polling its requests, starts the command and opens
//! `POST /v1/exec/<session>` on that server: one HTTP/2 exchange whose request body carries
//! the command's output and exit, and whose response body carries the client's input,
//! resizes and end of input. Frames are `[kind u8][length u32 BE][payload]`, the kinds those
//! of the client's WebSocket (0 data, 1 resize, 2 end of input, 3 exit).

use gantry_control::exec::{ExecInput, ExecProcess, ExecRunner, ExecSession};
use gantry_control::{Control, TaskRecord};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub use gantry_control::exec::EXEC_REQUESTS as REQUESTS;
/// How long a server waits for the task's agent to dial back.
const DIAL_BACK: Duration = Duration::from_secs(15);

/// What a server asks of a node: run this session's command, then dial `server`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub session: ExecSession,
    pub tty: bool,
    pub node: String,
    /// The agent URL of the server holding the client's stream.
    pub server: String,
}

pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(kind);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The largest frame accepted (a terminal's output comes in far smaller pieces).
const MAX_FRAME: usize = 1 << 20;

/// Frames out of a byte stream cut anywhere.
#[derive(Default)]
pub struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    /// Adds bytes; returns the frames now complete, or an error for an oversized one.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while self.buf.len() >= 5 {
            let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
            if len > MAX_FRAME {
                return Err(format!("an exec frame of {len} bytes is over the limit"));
            }
            if self.buf.len() < 5 + len {
                break;
            }
            let f: Vec<u8> = self.buf.drain(..5 + len).collect();
            out.push((f[0], f[5..].to_vec()));
        }
        Ok(out)
    }
}

/// The server's side of one session once its agent dialed back: frames to send the agent,
/// and the frames it sent.
pub struct Bridge {
    pub to_agent: mpsc::Sender<Vec<u8>>,
    pub from_agent: mpsc::Receiver<(u8, Vec<u8>)>,
}

/// Sessions this server waits for agents to dial back for, by session id, with their node.
#[derive(Default)]
pub struct Rendezvous {
    waiting: Mutex<HashMap<String, (String, oneshot::Sender<Bridge>)>>,
}

impl Rendezvous {
    /// The waiter for `session` if `node` is the one asked (it is taken: a session is dialed
    /// back once).
    pub fn take(&self, session: &str, node: &str) -> Result<oneshot::Sender<Bridge>, String> {
        let mut w = self.waiting.lock().expect("lock");
        match w.get(session) {
            Some((n, _)) if n == node => Ok(w.remove(session).expect("present").1),
            Some(_) => Err(format!("session {session} is not for node {node}")),
            None => Err(format!("no session {session} is waiting for its node")),
        }
    }
}

/// The API server's runner: the command runs on the task's node, reached by dial-back.
pub struct RemoteExec {
    pub control: Control,
    pub rendezvous: Arc<Rendezvous>,
    /// The URL agents reach this server's agent listener by.
    pub advertise: String,
}

#[async_trait::async_trait]
impl ExecRunner for RemoteExec {
    async fn start(&self, s: &ExecSession, tty: bool) -> Result<ExecProcess, String> {
        let store = self.control.store.clone();
        let kv = store
            .get(&s.task_key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the task is gone")?;
        let rec: TaskRecord = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel();
        self.rendezvous
            .waiting
            .lock()
            .expect("lock")
            .insert(s.id.clone(), (rec.node.clone(), tx));
        let key = format!("{REQUESTS}{}/{}", rec.node, s.id);
        let req = ExecRequest {
            session: s.clone(),
            tty,
            node: rec.node.clone(),
            server: self.advertise.clone(),
        };
        let asked = store
            .create(&key, &serde_json::to_vec(&req).expect("serialises"))
            .await
            .map_err(|e| e.to_string());
        let bridge = match asked {
            Ok(_) => tokio::time::timeout(DIAL_BACK, rx).await,
            Err(e) => {
                self.rendezvous.waiting.lock().expect("lock").remove(&s.id);
                return Err(e);
            }
        };
        self.rendezvous.waiting.lock().expect("lock").remove(&s.id);
        let _ = store.delete(&key, None).await;
        match bridge {
            Ok(Ok(b)) => Ok(process(b)),
            _ => Err(format!(
                "the task's node ({}) did not answer within {}s",
                rec.node,
                DIAL_BACK.as_secs()
            )),
        }
    }
}

/// A session's process as the relay sees it, carried over the bridge.
fn process(b: Bridge) -> ExecProcess {
    let (input_tx, mut input_rx) = mpsc::channel::<ExecInput>(64);
    let (output_tx, output_rx) = mpsc::channel::<Vec<u8>>(64);
    let (exit_tx, exit_rx) = oneshot::channel::<i32>();
    let (hold_tx, hold_rx) = oneshot::channel::<()>();
    let to_agent = b.to_agent;
    tokio::spawn(async move {
        while let Some(i) = input_rx.recv().await {
            let f = match i {
                ExecInput::Data(d) => frame(0, &d),
                ExecInput::Resize(c, r) => frame(1, &[c.to_be_bytes(), r.to_be_bytes()].concat()),
                ExecInput::Eof => frame(2, &[]),
            };
            if to_agent.send(f).await.is_err() {
                return;
            }
        }
    });
    let mut from_agent = b.from_agent;
    tokio::spawn(async move {
        // The holder letting go ends the exchange, which stops the command on the node.
        let mut hold_rx = hold_rx;
        let mut exit_tx = Some(exit_tx);
        loop {
            tokio::select! {
                f = from_agent.recv() => match f {
                    Some((0, d)) => {
                        if output_tx.send(d).await.is_err() {
                            return;
                        }
                    }
                    Some((3, code)) if code.len() == 4 => {
                        let code = i32::from_be_bytes([code[0], code[1], code[2], code[3]]);
                        if let Some(t) = exit_tx.take() {
                            let _ = t.send(code);
                        }
                    }
                    Some(_) => {}
                    None => return,
                },
                _ = &mut hold_rx => return,
            }
        }
    });
    ExecProcess {
        input: input_tx,
        output: output_rx,
        exit: exit_rx,
        hold: hold_tx,
    }
}

/// The agent's side: follows this node's exec requests and serves each once.
pub async fn serve_requests(link: Arc<crate::client::RemoteLink>, runner: Arc<dyn ExecRunner>) {
    let mut known: Vec<String> = Vec::new();
    loop {
        match link.exec_requests(&known).await {
            Ok(reqs) => {
                let ids: Vec<String> = reqs.iter().map(|r| r.session.id.clone()).collect();
                for r in reqs.into_iter().filter(|r| !known.contains(&r.session.id)) {
                    tokio::spawn(serve_one(link.clone(), runner.clone(), r));
                }
                known = ids;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading exec requests; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs one request's command and carries it over the dial-back exchange until either side
/// ends (the command stops if the client went first).
async fn serve_one(link: Arc<crate::client::RemoteLink>, runner: Arc<dyn ExecRunner>, r: ExecRequest) {
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(64);
    let started = runner.start(&r.session, r.tty).await;
    let input = match &started {
        Ok(p) => Some(p.input.clone()),
        Err(_) => None,
    };
    match started {
        Ok(p) => {
            tokio::spawn(forward_output(p, out_tx));
        }
        Err(e) => {
            // Said to the client, then an exit code as a shell's for a command not run.
            let _ = out_tx
                .send(frame(0, format!("the command could not start: {e}\r\n").as_bytes()))
                .await;
            let _ = out_tx.send(frame(3, &126i32.to_be_bytes())).await;
            drop(out_tx);
        }
    }
    let mut body = match link.exec_stream(&r.server, &r.session.id, out_rx).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(session = %r.session.id, server = %r.server, error = %e, "dialing back for an exec session");
            return;
        }
    };
    let mut frames = Frames::default();
    use futures_util::StreamExt;
    while let Some(Ok(chunk)) = body.next().await {
        let Ok(got) = frames.push(&chunk) else { return };
        for (kind, payload) in got {
            let i = match (kind, payload.as_slice()) {
                (0, d) => ExecInput::Data(d.to_vec()),
                (1, [c1, c2, r1, r2]) => {
                    ExecInput::Resize(u16::from_be_bytes([*c1, *c2]), u16::from_be_bytes([*r1, *r2]))
                }
                (2, []) => ExecInput::Eof,
                _ => continue,
            };
            if let Some(input) = &input {
                let _ = input.send(i).await;
            }
        }
    }
}

/// The command's output, then its exit code, as frames; holds the process until then.
async fn forward_output(mut p: ExecProcess, out: mpsc::Sender<Vec<u8>>) {
    let hold = p.hold;
    while let Some(d) = p.output.recv().await {
        if out.send(frame(0, &d)).await.is_err() {
            return; // the exchange ended: dropping `hold` stops the command
        }
    }
    let code = p.exit.await.unwrap_or(255);
    let _ = out.send(frame(3, &code.to_be_bytes())).await;
    drop(hold);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_cut_and_oversized_ones_are_refused() {
        let bytes = [frame(0, b"hello"), frame(3, &7i32.to_be_bytes()), frame(2, &[])].concat();
        for cut in 0..bytes.len() {
            let mut f = Frames::default();
            let mut got = f.push(&bytes[..cut]).unwrap();
            got.extend(f.push(&bytes[cut..]).unwrap());
            assert_eq!(
                got,
                vec![(0, b"hello".to_vec()), (3, 7i32.to_be_bytes().to_vec()), (2, vec![])]
            );
        }
        let mut f = Frames::default();
        let huge = [&[0u8][..], &((MAX_FRAME + 1) as u32).to_be_bytes()].concat();
        assert!(f.push(&huge).is_err());
    }

    #[test]
    fn a_session_is_dialed_back_once_and_by_its_node_only() {
        let r = Rendezvous::default();
        let (tx, _rx) = oneshot::channel();
        r.waiting.lock().unwrap().insert("s1".into(), ("n1".into(), tx));
        assert!(r.take("s1", "n2").err().unwrap().contains("not for node n2"));
        assert!(r.take("s1", "n1").is_ok());
        assert!(r.take("s1", "n1").err().unwrap().contains("no session"));
    }
}
