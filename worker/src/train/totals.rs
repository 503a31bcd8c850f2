//! What every rank adds up over an optimizer step besides its gradients. The values travel in
//! the same all-reduce as the gradients (appended after them), so one collective per step also
//! yields their global means.

/// One rank's sums over the micro-batches of an optimizer step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTotals {
    /// Sum of the per-target losses (masked genes, next tokens, masked values).
    pub loss_sum: f64,
    /// Number of targets the loss sum covers.
    pub targets: f64,
    pub cells: f64,
    /// Non-padding tokens.
    pub tokens: f64,
    /// 1 when this rank was asked to checkpoint and stop: after the mean, > 0 means some rank
    /// was, so every rank stops after the same step, whichever one heard first.
    pub stop_vote: f64,
}

impl StepTotals {
    /// Values on the wire, in this order.
    pub const LEN: usize = 5;

    pub fn to_wire(&self) -> [f32; Self::LEN] {
        [
            self.loss_sum as f32,
            self.targets as f32,
            self.cells as f32,
            self.tokens as f32,
            self.stop_vote as f32,
        ]
    }

    /// The totals as they came back (per-rank means after an all-reduce).
    pub fn from_wire(w: &[f32; Self::LEN]) -> Self {
        StepTotals {
            loss_sum: w[0] as f64,
            targets: w[1] as f64,
            cells: w[2] as f64,
            tokens: w[3] as f64,
            stop_vote: w[4] as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_keeps_counts_exact() {
        let t = StepTotals {
            loss_sum: 1234.5,
            targets: 16_000_000.0,
            cells: 64.0,
            tokens: 4096.0,
            stop_vote: 1.0,
        };
        assert_eq!(StepTotals::from_wire(&t.to_wire()), t);
        assert_eq!(t.to_wire()[4], 1.0, "the vote is the last value");
    }
}
