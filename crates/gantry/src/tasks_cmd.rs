//! `gantry run | ps | logs | stop`: docker-like commands, as clients of Gantry's ECS and
//! CloudWatch Logs APIs.

use crate::client::Client;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::time::Duration;

pub const LOG_GROUP: &str = "/gantry/run";

#[derive(clap::Args)]
pub struct RunArgs {
    /// Image to run.
    image: String,
    /// Task CPU units (Fargate sizes: 256, 512, 1024, ...).
    #[arg(long, default_value = "256")]
    cpu: String,
    /// Task memory in MiB (a valid Fargate pair with --cpu).
    #[arg(long, default_value = "512")]
    memory: String,
    /// Environment variable K=V (repeatable).
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Cluster to run in.
    #[arg(long, default_value = "default")]
    cluster: String,
    /// Return once the task is started instead of following its output.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Command, replacing the image's Cmd.
    #[arg(last = true)]
    command: Vec<String>,
}

fn family_for(image: &str) -> String {
    let base: String = image
        .rsplit('/')
        .next()
        .unwrap_or(image)
        .split(['@', ':'])
        .next()
        .unwrap_or("image")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("gantry-run-{base}")
}

/// The latest revision if it already says exactly this, else a new one.
fn task_definition(c: &Client, a: &RunArgs) -> Result<String> {
    let family = family_for(&a.image);
    let env: Vec<Value> = a
        .env
        .iter()
        .map(|e| {
            let (k, v) = e
                .split_once('=')
                .with_context(|| format!("--env {e:?} must be KEY=VALUE"))?;
            Ok(json!({"name": k, "value": v}))
        })
        .collect::<Result<_>>()?;
    let mut container = json!({
        "name": "main", "image": a.image, "essential": true, "environment": env,
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": LOG_GROUP, "awslogs-stream-prefix": "run", "awslogs-create-group": "true"}},
    });
    if !a.command.is_empty() {
        container["command"] = json!(a.command);
    }
    if let Ok(cur) = c.ecs("DescribeTaskDefinition", json!({"taskDefinition": family})) {
        let td = &cur["taskDefinition"];
        let same = |k: &str| {
            td["containerDefinitions"][0].get(k).cloned().unwrap_or(Value::Null)
                == container.get(k).cloned().unwrap_or(Value::Null)
        };
        let sizes = td["cpu"] == json!(a.cpu) && td["memory"] == json!(a.memory);
        if sizes
            && ["image", "command", "environment", "logConfiguration"]
                .iter()
                .all(|k| same(k))
        {
            return Ok(td["taskDefinitionArn"].as_str().unwrap_or_default().to_string());
        }
    }
    let r = c.ecs(
        "RegisterTaskDefinition",
        json!({"family": family, "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
               "cpu": a.cpu, "memory": a.memory, "containerDefinitions": [container]}),
    )?;
    Ok(r["taskDefinition"]["taskDefinitionArn"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

fn describe(c: &Client, cluster: &str, task: &str) -> Result<Value> {
    let r = c.ecs("DescribeTasks", json!({"cluster": cluster, "tasks": [task]}))?;
    r["tasks"]
        .get(0)
        .cloned()
        .with_context(|| format!("task {task} not found"))
}

/// Where a task's container logs go: (group, stream), from its task definition.
fn log_stream(c: &Client, task: &Value) -> Result<Option<(String, String)>> {
    let td = c.ecs(
        "DescribeTaskDefinition",
        json!({"taskDefinition": task["taskDefinitionArn"]}),
    )?;
    let id = task["taskArn"]
        .as_str()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    for cd in td["taskDefinition"]["containerDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let lc = &cd["logConfiguration"];
        if lc["logDriver"] == "awslogs" {
            let group = lc["options"]["awslogs-group"].as_str().unwrap_or_default().to_string();
            let name = cd["name"].as_str().unwrap_or_default();
            let stream = match lc["options"]["awslogs-stream-prefix"].as_str() {
                Some(p) => format!("{p}/{name}/{id}"),
                None => format!("{name}/{id}"),
            };
            return Ok(Some((group, stream)));
        }
    }
    Ok(None)
}

/// Prints events after `token`; returns the new forward token.
fn print_new(c: &Client, group: &str, stream: &str, token: Option<String>) -> Result<Option<String>> {
    let mut token = token;
    loop {
        let mut req = json!({"logGroupName": group, "logStreamName": stream, "startFromHead": true});
        if let Some(t) = &token {
            req["nextToken"] = json!(t);
        }
        let r = match c.logs("GetLogEvents", req) {
            Ok(r) => r,
            Err(e) if e.to_string().starts_with("ResourceNotFoundException") => return Ok(token),
            Err(e) => return Err(e),
        };
        let events = r["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            println!("{}", e["message"].as_str().unwrap_or(""));
        }
        token = r["nextForwardToken"].as_str().map(str::to_string);
        if events.is_empty() {
            return Ok(token);
        }
    }
}

/// Follows a task's logs until it stops; returns the stopped task.
fn follow(c: &Client, cluster: &str, task_arn: &str) -> Result<Value> {
    let mut token = None;
    let mut target = None;
    loop {
        let t = describe(c, cluster, task_arn)?;
        if target.is_none() {
            target = log_stream(c, &t)?;
        }
        if let Some((g, s)) = &target {
            token = print_new(c, g, s, token)?;
        }
        if t["lastStatus"] == "STOPPED" {
            if let Some((g, s)) = &target {
                print_new(c, g, s, token)?;
            }
            return Ok(t);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn run(a: RunArgs) -> Result<i32> {
    let c = Client::from_env()?;
    let td = task_definition(&c, &a)?;
    // Any node will do: every subnet of the default VPC.
    let subnets = c.subnet_ids()?;
    let r = c.ecs(
        "RunTask",
        json!({"cluster": a.cluster, "taskDefinition": td, "launchType": "FARGATE", "startedBy": "gantry-run",
               "networkConfiguration": {"awsvpcConfiguration": {"subnets": subnets}}}),
    )?;
    let arn = r["tasks"][0]["taskArn"]
        .as_str()
        .context("RunTask returned no task")?
        .to_string();
    if a.detach {
        println!("{}", arn.rsplit('/').next().unwrap_or(&arn));
        return Ok(0);
    }
    gantry_runtime::block_termination_signals();
    {
        let (cluster, arn) = (a.cluster.clone(), arn.clone());
        std::thread::spawn(move || {
            gantry_runtime::wait_termination_signal();
            if let Ok(c) = Client::from_env() {
                let _ = c.ecs(
                    "StopTask",
                    json!({"cluster": cluster, "task": arn, "reason": "Interrupted (gantry run)"}),
                );
            }
        });
    }
    let t = follow(&c, &a.cluster, &arn)?;
    if t["stopCode"] == "TaskFailedToStart" {
        eprintln!(
            "gantry: {}",
            t["stoppedReason"].as_str().unwrap_or("task failed to start")
        );
        return Ok(125);
    }
    let main = &t["containers"][0];
    if let Some(reason) = main["reason"].as_str() {
        eprintln!("gantry: {reason}");
    }
    Ok(main["exitCode"].as_i64().map(|c| c as i32).unwrap_or(125))
}

pub fn ps(cluster: &str, all: bool) -> Result<i32> {
    let c = Client::from_env()?;
    let mut arns: Vec<Value> = Vec::new();
    for status in if all {
        vec!["RUNNING", "STOPPED"]
    } else {
        vec!["RUNNING"]
    } {
        let mut token: Option<String> = None;
        loop {
            let mut req = json!({"cluster": cluster, "desiredStatus": status});
            if let Some(t) = &token {
                req["nextToken"] = json!(t);
            }
            let r = c.ecs("ListTasks", req)?;
            arns.extend(r["taskArns"].as_array().cloned().unwrap_or_default());
            token = r["nextToken"].as_str().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
    }
    println!("{:<34} {:<28} {:<14} {:<16} EXIT", "TASK", "DEFINITION", "STATUS", "IP");
    for chunk in arns.chunks(100) {
        let r = c.ecs("DescribeTasks", json!({"cluster": cluster, "tasks": chunk}))?;
        for t in r["tasks"].as_array().into_iter().flatten() {
            let id = t["taskArn"].as_str().unwrap_or("").rsplit('/').next().unwrap_or("");
            let def = t["taskDefinitionArn"]
                .as_str()
                .unwrap_or("")
                .rsplit('/')
                .next()
                .unwrap_or("");
            let ip = t["containers"][0]["networkInterfaces"][0]["privateIpv4Address"]
                .as_str()
                .unwrap_or("-");
            let exit = t["containers"][0]["exitCode"]
                .as_i64()
                .map(|e| e.to_string())
                .unwrap_or_default();
            println!(
                "{id:<34} {def:<28} {:<14} {ip:<16} {exit}",
                t["lastStatus"].as_str().unwrap_or("")
            );
        }
    }
    Ok(0)
}

pub fn logs(cluster: &str, task: &str, follow_logs: bool) -> Result<i32> {
    let c = Client::from_env()?;
    let t = describe(&c, cluster, task)?;
    if follow_logs {
        follow(&c, cluster, t["taskArn"].as_str().unwrap_or(task))?;
        return Ok(0);
    }
    match log_stream(&c, &t)? {
        Some((g, s)) => {
            print_new(&c, &g, &s, None)?;
            Ok(0)
        }
        None => bail!("task {task} has no awslogs log configuration"),
    }
}

pub fn stop(cluster: &str, task: &str, reason: Option<&str>) -> Result<i32> {
    let c = Client::from_env()?;
    let mut req = json!({"cluster": cluster, "task": task});
    if let Some(r) = reason {
        req["reason"] = json!(r);
    }
    let r = c.ecs("StopTask", req)?;
    println!(
        "{}",
        r["task"]["taskArn"]
            .as_str()
            .unwrap_or(task)
            .rsplit('/')
            .next()
            .unwrap_or(task)
    );
    Ok(0)
}
