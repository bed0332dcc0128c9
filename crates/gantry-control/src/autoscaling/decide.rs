//! Scaling decisions as pure functions: how much a step policy adjusts for a breach, what
//! capacity target tracking asks for, and what cooldowns allow. The controller feeds them the
//! alarms' states and the metrics; tests feed them numbers and a fake clock.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StepAdjustment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_interval_lower_bound: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_interval_upper_bound: Option<f64>,
    pub scaling_adjustment: i64,
}

/// The step a breach of `delta` (metric minus threshold) falls in: lower bound inclusive,
/// upper exclusive, a missing bound unbounded (as Application Auto Scaling defines them).
pub fn step_for(steps: &[StepAdjustment], delta: f64) -> Option<&StepAdjustment> {
    steps.iter().find(|s| {
        s.metric_interval_lower_bound.is_none_or(|l| delta >= l)
            && s.metric_interval_upper_bound.is_none_or(|u| delta < u)
    })
}

/// The capacity a step adjustment asks for.
pub fn adjusted(current: i64, adjustment_type: &str, adjustment: i64, min_magnitude: Option<i64>) -> i64 {
    match adjustment_type {
        "ExactCapacity" => adjustment,
        "PercentChangeInCapacity" => {
            let raw = current as f64 * adjustment as f64 / 100.0;
            // Rounded toward zero, but a change is at least one (and the minimum magnitude).
            let mut change = raw.trunc() as i64;
            if change == 0 && adjustment != 0 {
                change = adjustment.signum();
            }
            if let Some(m) = min_magnitude {
                if change.abs() < m {
                    change = m * change.signum();
                }
            }
            current + change
        }
        _ => current + adjustment,
    }
}

/// Target tracking's proportional answer: the capacity at which the metric would sit at the
/// target, if load spreads evenly.
pub fn tracked(current: i64, metric: f64, target: f64) -> i64 {
    if target <= 0.0 || current <= 0 {
        return current.max(1);
    }
    (current as f64 * metric / target).ceil() as i64
}

/// Scale-in is gradual: at most a tenth of the capacity (at least one task) at a time.
pub fn scaled_in(current: i64, proposed: i64) -> i64 {
    let step = ((current as f64) / 10.0).ceil().max(1.0) as i64;
    proposed.max(current - step)
}

/// When a policy last scaled each way (ms).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cooldowns {
    #[serde(default)]
    pub scale_out: Option<i64>,
    #[serde(default)]
    pub scale_in: Option<i64>,
}

impl Cooldowns {
    /// Whether a scale-out's cooldown is running. Target tracking scales out again within it
    /// only once the previous scale-out took effect (every task it asked for is running), so
    /// capacity still starting is never multiplied again.
    pub fn scaling_out(&self, now_ms: i64, out_s: i64) -> bool {
        self.scale_out.is_some_and(|at| now_ms < at + out_s * 1000)
    }

    /// Scale-in waits out both cooldowns (a scale-out's too, as AWS does).
    pub fn scale_in_allowed(&self, now_ms: i64, in_s: i64, out_s: i64) -> bool {
        self.scale_in.is_none_or(|at| now_ms >= at + in_s * 1000) && !self.scaling_out(now_ms, out_s)
    }
}

/// Keeps a capacity within the target's bounds.
pub fn clamp(capacity: i64, min: i64, max: i64) -> i64 {
    capacity.max(min).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(lo: Option<f64>, hi: Option<f64>, adj: i64) -> StepAdjustment {
        StepAdjustment {
            metric_interval_lower_bound: lo,
            metric_interval_upper_bound: hi,
            scaling_adjustment: adj,
        }
    }

    #[test]
    fn steps_and_adjustments() {
        let steps = [step(Some(0.0), Some(10.0), 1), step(Some(10.0), None, 3)];
        assert_eq!(step_for(&steps, 0.0).unwrap().scaling_adjustment, 1);
        assert_eq!(step_for(&steps, 9.9).unwrap().scaling_adjustment, 1);
        assert_eq!(step_for(&steps, 10.0).unwrap().scaling_adjustment, 3);
        assert!(step_for(&steps, -1.0).is_none());
        assert_eq!(adjusted(4, "ChangeInCapacity", 3, None), 7);
        assert_eq!(adjusted(4, "ExactCapacity", 2, None), 2);
        assert_eq!(adjusted(10, "PercentChangeInCapacity", 25, None), 12);
        assert_eq!(adjusted(3, "PercentChangeInCapacity", 10, None), 4);
        assert_eq!(adjusted(10, "PercentChangeInCapacity", 10, Some(3)), 13);
        assert_eq!(adjusted(10, "PercentChangeInCapacity", -50, None), 5);
    }

    #[test]
    fn tracking_and_gradual_scale_in() {
        assert_eq!(tracked(2, 100.0, 50.0), 4);
        assert_eq!(tracked(3, 50.0, 50.0), 3);
        assert_eq!(tracked(4, 10.0, 50.0), 1);
        assert_eq!(scaled_in(20, 5), 18);
        assert_eq!(scaled_in(4, 1), 3);
        assert_eq!(clamp(0, 1, 5), 1);
        assert_eq!(clamp(9, 1, 5), 5);
    }

    #[test]
    fn cooldowns() {
        let mut c = Cooldowns::default();
        assert!(!c.scaling_out(0, 60) && c.scale_in_allowed(0, 60, 60));
        c.scale_out = Some(1_000);
        assert!(c.scaling_out(30_000, 60));
        assert!(!c.scale_in_allowed(30_000, 0, 60));
        assert!(c.scale_in_allowed(61_000, 0, 60));
        c.scale_in = Some(61_000);
        assert!(!c.scale_in_allowed(100_000, 60, 60));
    }
}
