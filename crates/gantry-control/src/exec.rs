//! ECS Exec: ExecuteCommand makes a session (the task, the container, the command, a token),
//! and the client then opens the session's stream on the API endpoint with the token, once,
//! within a minute. The stream is run by whatever can reach the task's node (`ExecRunner`).

use crate::tasks::{TaskRecord, TaskSpecContainer};
use crate::{random_hex, store_err, Control};
use gantry_types::arn::Scope;
use gantry_types::model::Cluster;
use gantry_types::EcsError;
use serde::{Deserialize, Serialize};

const SESSIONS: &str = "/ecs-exec/";
/// Where a server asks a node to dial it back for a session (cluster mode, see gantry-link's
/// `exec`): `<prefix><node>/<session id>`.
pub const EXEC_REQUESTS: &str = "/exec-requests/";
/// How long a session waits for its stream to be opened.
pub const CONNECT_WITHIN_SECS: f64 = 60.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecSession {
    pub id: String,
    pub task_key: String,
    pub task_arn: String,
    pub container: String,
    pub command: Vec<String>,
    /// SHA-256 of the token, hex: the token itself is only in ExecuteCommand's answer.
    pub token_digest: String,
    pub created: f64,
    pub opened: bool,
    /// Where the session's output is logged, if anywhere.
    #[serde(default)]
    pub log: Option<ExecLog>,
}

/// A log stream of CloudWatch Logs that an exec session's output goes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecLog {
    pub account: String,
    pub region: String,
    pub group: String,
    pub stream: String,
}

/// The log group (and its region) a session in `container` is logged to, as the cluster's
/// executeCommandConfiguration says: NONE, nowhere; OVERRIDE, its group; DEFAULT (also when
/// nothing is configured), the container's awslogs group, or nowhere without one.
pub fn exec_log_group(cluster: &Cluster, container: &TaskSpecContainer, task_region: &str) -> Option<(String, String)> {
    let exec = cluster
        .configuration
        .as_ref()
        .and_then(|c| c.execute_command_configuration.as_ref());
    match exec.and_then(|e| e.logging.as_deref()).unwrap_or("DEFAULT") {
        "OVERRIDE" => {
            let group = exec?.log_configuration.as_ref()?.cloud_watch_log_group_name.clone()?;
            Some((group, task_region.to_string()))
        }
        "DEFAULT" => {
            let lc = container
                .log_configuration
                .as_ref()
                .filter(|l| l.log_driver == "awslogs")?;
            let region = lc
                .options
                .get("awslogs-region")
                .map(String::as_str)
                .unwrap_or(task_region);
            Some((lc.options.get("awslogs-group")?.clone(), region.to_string()))
        }
        _ => None,
    }
}

/// What the stream carries to the running command.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecInput {
    Data(Vec<u8>),
    /// Terminal columns and rows.
    Resize(u16, u16),
    Eof,
}

/// A running command: its input, its output (stdout and stderr, or the terminal), and its
/// exit code once it ends.
pub struct ExecProcess {
    pub input: tokio::sync::mpsc::Sender<ExecInput>,
    pub output: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pub exit: tokio::sync::oneshot::Receiver<i32>,
    /// Dropped with the process's holder: a command still running then is stopped (a client
    /// that went away must not leave a shell behind in the container).
    pub hold: tokio::sync::oneshot::Sender<()>,
}

/// Runs a session's command in its container (the node's agent).
#[async_trait::async_trait]
pub trait ExecRunner: Send + Sync {
    async fn start(&self, session: &ExecSession, tty: bool) -> Result<ExecProcess, String>;
}

