//! The scaling decision, as KEDA and the HPA make it, as a pure function.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::manifest::Fallback;
use trustscale::scaler::MetricType;

/// The scaling parameters of a ScaledObject.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingSpec {
    /// minReplicaCount.
    pub min: u32,
    /// maxReplicaCount.
    pub max: u32,
    /// idleReplicaCount.
    pub idle: Option<u32>,
    /// cooldownPeriod.
    pub cooldown: Duration,
    /// initialCooldownPeriod.
    pub initial_cooldown: Duration,
    /// fallback.
    pub fallback: Option<Fallback>,
}

/// One trigger's result in a poll round.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The trigger answered.
    Ok {
        /// Its metric value.
        value: f64,
        /// Its target.
        target: f64,
        /// How the target applies.
        metric_type: MetricType,
        /// Whether it is active.
        active: bool,
    },
    /// The trigger failed.
    Failed,
    /// The trigger cannot run (its configuration was refused): it takes no part in the
    /// decision, neither as demand nor as a failure.
    Unusable,
}

/// What the decision remembers between rounds.
#[derive(Clone, Debug)]
pub struct ScaleState {
    /// The replicas decided last (the "current" replicas when no cluster is scaled).
    pub replicas: u32,
    /// When a trigger was last active.
    pub last_active: Option<Instant>,
    /// Consecutive failures per trigger.
    pub failures: Vec<u32>,
    /// When the ScaledObject started.
    pub started: Instant,
}

impl ScaleState {
    /// State at start: `replicas` as given (KEDA starts from the target's current count).
    #[must_use]
    pub fn new(replicas: u32, triggers: usize, now: Instant) -> Self {
        ScaleState {
            replicas,
            last_active: None,
            failures: vec![0; triggers],
            started: now,
        }
    }
}

/// A decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Desired replicas.
    pub replicas: u32,
    /// Whether the ScaledObject is active.
    pub active: bool,
    /// Why, in a few words.
    pub reason: String,
    /// Whether a trigger failed this round (KEDA's `isError`: never a reason to scale in).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failing: bool,
    /// Whether a trigger has failed `fallback.failureThreshold` times in a row.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
}

