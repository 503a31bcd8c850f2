//! Helpers shared by the data crate's test files.

use data::pose::{Instance, InstanceKind, LabeledFrame, Labels, Skeleton, Video};

/// Labels on one video with a one-node skeleton: one user instance with its point at `point`
/// on each of `frames`.
pub fn one_node_labels(video: Video, frames: &[u64], point: [f64; 2]) -> Labels {
    Labels {
        skeletons: vec![Skeleton {
            name: "s".into(),
            nodes: vec!["a".into()],
            edges: vec![],
            symmetries: vec![],
        }],
        videos: vec![video],
        frames: frames
            .iter()
            .map(|&frame_idx| LabeledFrame {
                video: 0,
                frame_idx,
                instances: vec![Instance {
                    skeleton: 0,
                    points: vec![point],
                    point_scores: vec![],
                    kind: InstanceKind::User,
                    track: None,
                    tracking_score: 0.0,
                }],
            })
            .collect(),
        tracks: vec![],
    }
}