fn digest(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A command line split as a shell would split words (quotes group, backslash escapes); no
/// expansion.
pub fn split_command(command: &str) -> Result<Vec<String>, String> {
    let (mut words, mut word, mut quote, mut started) = (vec![], String::new(), None::<char>, false);
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => word.push(c),
            (_, '\\') => {
                word.push(chars.next().ok_or("the command ends with a lone backslash")?);
                started = true;
            }
            (_, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if quote.is_some() {
        return Err("the command has an unclosed quote".into());
    }
    if started {
        words.push(word);
    }
    Ok(words)
}

impl Control {
    /// ExecuteCommand: a session for `container` of a running task that was started with
    /// execute command enabled. Returns the session and its token.
    pub async fn execute_command(
        &self,
        scope: &Scope,
        cluster: Option<&str>,
        task: &str,
        container: Option<&str>,
        command: &str,
    ) -> Result<(ExecSession, TaskRecord, String), EcsError> {
        let cluster = self.active_cluster(scope, cluster).await?;
        let id = task.rsplit('/').next().unwrap_or(task);
        let key = Self::task_key(scope, &cluster.cluster_name, id);
        let Some((rec, _)) = self.get_json::<TaskRecord>(&key).await? else {
            return Err(EcsError::invalid(format!("The task {task} could not be found.")));
        };
        if !rec.task.enable_execute_command || rec.task.last_status != "RUNNING" {
            return Err(EcsError::invalid(
                "The execute command failed because execute command was not enabled when the task was run or the execute command agent isn't running. Wait and try again or run a new task with execute command enabled and try again.",
            ));
        }
        let name = match container {
            Some(c) => rec
                .containers
                .iter()
                .find(|x| x.name() == c)
                .map(|x| x.name().to_string())
                .ok_or_else(|| EcsError::invalid(format!("The container {c} does not exist in the task.")))?,
            None if rec.containers.len() == 1 => rec.containers[0].name().to_string(),
            None => {
                return Err(EcsError::invalid(
                    "If there is more than one container in the task, you must specify a container name.",
                ))
            }
        };
        let words = split_command(command).map_err(|e| EcsError::invalid(format!("command: {e}.")))?;
        if words.is_empty() {
            return Err(EcsError::invalid("command can not be blank."));
        }
        let token = random_hex(32);
        let id = format!("ecs-execute-command-{}", random_hex(9));
        let spec = rec.containers.iter().find(|c| c.name() == name).expect("found above");
        let log = match exec_log_group(&cluster, spec, &rec.region) {
            Some((group, region)) => Some(self.exec_log(&rec, group, region, &id).await?),
            None => None,
        };
        let session = ExecSession {
            id,
            task_key: key,
            task_arn: rec.task.task_arn.clone(),
            container: name,
            command: words,
            token_digest: digest(&token),
            created: self.now(),
            opened: false,
            log,
        };
        self.store
            .create(
                &format!("{SESSIONS}{}", session.id),
                &serde_json::to_vec(&session).expect("serialises"),
            )
            .await
            .map_err(store_err)?;
        Ok((session, rec, token))
    }

    /// A session's log stream (named by the session), if the task's role may write it: the
    /// session's output is logged with the task role's permissions, as ECS Exec's agent in
    /// the task logs it (logs:CreateLogStream and logs:PutLogEvents).
    async fn exec_log(
        &self,
        rec: &TaskRecord,
        group: String,
        region: String,
        session: &str,
    ) -> Result<ExecLog, EcsError> {
        let refuse = |why: String| {
            EcsError::invalid(format!(
                "The execute command session cannot be logged to log group {group}, as the cluster's executeCommandConfiguration asks: {why}"
            ))
        };
        let Some(arn) = rec.roles.task.as_deref() else {
            return Err(refuse("the task has no task role to write it with.".into()));
        };
        let caller = self.iam().task_caller(rec, arn).await.map_err(refuse)?;
        let ctx = crate::iam::principal_context(&caller);
        let stream_arn = format!(
            "arn:aws:logs:{region}:{}:log-group:{group}:log-stream:{session}",
            rec.account
        );
        for action in ["logs:CreateLogStream", "logs:PutLogEvents"] {
            crate::iam::authorize(&caller, action, &stream_arn, &ctx).map_err(refuse)?;
        }
        Ok(ExecLog {
            account: rec.account.clone(),
            region,
            group,
            stream: session.to_string(),
        })
    }

    /// Opens a session's stream: once, with its token, within a minute of ExecuteCommand.
    /// The reason otherwise.
    pub async fn open_exec_session(&self, id: &str, token: &str) -> Result<ExecSession, String> {
        let key = format!("{SESSIONS}{id}");
        let kv = self
            .store
            .get(&key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no such session")?;
        let mut s: ExecSession = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
        let fresh = self.now() - s.created <= CONNECT_WITHIN_SECS;
        // Compared as digests: no early exit on the first differing byte of the token.
        if s.opened || !fresh || digest(token) != s.token_digest {
            return Err("the session is not open to this token (unknown, used or expired)".into());
        }
        s.opened = true;
        self.store
            .update(&key, &serde_json::to_vec(&s).expect("json"), kv.mod_revision)
            .await
            .map_err(|_| "the session was opened concurrently".to_string())?;
        Ok(s)
    }

    /// Removes sessions past their minute (opened or not), and dial-back requests a server
    /// left behind (it deletes its own, unless it died): the leader's housekeeping.
    pub async fn purge_exec_sessions(&self) -> Result<(), EcsError> {
        let now = self.now();
        let (kvs, _) = self.store.list(SESSIONS).await.map_err(store_err)?;
        let (requests, _) = self.store.list(EXEC_REQUESTS).await.map_err(store_err)?;
        for kv in kvs {
            let done = serde_json::from_slice::<ExecSession>(&kv.value)
                .map(|s| now - s.created > CONNECT_WITHIN_SECS)
                .unwrap_or(true);
            if done {
                let _ = self.store.delete(&kv.key, Some(kv.mod_revision)).await;
            }
        }
        for kv in requests {
            let created = serde_json::from_slice::<serde_json::Value>(&kv.value)
                .ok()
                .and_then(|v| v["session"]["created"].as_f64());
            if created.is_none_or(|c| now - c > CONNECT_WITHIN_SECS) {
                let _ = self.store.delete(&kv.key, Some(kv.mod_revision)).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_types::model::{ClusterConfiguration, ExecuteCommandConfiguration, ExecuteCommandLogConfiguration};

    #[test]
    fn a_session_is_logged_where_the_cluster_says() {
        let container: TaskSpecContainer = serde_json::from_value(serde_json::json!({
            "name": "app", "image": "busybox",
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/app", "awslogs-region": "eu-west-1"}}
        }))
        .unwrap();
        let bare: TaskSpecContainer =
            serde_json::from_value(serde_json::json!({"name": "app", "image": "busybox"})).unwrap();
        let cluster = |logging: Option<&str>, group: Option<&str>| Cluster {
            configuration: logging.map(|l| ClusterConfiguration {
                execute_command_configuration: Some(ExecuteCommandConfiguration {
                    logging: Some(l.into()),
                    log_configuration: group.map(|g| ExecuteCommandLogConfiguration {
                        cloud_watch_log_group_name: Some(g.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let at = |g: &str, r: &str| Some((g.to_string(), r.to_string()));
        // DEFAULT, also when nothing is configured: the container's awslogs group and region.
        assert_eq!(
            exec_log_group(&cluster(None, None), &container, "us-east-1"),
            at("/app", "eu-west-1")
        );
        assert_eq!(
            exec_log_group(&cluster(Some("DEFAULT"), None), &container, "us-east-1"),
            at("/app", "eu-west-1")
        );
        assert_eq!(exec_log_group(&cluster(None, None), &bare, "us-east-1"), None);
        assert_eq!(
            exec_log_group(&cluster(Some("NONE"), None), &container, "us-east-1"),
            None
        );
        assert_eq!(
            exec_log_group(&cluster(Some("OVERRIDE"), Some("/exec")), &bare, "us-east-1"),
            at("/exec", "us-east-1")
        );
    }

    #[test]
    fn commands_split_as_a_shell_splits_words() {
        let s = |c: &str| split_command(c).unwrap();
        assert_eq!(s("/bin/sh"), ["/bin/sh"]);
        assert_eq!(s("  ls   -la /tmp "), ["ls", "-la", "/tmp"]);
        assert_eq!(
            s(r#"sh -c 'echo "hi there"; exit 3'"#),
            ["sh", "-c", r#"echo "hi there"; exit 3"#]
        );
        assert_eq!(s(r#"echo "a b" c\ d ''"#), ["echo", "a b", "c d", ""]);
        assert!(split_command("echo 'open").is_err());
        assert!(split_command("").unwrap().is_empty());
    }
}
