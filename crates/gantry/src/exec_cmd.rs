//! `gantry exec`: ECS Exec from the command line. ExecuteCommand opens a session; its stream
//! (a WebSocket on the API endpoint) carries the command's input and output, the terminal's
//! size when it runs in one, and finally its exit code, which `gantry exec` exits with.

use crate::client::Client;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

#[derive(clap::Args)]
pub struct ExecArgs {
    /// The task (id or ARN).
    task: String,
    #[arg(long, default_value = "default")]
    cluster: String,
    /// The container (needed when the task has more than one).
    #[arg(long)]
    container: Option<String>,
    /// Send standard input to the command.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Run the command in a terminal (raw mode here while it runs).
    #[arg(short = 't', long)]
    tty: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Words joined into one command line that splits back into them (ECS takes a string).
fn command_line(words: &[String]) -> String {
    let quote = |w: &String| {
        let plain = !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
        if plain {
            w.clone()
        } else {
            format!("'{}'", w.replace('\'', r"'\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// The terminal on stdin in raw mode until dropped.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enter(on: bool) -> RawMode {
        // SAFETY: termios calls on fd 0 with a zeroed struct they fill in.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if !on || libc::isatty(0) != 1 || libc::tcgetattr(0, &mut t) != 0 {
                return RawMode(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawMode(Some(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the attributes read in `enter`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// This terminal's columns and rows, if stdout is one.
fn size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ fills a winsize.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
    }
}

fn resize_frame((cols, rows): (u16, u16)) -> Vec<u8> {
    [&[1u8][..], &cols.to_be_bytes(), &rows.to_be_bytes()].concat()
}

pub fn run(a: ExecArgs) -> Result<i32> {
    let client = Client::from_env()?;
    let mut body =
        json!({"cluster": a.cluster, "task": a.task, "command": command_line(&a.command), "interactive": true});
    if let Some(c) = &a.container {
        body["container"] = json!(c);
    }
    let out = client.ecs("ExecuteCommand", body)?;
    let session = out["session"]["sessionId"]
        .as_str()
        .context("no session in ExecuteCommand's answer")?;
    let token = out["session"]["tokenValue"]
        .as_str()
        .context("no token in ExecuteCommand's answer")?;
    // The stream is on the endpoint this client speaks to.
    let host = client
        .endpoint()
        .split("://")
        .nth(1)
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
    let url = format!("ws://{host}/ecs-exec/{session}?tty={}", a.tty);
    let mut req = url.as_str().into_client_request()?;
    req.headers_mut().insert("x-gantry-exec-token", token.parse()?);
    let stream = TcpStream::connect(&host).with_context(|| format!("connecting to {host}"))?;
    let (mut ws, _) =
        tungstenite::client(req, stream).map_err(|e| anyhow::anyhow!("opening the session's stream: {e}"))?;
    ws.get_mut().set_read_timeout(Some(Duration::from_millis(50)))?;
    let _raw = RawMode::enter(a.tty);
    let mut last_size = None;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    if a.interactive || a.tty {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(vec![2]);
                        return;
                    }
                    Ok(n) => {
                        if tx.send([&[0u8][..], &buf[..n]].concat()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    let mut stdout = std::io::stdout();
    loop {
        if a.tty {
            if let Some(now) = size().filter(|s| Some(*s) != last_size) {
                last_size = Some(now);
                ws.send(Message::Binary(resize_frame(now).into()))?;
            }
        }
        while let Ok(frame) = rx.try_recv() {
            ws.send(Message::Binary(frame.into()))?;
        }
        match ws.read() {
            Ok(Message::Binary(b)) => match b.split_first() {
                Some((0, data)) => {
                    stdout.write_all(data)?;
                    stdout.flush()?;
                }
                Some((3, code)) if code.len() == 4 => {
                    return Ok(i32::from_be_bytes(code.try_into().expect("4 bytes")));
                }
                _ => {}
            },
            Ok(Message::Close(_)) => bail!("the session ended without an exit code"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => bail!("the session's stream: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_one_command_line() {
        let w = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let words = w(&["sh", "-c", "echo 'hi there'; exit 3", ""]);
        let line = command_line(&words);
        assert_eq!(line, r#"sh -c 'echo '\''hi there'\''; exit 3' ''"#);
        assert_eq!(gantry_control::exec::split_command(&line).unwrap(), words);
        assert_eq!(resize_frame((80, 24)), [1, 0, 80, 0, 24]);
    }
}
