//! Learning-rate schedules (`training.scheduler`), as a factor of `optimizer.lr` per optimizer
//! step. Step `s` counts optimizer steps from 0; warmup ramps linearly to the full rate at the
//! end of step `warmup_steps - 1` (so the first step already trains, unlike a ramp from 0).
//!
//! - `cosine_warmup`: linear warmup, then half a cosine from 1 to 0 over the remaining
//!   `total_steps - warmup_steps` steps;
//! - `cosine`: half a cosine from 1 to 0 over `total_steps` (no warmup);
//! - `linear`: linear warmup, then linear decay to 0 at `total_steps`;
//! - no scheduler (`scheduler: null`): constant.
//!
//! After `total_steps` the factor stays at 0 for the decaying schedules: as configured, the
//! run has used up its schedule.

use configs::scmodelforge::{SchedulerConfig, SchedulerName};

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub base_lr: f64,
    pub cfg: Option<SchedulerConfig>,
}

impl Schedule {
    pub fn new(base_lr: f64, cfg: Option<SchedulerConfig>) -> Self {
        Schedule { base_lr, cfg }
    }

    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }

    pub fn factor(&self, step: u64) -> f64 {
        let Some(c) = &self.cfg else {
            return 1.0;
        };
        let s = step as f64;
        let (warm, total) = (c.warmup_steps as f64, c.total_steps as f64);
        let warmup = |s: f64| ((s + 1.0) / warm).min(1.0);
        match c.name {
            SchedulerName::CosineWarmup => {
                if s < warm {
                    warmup(s)
                } else {
                    let span = (total - warm).max(1.0);
                    let prog = ((s - warm) / span).clamp(0.0, 1.0);
                    0.5 * (1.0 + (std::f64::consts::PI * prog).cos())
                }
            }
            SchedulerName::Cosine => {
                let prog = (s / total.max(1.0)).clamp(0.0, 1.0);
                0.5 * (1.0 + (std::f64::consts::PI * prog).cos())
            }
            SchedulerName::Linear => {
                if s < warm {
                    warmup(s)
                } else {
                    let span = (total - warm).max(1.0);
                    (1.0 - (s - warm) / span).clamp(0.0, 1.0)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(name: SchedulerName, w: usize, t: usize) -> Schedule {
        Schedule::new(
            1.0,
            Some(SchedulerConfig {
                name,
                warmup_steps: w,
                total_steps: t,
            }),
        )
    }

    #[test]
    fn shapes() {
        let s = sched(SchedulerName::CosineWarmup, 10, 110);
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.5).abs() < 1e-12);
        assert!(s.lr(110).abs() < 1e-12);
        assert!(s.lr(500).abs() < 1e-12);
        let s = sched(SchedulerName::Cosine, 10, 100);
        assert!((s.lr(0) - 1.0).abs() < 1e-12);
        assert!((s.lr(50) - 0.5).abs() < 1e-12);
        let s = sched(SchedulerName::Linear, 0, 100);
        assert!((s.lr(25) - 0.75).abs() < 1e-12);
        assert!(s.lr(100).abs() < 1e-12);
        assert_eq!(Schedule::new(0.3, None).lr(12345), 0.3);
    }
}
