//! Write predictions derived from a labels file, for checking with sleap-io that anvil's
//! `.slp` writer produces files it opens (scripts/check_slp_written.py).
//!
//! `cargo run -p data --example slp_predictions -- SOURCE.slp OUT.slp`
//!
//! Every user instance k of each frame gets a predicted twin: its points shifted by +0.5
//! pixel with the last node missing (NaN), node n scored 0.9 - 0.1 n, instance score
//! 0.8 - 0.1 k, track `track_{k % 2}`, tracking score 0.5.

use std::path::PathBuf;
use std::process::ExitCode;

use data::pose::slp::{read_labels, write_labels};
use data::pose::{Instance, InstanceKind};

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [source, out] = args.as_slice() else {
        eprintln!("usage: slp_predictions SOURCE.slp OUT.slp");
        return ExitCode::from(2);
    };
    let result = read_labels(source).and_then(|mut labels| {
        labels.tracks = vec!["track_0".into(), "track_1".into()];
        for frame in &mut labels.frames {
            let twins: Vec<Instance> = frame
                .user_instances()
                .enumerate()
                .map(|(k, inst)| {
                    let n = inst.points.len();
                    let points = inst
                        .points
                        .iter()
                        .enumerate()
                        .map(|(i, p)| {
                            if i + 1 == n {
                                [f64::NAN, f64::NAN]
                            } else {
                                [p[0] + 0.5, p[1] + 0.5]
                            }
                        })
                        .collect();
                    Instance {
                        skeleton: inst.skeleton,
                        points,
                        point_scores: (0..n).map(|i| 0.9 - 0.1 * i as f64).collect(),
                        kind: InstanceKind::Predicted {
                            score: 0.8 - 0.1 * k as f32,
                        },
                        track: Some(k % 2),
                        tracking_score: 0.5,
                    }
                })
                .collect();
            frame.instances.extend(twins);
        }
        write_labels(out, &labels)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
