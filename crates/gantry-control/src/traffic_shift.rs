//! ECS's native blue/green, linear and canary deployments. A service with one of these
//! strategies and load balancers with an `advancedConfiguration` runs its new (green)
//! deployment beside the current (blue) one, in the alternate target group; once every green
//! task is healthy the test listener rule sends to green, then production traffic moves
//! (all at once, in linear steps, or a canary share then the rest) by rewriting the
//! production rule's forward weights; blue is kept for the bake time, then stopped, and the
//! target groups swap roles for the next deployment. A failing green deployment (circuit
//! breaker) shifts traffic back to blue.
//!
//! The stage machine here is pure (the controller feeds it the clock and green's health).

use gantry_types::model::DeploymentConfiguration;
use gantry_types::EcsError;
use serde::{Deserialize, Serialize};

pub fn strategy(c: &DeploymentConfiguration) -> &str {
    c.strategy.as_deref().unwrap_or("ROLLING")
}

fn minutes(v: Option<i64>, what: &str) -> Result<f64, EcsError> {
    match v {
        None => Ok(0.0),
        Some(m) if (0..=1440).contains(&m) => Ok(m as f64 * 60.0),
        Some(m) => Err(EcsError::invalid(format!(
            "{what} must be between 0 and 1440 minutes, not {m}."
        ))),
    }
}

/// The strategy's settings, as ECS bounds them.
pub fn validate(c: &DeploymentConfiguration) -> Result<(), EcsError> {
    let s = strategy(c);
    if !["ROLLING", "BLUE_GREEN", "LINEAR", "CANARY"].contains(&s) {
        return Err(EcsError::invalid(format!(
            "deploymentConfiguration.strategy {s} is not valid: ROLLING, BLUE_GREEN, LINEAR or CANARY."
        )));
    }
    if c.linear_configuration.is_some() && s != "LINEAR" {
        return Err(EcsError::invalid(
            "linearConfiguration is only used with the LINEAR strategy.",
        ));
    }
    if c.canary_configuration.is_some() && s != "CANARY" {
        return Err(EcsError::invalid(
            "canaryConfiguration is only used with the CANARY strategy.",
        ));
    }
    if s == "ROLLING" && c.bake_time_in_minutes.is_some() {
        return Err(EcsError::invalid(
            "bakeTimeInMinutes is only used with the BLUE_GREEN, LINEAR and CANARY strategies.",
        ));
    }
    minutes(c.bake_time_in_minutes, "bakeTimeInMinutes")?;
    if s == "LINEAR" {
        let l = c.linear_configuration.clone().unwrap_or_default();
        let step = l.step_percent.unwrap_or(10.0);
        if !(3.0..=100.0).contains(&step) {
            return Err(EcsError::invalid(format!(
                "linearConfiguration.stepPercent must be between 3.0 and 100.0, not {step}."
            )));
        }
        minutes(l.step_bake_time_in_minutes, "linearConfiguration.stepBakeTimeInMinutes")?;
    }
    if s == "CANARY" {
        let k = c.canary_configuration.clone().unwrap_or_default();
        let pct = k.canary_percent.unwrap_or(5.0);
        if !(0.1..=100.0).contains(&pct) {
            return Err(EcsError::invalid(format!(
                "canaryConfiguration.canaryPercent must be between 0.1 and 100.0, not {pct}."
            )));
        }
        minutes(
            k.canary_bake_time_in_minutes,
            "canaryConfiguration.canaryBakeTimeInMinutes",
        )?;
    }
    Ok(())
}

/// A deployment shifting traffic, as the service record keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficShift {
    /// The green deployment.
    pub deployment: String,
    /// ECS's lifecycle stage: SCALE_UP, PRODUCTION_TRAFFIC_SHIFT, BAKE_TIME or CLEAN_UP.
    pub stage: String,
    pub since: f64,
    /// Percent of production traffic on green.
    pub green_weight: f64,
}

impl TrafficShift {
    pub fn start(deployment: &str, now: f64) -> TrafficShift {
        TrafficShift {
            deployment: deployment.to_string(),
            stage: "SCALE_UP".into(),
            since: now,
            green_weight: 0.0,
        }
    }
}

/// (first share, the share each later step adds, seconds between steps).
fn steps(c: &DeploymentConfiguration) -> (f64, f64, f64) {
    match strategy(c) {
        "LINEAR" => {
            let l = c.linear_configuration.clone().unwrap_or_default();
            let step = l.step_percent.unwrap_or(10.0);
            (step, step, minutes(l.step_bake_time_in_minutes, "").unwrap_or(0.0))
        }
        "CANARY" => {
            let k = c.canary_configuration.clone().unwrap_or_default();
            (
                k.canary_percent.unwrap_or(5.0),
                100.0,
                minutes(k.canary_bake_time_in_minutes, "").unwrap_or(0.0),
            )
        }
        _ => (100.0, 100.0, 0.0),
    }
}

