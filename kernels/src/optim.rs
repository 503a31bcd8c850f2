//! What the trainer's optimizer step needs beyond the [`Device`] methods: Adam(W)
//! hyper-parameters and dynamic loss scaling.

use crate::backend::Device;
use crate::Float;

pub use crate::ops::optim::AdamConfig;

/// Dynamic loss scaling for "16-mixed" (torch.amp.GradScaler semantics): the loss is
/// multiplied by `scale` before backward; after it, gradients are checked and unscaled. A step
/// with a non-finite gradient is skipped and the scale backs off; `growth_interval` clean steps
/// in a row grow it. `scale` and `good_steps` are the state a checkpoint keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u64,
    /// Clean steps in a row since the scale last changed.
    pub good_steps: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            good_steps: 0,
        }
    }
}

impl LossScaler {
    /// After a step's gradients were checked: on overflow (`found_finite` false) the scale
    /// backs off and the count restarts; otherwise the clean step is counted and every
    /// `growth_interval`-th in a row grows the scale.
    pub fn update(&mut self, found_finite: bool) {
        if found_finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.good_steps = 0;
            }
        } else {
            self.scale *= self.backoff_factor;
            self.good_steps = 0;
        }
    }

    /// Checks `grads` and, when every element is finite, unscales them in place with one
    /// multiply by `1/(scale·divisor)` (rounded to T once; `divisor` is e.g. the number of
    /// targets the loss was summed over; with `divisor` ≤ 0 the gradients are left as they
    /// are), then [`update`](Self::update)s. Returns false when the gradients held inf/NaN: the
    /// caller skips the optimizer step (the gradients are then meaningless).
    pub fn unscale_and_update<T: Float, D: Device<T>>(
        &mut self,
        dev: &D,
        grads: &mut D::Mem,
        divisor: f64,
    ) -> bool {
        let finite = dev.all_finite(grads);
        if finite && divisor > 0.0 {
            dev.scale(grads, 1.0 / (self.scale * divisor));
        }
        self.update(finite);
        finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;

    #[test]
    fn loss_scaler_skips_overflow_and_grows() {
        let mut s = LossScaler {
            growth_interval: 2,
            ..Default::default()
        };
        let mut g = vec![65536.0f32, -131072.0];
        assert!(s.unscale_and_update(&Cpu, &mut g, 1.0));
        assert_eq!(g, vec![1.0, -2.0]);
        let mut g = vec![1.0f32, f32::INFINITY];
        assert!(!s.unscale_and_update(&Cpu, &mut g, 1.0));
        assert_eq!(s.scale, 32768.0);
        let mut g = vec![f32::NAN];
        assert!(!s.unscale_and_update(&Cpu, &mut g, 1.0));
        assert_eq!(s.scale, 16384.0);
        assert!(s.unscale_and_update(&Cpu, &mut vec![0.0f32], 1.0));
        assert!(s.unscale_and_update(&Cpu, &mut vec![0.0f32], 1.0));
        assert_eq!(s.scale, 32768.0);
    }

    #[test]
    fn unscale_is_the_trainers_single_multiply() {
        // The trainer's arithmetic: f = (1/(loss_scale·count)) as f32, then g·f per element.
        let g0: Vec<f32> = (0..70_000).map(|i| (i as f32 - 35_000.5) * 0.37).collect();
        let (scale, count) = (1024.0f64, 37.0f64);
        let f = (1.0 / (scale * count)) as f32;
        let want: Vec<f32> = g0.iter().map(|&x| x * f).collect();
        let mut s = LossScaler {
            scale,
            ..Default::default()
        };
        let mut g = g0.clone();
        assert!(s.unscale_and_update(&Cpu, &mut g, count));
        assert!(g.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!((s.scale, s.good_steps), (scale, 1));
        // No targets: nothing to divide by, the gradients stay as they are.
        let mut g = g0.clone();
        assert!(s.unscale_and_update(&Cpu, &mut g, 0.0));
        assert_eq!(g, g0);
    }

    #[test]
    fn update_backs_off_and_grows() {
        let mut s = LossScaler {
            scale: 8.0,
            growth_interval: 3,
            ..Default::default()
        };
        s.update(true);
        s.update(true);
        assert_eq!((s.scale, s.good_steps), (8.0, 2));
        s.update(false);
        assert_eq!((s.scale, s.good_steps), (4.0, 0));
        for _ in 0..3 {
            s.update(true);
        }
        assert_eq!((s.scale, s.good_steps), (8.0, 0));
    }
}