fn per_trigger(value: f64, target: f64, metric_type: MetricType, current: u32) -> u32 {
    if target <= 0.0 {
        return u32::MAX;
    }
    let want = match metric_type {
        MetricType::AverageValue => value / target,
        MetricType::Value => f64::from(current.max(1)) * value / target,
    };
    want.ceil().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// Decides the replicas for one round and updates `state`.
pub fn decide(
    spec: &ScalingSpec,
    state: &mut ScaleState,
    outcomes: &[Outcome],
    now: Instant,
) -> Decision {
    state.failures.resize(outcomes.len(), 0);
    for (count, outcome) in state.failures.iter_mut().zip(outcomes) {
        *count = match outcome {
            Outcome::Failed => count.saturating_add(1),
            Outcome::Ok { .. } | Outcome::Unusable => 0,
        };
    }
    let floor = spec.min.max(1).min(spec.max.max(1));
    let failing = outcomes.iter().any(|o| matches!(o, Outcome::Failed));
    let active = outcomes
        .iter()
        .any(|o| matches!(o, Outcome::Ok { active: true, .. }));
    let ok: Vec<u32> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Ok {
                value,
                target,
                metric_type,
                ..
            } => Some(per_trigger(*value, *target, *metric_type, state.replicas)),
            Outcome::Failed | Outcome::Unusable => None,
        })
        .collect();

    if let Some(fb) = spec.fallback
        && state
            .failures
            .iter()
            .any(|f| *f >= fb.failure_threshold.max(1))
    {
        state.replicas = fb.replicas;
        return Decision {
            replicas: fb.replicas,
            active,
            reason: format!(
                "fallback: a trigger failed {} times in a row",
                fb.failure_threshold
            ),
            failing,
            fallback: true,
        };
    }
    if failing && !active {
        // As KEDA: a failure is never a reason to scale in (nor, alone, to scale out).
        return Decision {
            replicas: state.replicas,
            active: false,
            reason: "a trigger failed and none is active; keeping the current replicas".into(),
            failing,
            fallback: false,
        };
    }
    let hpa = ok
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .clamp(floor, spec.max.max(floor));
    let decision = if active {
        state.last_active = Some(now);
        Decision {
            replicas: hpa,
            active: true,
            reason: "active: the largest trigger demand, within min/max".into(),
            failing,
            fallback: false,
        }
    } else {
        let since_active = state.last_active.map(|t| now.duration_since(t));
        let in_cooldown = match since_active {
            Some(d) => d < spec.cooldown,
            None => now.duration_since(state.started) < spec.initial_cooldown,
        };
        // KEDA's "idle or minimum": idleReplicaCount (below minReplicaCount) when set,
        // else minReplicaCount; with neither below the HPA's floor there is no scale-in.
        let rest = spec.idle.unwrap_or(spec.min);
        let inactive = |replicas: u32, reason: &str| Decision {
            replicas,
            active: false,
            reason: reason.into(),
            failing,
            fallback: false,
        };
        if spec.idle.is_none() && spec.min > 0 {
            inactive(hpa, "inactive; minReplicaCount keeps replicas")
        } else if in_cooldown && state.replicas > rest {
            inactive(hpa, "inactive, in cooldown")
        } else if rest > 0 {
            inactive(rest, "inactive past cooldown: idleReplicaCount")
        } else {
            inactive(0, "inactive past cooldown: scaled to zero")
        }
    };
    state.replicas = decision.replicas;
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ScalingSpec {
        ScalingSpec {
            min: 0,
            max: 10,
            idle: None,
            cooldown: Duration::from_secs(300),
            initial_cooldown: Duration::ZERO,
            fallback: None,
        }
    }

    fn ok(value: f64, target: f64, active: bool) -> Outcome {
        Outcome::Ok {
            value,
            target,
            metric_type: MetricType::AverageValue,
            active,
        }
    }

    #[test]
    fn the_decision_formula() {
        let t0 = Instant::now();
        let cases: [(&str, Vec<Outcome>, u32); 7] = [
            ("ceil(value / target)", vec![ok(25.0, 10.0, true)], 3),
            (
                "the largest trigger wins",
                vec![ok(25.0, 10.0, true), ok(70.0, 10.0, true)],
                7,
            ),
            ("clamped to max", vec![ok(500.0, 10.0, true)], 10),
            (
                "at least one replica while active",
                vec![ok(0.5, 10.0, true)],
                1,
            ),
            (
                "one active trigger makes it active",
                vec![ok(0.0, 10.0, false), ok(1.0, 10.0, true)],
                1,
            ),
            (
                "a failing trigger is left out",
                vec![Outcome::Failed, ok(30.0, 10.0, true)],
                3,
            ),
            (
                "Value metric scales with the current replicas",
                vec![Outcome::Ok {
                    value: 30.0,
                    target: 10.0,
                    metric_type: MetricType::Value,
                    active: true,
                }],
                6,
            ),
        ];
        for (name, outcomes, want) in cases {
            let mut state = ScaleState::new(2, outcomes.len(), t0);
            assert_eq!(
                decide(&spec(), &mut state, &outcomes, t0).replicas,
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn scale_to_zero_waits_for_the_cooldown() {
        let t0 = Instant::now();
        let s = spec();
        let mut state = ScaleState::new(0, 1, t0);
        assert_eq!(
            decide(&s, &mut state, &[ok(5.0, 10.0, true)], t0).replicas,
            1
        );
        let inactive = [ok(0.0, 10.0, false)];
        let d = decide(&s, &mut state, &inactive, t0 + Duration::from_secs(100));
        assert_eq!((d.replicas, d.active), (1, false), "still in cooldown");
        let d = decide(&s, &mut state, &inactive, t0 + Duration::from_secs(301));
        assert_eq!(d.replicas, 0, "past cooldown: zero");
        // idleReplicaCount (below minReplicaCount, as KEDA requires) after the cooldown.
        let mut idle = s.clone();
        idle.min = 3;
        idle.idle = Some(1);
        let mut state = ScaleState::new(3, 1, t0);
        state.last_active = Some(t0);
        assert_eq!(
            decide(&idle, &mut state, &inactive, t0 + Duration::from_secs(100)).replicas,
            3,
            "idle waits for the cooldown too"
        );
        assert_eq!(
            decide(&idle, &mut state, &inactive, t0 + Duration::from_secs(400)).replicas,
            1
        );
        let mut min = s.clone();
        min.min = 2;
        let mut state = ScaleState::new(5, 1, t0);
        assert_eq!(
            decide(&min, &mut state, &inactive, t0 + Duration::from_secs(900)).replicas,
            2,
            "minReplicaCount holds"
        );
    }

    #[test]
    fn the_initial_cooldown_delays_the_first_scale_to_zero() {
        let t0 = Instant::now();
        let mut s = spec();
        s.initial_cooldown = Duration::from_secs(60);
        let mut state = ScaleState::new(3, 1, t0);
        let inactive = [ok(0.0, 10.0, false)];
        assert_eq!(
            decide(&s, &mut state, &inactive, t0 + Duration::from_secs(10)).replicas,
            1
        );
        assert_eq!(
            decide(&s, &mut state, &inactive, t0 + Duration::from_secs(61)).replicas,
            0
        );
    }

    #[test]
    fn fallback_after_the_failure_threshold() {
        let t0 = Instant::now();
        let mut s = spec();
        s.fallback = Some(Fallback {
            failure_threshold: 3,
            replicas: 6,
        });
        let mut state = ScaleState::new(2, 2, t0);
        let failing = [Outcome::Failed, ok(10.0, 10.0, true)];
        assert_eq!(decide(&s, &mut state, &failing, t0).replicas, 1);
        assert_eq!(decide(&s, &mut state, &failing, t0).replicas, 1);
        let d = decide(&s, &mut state, &failing, t0);
        assert_eq!(d.replicas, 6, "third failure in a row: fallback");
        assert!(d.reason.contains("fallback"));
        assert_eq!(
            decide(
                &s,
                &mut state,
                &[ok(20.0, 10.0, true), ok(10.0, 10.0, true)],
                t0
            )
            .replicas,
            2,
            "recovered"
        );
        let mut state = ScaleState::new(4, 1, t0);
        let d = decide(&spec(), &mut state, &[Outcome::Failed], t0);
        assert_eq!(
            d.replicas, 4,
            "no fallback configured: errors keep the current replicas"
        );
        assert!(!d.active && d.failing);
        // A failing trigger beside an inactive one: no scale-in past the cooldown.
        let mut state = ScaleState::new(4, 2, t0);
        let d = decide(
            &spec(),
            &mut state,
            &[Outcome::Failed, ok(0.0, 10.0, false)],
            t0 + Duration::from_secs(1000),
        );
        assert_eq!(d.replicas, 4);
    }
}