/// The shift after one controller pass, given whether every green task is healthy.
pub fn advance(c: &DeploymentConfiguration, s: &TrafficShift, green_ready: bool, now: f64) -> TrafficShift {
    let mut next = s.clone();
    let (first, step, wait) = steps(c);
    let bake = minutes(c.bake_time_in_minutes, "").unwrap_or(0.0);
    match s.stage.as_str() {
        "SCALE_UP" if green_ready => {
            next.stage = "PRODUCTION_TRAFFIC_SHIFT".into();
            next.green_weight = first.min(100.0);
            next.since = now;
        }
        "PRODUCTION_TRAFFIC_SHIFT" if s.green_weight < 100.0 && now - s.since >= wait => {
            next.green_weight = (s.green_weight + step).min(100.0);
            next.since = now;
        }
        "BAKE_TIME" if now - s.since >= bake => {
            next.stage = "CLEAN_UP".into();
            next.since = now;
        }
        _ => {}
    }
    if next.stage == "PRODUCTION_TRAFFIC_SHIFT" && next.green_weight >= 100.0 {
        next.stage = "BAKE_TIME".into();
        next.since = now;
    }
    next
}

/// Integer forward weights (blue, green) for a green share in percent.
pub fn weights(green_percent: f64) -> (i64, i64) {
    let green = green_percent.round().clamp(0.0, 100.0) as i64;
    (100 - green, green)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(strategy: &str, extra: serde_json::Value) -> DeploymentConfiguration {
        let mut v = serde_json::json!({"strategy": strategy});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn run(c: &DeploymentConfiguration, passes: &[(bool, f64)]) -> Vec<(String, f64)> {
        let mut s = TrafficShift::start("d", 0.0);
        passes
            .iter()
            .map(|(ready, now)| {
                s = advance(c, &s, *ready, *now);
                (s.stage.clone(), s.green_weight)
            })
            .collect()
    }

    #[test]
    fn blue_green_moves_everything_at_once_then_bakes() {
        let c = config("BLUE_GREEN", serde_json::json!({"bakeTimeInMinutes": 1}));
        let got = run(&c, &[(false, 1.0), (true, 2.0), (true, 30.0), (true, 62.0)]);
        assert_eq!(got[0], ("SCALE_UP".into(), 0.0), "waits for green");
        assert_eq!(got[1], ("BAKE_TIME".into(), 100.0));
        assert_eq!(got[2].0, "BAKE_TIME");
        assert_eq!(got[3].0, "CLEAN_UP");
    }

    #[test]
    fn linear_steps_and_canary_share_wait_their_bake_times() {
        let c = config(
            "LINEAR",
            serde_json::json!({"linearConfiguration": {"stepPercent": 25.0, "stepBakeTimeInMinutes": 1}}),
        );
        let got = run(
            &c,
            &[(true, 0.0), (true, 30.0), (true, 60.0), (true, 120.0), (true, 180.0)],
        );
        let w: Vec<f64> = got.iter().map(|g| g.1).collect();
        assert_eq!(w, vec![25.0, 25.0, 50.0, 75.0, 100.0]);
        assert_eq!(got[4].0, "BAKE_TIME");
        let c = config(
            "CANARY",
            serde_json::json!({"canaryConfiguration": {"canaryPercent": 10.0, "canaryBakeTimeInMinutes": 2}}),
        );
        let got = run(&c, &[(true, 0.0), (true, 119.0), (true, 120.0)]);
        assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), vec![10.0, 10.0, 100.0]);
        assert_eq!(weights(10.0), (90, 10));
        assert_eq!(weights(33.3), (67, 33));
    }

    #[test]
    fn settings_are_bounded() {
        assert!(validate(&config(
            "LINEAR",
            serde_json::json!({"linearConfiguration": {"stepPercent": 1.0}})
        ))
        .is_err());
        assert!(validate(&config(
            "CANARY",
            serde_json::json!({"canaryConfiguration": {"canaryPercent": 0.0}})
        ))
        .is_err());
        assert!(validate(&config("BLUE_GREEN", serde_json::json!({"bakeTimeInMinutes": 5000}))).is_err());
        assert!(validate(&config("ROLLING", serde_json::json!({"bakeTimeInMinutes": 5}))).is_err());
        assert!(validate(&config("SIDEWAYS", serde_json::json!({}))).is_err());
        assert!(validate(&config("BLUE_GREEN", serde_json::json!({"bakeTimeInMinutes": 5}))).is_ok());
    }
}
