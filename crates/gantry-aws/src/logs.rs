//! CloudWatch Logs operations (AWS JSON 1.1, target prefix Logs_20140328).

use crate::api::{Api, ApiError};
use crate::protocol::Reply;
use gantry_control::logstore::{matches_filter, LogOp, LogStore, LogWrite, LogsError};
use gantry_types::arn::Scope;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

impl From<LogsError> for ApiError {
    fn from(e: LogsError) -> ApiError {
        let status = if matches!(e, LogsError::Backend(_)) {
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        } else {
            axum::http::StatusCode::BAD_REQUEST
        };
        ApiError::new(e.aws_type(), e.to_string(), status)
    }
}

fn invalid(m: impl Into<String>) -> ApiError {
    ApiError::client("InvalidParameterException", m)
}

fn field<T: DeserializeOwned>(input: &Value, name: &str) -> Result<Option<T>, ApiError> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| invalid(format!("Invalid value for {name}: {e}"))),
    }
}

fn required<T: DeserializeOwned>(input: &Value, name: &str) -> Result<T, ApiError> {
    field(input, name)?.ok_or_else(|| {
        invalid(format!(
            "1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn limit(input: &Value, default: usize, max: usize) -> Result<usize, ApiError> {
    match field::<i64>(input, "limit")? {
        None => Ok(default),
        Some(n) if n >= 1 && n as usize <= max => Ok(n as usize),
        Some(n) => Err(invalid(format!(
            "Value '{n}' at 'limit' failed to satisfy constraint: Member must be between 1 and {max}"
        ))),
    }
}

const MAX_BATCH_EVENTS: usize = 10_000;
const MAX_BATCH_BYTES: usize = 1_048_576;
const EVENT_OVERHEAD: usize = 26;
const MAX_EVENT_BYTES: usize = 262_144 - EVENT_OVERHEAD;

/// The registry's entry point.
pub fn handler<'a>(api: &'a Api, scope: &'a Scope, op: &'a str, input: Value) -> Reply<'a> {
    Box::pin(dispatch(api, scope, op, input))
}

pub async fn dispatch(api: &Api, scope: &Scope, op: &str, input: Value) -> Result<Value, ApiError> {
    let s = (scope.account.as_str(), scope.region.as_str());
    let write = |group: &str, op: LogOp| api.logs.write(LogWrite::new(s, group, now_ms(), op));
    let read = || -> Result<&LogStore, ApiError> { Ok(api.logs.read()?) };
    let group_arn = |g: &str| format!("arn:aws:logs:{}:{}:log-group:{g}", scope.region, scope.account);
    Ok(match op {
        "CreateLogGroup" => {
            let g: String = required(&input, "logGroupName")?;
            LogStore::validate_group_name(&g)?;
            write(&g, LogOp::CreateGroup).await?;
            json!({})
        }
        "DeleteLogGroup" => {
            let g: String = required(&input, "logGroupName")?;
            write(&g, LogOp::DeleteGroup).await?;
            json!({})
        }
        "PutRetentionPolicy" => {
            let g: String = required(&input, "logGroupName")?;
            let d: i64 = required(&input, "retentionInDays")?;
            LogStore::validate_retention(d)?;
            write(&g, LogOp::SetRetention { days: Some(d) }).await?;
            api.logs.local_copy().expire(now_ms())?;
            json!({})
        }
        "DeleteRetentionPolicy" => {
            let g: String = required(&input, "logGroupName")?;
            write(&g, LogOp::SetRetention { days: None }).await?;
            json!({})
        }
        "DescribeLogGroups" => {
            let prefix: String = field(&input, "logGroupNamePrefix")?.unwrap_or_default();
            let lim = limit(&input, 50, 50)?;
            let after: Option<String> = field(&input, "nextToken")?;
            let mut groups = read()?.groups(s, &prefix, after.as_deref(), lim + 1)?;
            let next = (groups.len() > lim).then(|| groups[lim - 1].name.clone());
            groups.truncate(lim);
            let out: Vec<Value> = groups
                .iter()
                .map(|g| {
                    let mut v = json!({
                        "logGroupName": g.name, "creationTime": g.created_ms, "metricFilterCount": 0,
                        "arn": format!("{}:*", group_arn(&g.name)), "logGroupArn": group_arn(&g.name),
                        "storedBytes": g.stored_bytes, "logGroupClass": "STANDARD",
                    });
                    if let Some(d) = g.retention_days {
                        v["retentionInDays"] = json!(d);
                    }
                    v
                })
                .collect();
            let mut r = json!({"logGroups": out});
            if let Some(n) = next {
                r["nextToken"] = json!(n);
            }
            r
        }
        "CreateLogStream" => {
            let g: String = required(&input, "logGroupName")?;
            let st: String = required(&input, "logStreamName")?;
            LogStore::validate_stream_name(&st)?;
            write(&g, LogOp::CreateStream { stream: st }).await?;
            json!({})
        }
        "DeleteLogStream" => {
            let g: String = required(&input, "logGroupName")?;
            let st: String = required(&input, "logStreamName")?;
            write(&g, LogOp::DeleteStream { stream: st }).await?;
            json!({})
        }
        "DescribeLogStreams" => {
            let g: String = required(&input, "logGroupName")?;
            let prefix: String = field(&input, "logStreamNamePrefix")?.unwrap_or_default();
            let order: String = field(&input, "orderBy")?.unwrap_or_else(|| "LogStreamName".into());
            let by_time = match order.as_str() {
                "LogStreamName" => false,
                "LastEventTime" => true,
                _ => return Err(invalid("orderBy must be LogStreamName or LastEventTime")),
            };
            if by_time && !prefix.is_empty() {
                return Err(invalid("Cannot order by LastEventTime with a logStreamNamePrefix."));
            }
            let desc: bool = field(&input, "descending")?.unwrap_or(false);
            let lim = limit(&input, 50, 50)?;
            let start: usize = field::<String>(&input, "nextToken")?
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            let all = read()?.streams(s, &g, &prefix, by_time, desc)?;
            let page: Vec<Value> = all
                .iter()
                .skip(start)
                .take(lim)
                .map(|st| {
                    let mut v = json!({
                        "logStreamName": st.name, "creationTime": st.created_ms, "storedBytes": st.stored_bytes,
                        "arn": format!("{}:log-stream:{}", group_arn(&g), st.name),
                    });
                    if let Some(t) = st.first_event_ms {
                        v["firstEventTimestamp"] = json!(t);
                    }
                    if let Some(t) = st.last_event_ms {
                        v["lastEventTimestamp"] = json!(t);
                    }
                    if let Some(t) = st.last_ingestion_ms {
                        v["lastIngestionTime"] = json!(t);
                        v["uploadSequenceToken"] = json!(t.to_string());
                    }
                    v
                })
                .collect();
            let mut r = json!({"logStreams": page});
            if start + lim < all.len() {
                r["nextToken"] = json!((start + lim).to_string());
            }
            r
        }
        "PutLogEvents" => {
            let g: String = required(&input, "logGroupName")?;
            let st: String = required(&input, "logStreamName")?;
            #[derive(serde::Deserialize)]
            struct Ev {
                timestamp: i64,
                message: String,
            }
            let events: Vec<Ev> = required(&input, "logEvents")?;
            if events.is_empty() || events.len() > MAX_BATCH_EVENTS {
                return Err(invalid(format!("logEvents must hold 1 to {MAX_BATCH_EVENTS} events")));
            }
            let bytes: usize = events.iter().map(|e| e.message.len() + EVENT_OVERHEAD).sum();
            if bytes > MAX_BATCH_BYTES {
                return Err(invalid(format!(
                    "Upload too large: {bytes} bytes exceeds the {MAX_BATCH_BYTES} bytes limit"
                )));
            }
            if events.windows(2).any(|w| w[1].timestamp < w[0].timestamp) {
                return Err(invalid(
                    "Log events in a single PutLogEvents request must be in chronological order.",
                ));
            }
            if events.iter().any(|e| e.message.len() > MAX_EVENT_BYTES) {
                return Err(invalid(format!("Log event too large: at most {MAX_EVENT_BYTES} bytes")));
            }
            let now = now_ms();
            let too_old = now - 14 * 86_400_000;
            let too_new = now + 2 * 3_600_000;
            let mut accepted = Vec::new();
            let (mut old_end, mut new_start) = (None, None);
            for (i, e) in events.iter().enumerate() {
                if e.timestamp < too_old {
                    old_end = Some(i as i64 + 1);
                } else if e.timestamp > too_new {
                    new_start.get_or_insert(i as i64);
                } else {
                    accepted.push((e.timestamp, e.message.clone()));
                }
            }
            if !accepted.is_empty() {
                let w = LogWrite::new(
                    s,
                    &g,
                    now,
                    LogOp::Put {
                        stream: st,
                        events: accepted,
                    },
                );
                api.logs.write(w).await?;
            } else if !read()?.group_exists(s, &g)? {
                return Err(LogsError::NoGroup.into());
            }
            let mut r = json!({"nextSequenceToken": now.to_string()});
            if old_end.is_some() || new_start.is_some() {
                let mut info = json!({});
                if let Some(e) = old_end {
                    info["tooOldLogEventEndIndex"] = json!(e);
                }
                if let Some(sidx) = new_start {
                    info["tooNewLogEventStartIndex"] = json!(sidx);
                }
                r["rejectedLogEventsInfo"] = info;
            }
            r
        }
        "GetLogEvents" => {
            let g: String = field(&input, "logGroupName")?
                .or_else(|| {
                    field::<String>(&input, "logGroupIdentifier").ok().flatten().map(|i| {
                        i.rsplit(":log-group:")
                            .next()
                            .unwrap_or(&i)
                            .trim_end_matches(":*")
                            .to_string()
                    })
                })
                .ok_or_else(|| invalid("logGroupName or logGroupIdentifier is required"))?;
            let st: String = required(&input, "logStreamName")?;
            let start: Option<i64> = field(&input, "startTime")?;
            let end: Option<i64> = field(&input, "endTime")?;
            let head: bool = field(&input, "startFromHead")?.unwrap_or(false);
            let lim = limit(&input, 10_000, 10_000)?;
            let token: Option<String> = field(&input, "nextToken")?;
            let cursor = match &token {
                None => None,
                Some(t) => {
                    let (dir, id) = t
                        .split_once('/')
                        .ok_or_else(|| invalid("The specified nextToken is invalid."))?;
                    let id: i64 = id.parse().map_err(|_| invalid("The specified nextToken is invalid."))?;
                    match dir {
                        "f" => Some((true, id)),
                        "b" => Some((false, id)),
                        _ => return Err(invalid("The specified nextToken is invalid.")),
                    }
                }
            };
            let events = read()?.stream_events(s, &g, &st, start, end, head, cursor, lim)?;
            // With no events, the tokens stay where they were (how clients detect the end).
            let (fwd, back) = match (events.first(), events.last()) {
                (Some(f), Some(last)) => (format!("f/{}", last.id), format!("b/{}", f.id)),
                _ => {
                    let t = token.clone().unwrap_or_else(|| "f/0".into());
                    let id = t.split_once('/').map(|x| x.1.to_string()).unwrap_or_else(|| "0".into());
                    (format!("f/{id}"), format!("b/{id}"))
                }
            };
            let out: Vec<Value> = events
                .iter()
                .map(|e| json!({"timestamp": e.timestamp, "message": e.message, "ingestionTime": e.ingestion_ms}))
                .collect();
            json!({"events": out, "nextForwardToken": fwd, "nextBackwardToken": back})
        }
        "FilterLogEvents" => {
            let g: String = field(&input, "logGroupName")?
                .or_else(|| field::<String>(&input, "logGroupIdentifier").ok().flatten())
                .ok_or_else(|| invalid("logGroupName or logGroupIdentifier is required"))?;
            let streams: Option<Vec<String>> = field(&input, "logStreamNames")?;
            let prefix: Option<String> = field(&input, "logStreamNamePrefix")?;
            if streams.is_some() && prefix.is_some() {
                return Err(invalid(
                    "You cannot specify both logStreamNames and logStreamNamePrefix.",
                ));
            }
            let start: Option<i64> = field(&input, "startTime")?;
            let end: Option<i64> = field(&input, "endTime")?;
            let pattern: String = field(&input, "filterPattern")?.unwrap_or_default();
            let lim = limit(&input, 10_000, 10_000)?;
            let after = match field::<String>(&input, "nextToken")? {
                None => None,
                Some(t) => {
                    let (ts, id) = t
                        .split_once('_')
                        .ok_or_else(|| invalid("The specified nextToken is invalid."))?;
                    Some((
                        ts.parse().map_err(|_| invalid("The specified nextToken is invalid."))?,
                        id.parse().map_err(|_| invalid("The specified nextToken is invalid."))?,
                    ))
                }
            };
            let (events, more) = read()?.group_events(
                s,
                &g,
                streams.as_deref(),
                prefix.as_deref(),
                start,
                end,
                after,
                lim,
                |m| matches_filter(&pattern, m),
            )?;
            let out: Vec<Value> = events
                .iter()
                .map(|e| json!({"logStreamName": e.stream, "timestamp": e.timestamp, "message": e.message, "ingestionTime": e.ingestion_ms, "eventId": format!("{:056}", e.id)}))
                .collect();
            let mut r = json!({"events": out, "searchedLogStreams": []});
            if more {
                if let Some(last) = events.last() {
                    r["nextToken"] = json!(format!("{}_{}", last.timestamp, last.id));
                }
            }
            r
        }
        other => {
            return Err(ApiError::client(
                "InvalidAction",
                format!("The action {other} is not valid for this web service (Gantry does not implement it yet)."),
            ))
        }
    })
}
