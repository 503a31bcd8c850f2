//! Training samples from the real minimal_instance.pkg.slp: inputs at the frame's size, target
//! maps peaking on the labeled points, for each head kind.

use std::path::PathBuf;

use data::pose::augment::Augmenter;
use data::pose::dataset::{split, HeadTargets, PoseDataset, PoseSpec};
use data::pose::frame::Preprocess;
use data::pose::slp::read_labels;
use data::pose::targets::CentroidRule;

fn minimal() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/minimal_instance.pkg.slp"
    ))
}

fn spec(head: HeadTargets, stride: usize) -> PoseSpec {
    PoseSpec {
        head,
        sigma: 2.5,
        output_stride: stride,
        preprocess: Preprocess {
            ensure_rgb: false,
            ensure_grayscale: false,
            max_height: None,
            max_width: None,
            scale: 1.0,
            pad_to: 16,
        },
        augment: None,
        user_instances_only: true,
        seed: 42,
        cache_frames: false,
    }
}

/// Grid cell of the maximum of map `k` of sample 0.
fn argmax(maps: &[f32], k: usize, gh: usize, gw: usize) -> (usize, usize, f32) {
    let m = &maps[k * gh * gw..(k + 1) * gh * gw];
    let (i, v) = m
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
    (i % gw, i / gw, v)
}

#[test]
fn single_instance_targets_peak_on_the_first_instance() {
    let labels = read_labels(&minimal()).unwrap();
    let pts = labels.frames[0].instances[0].points.clone();
    let ds = PoseDataset::open(
        &[minimal()],
        spec(HeadTargets::SingleInstance { nodes: vec![0, 1] }, 2),
    )
    .unwrap();
    assert_eq!(ds.items().len(), 1);
    let b = ds.batch(ds.items(), &[0], None).unwrap();
    assert_eq!((b.n, b.channels, b.height, b.width), (1, 1, 384, 384));
    assert_eq!((b.maps, b.map_height, b.map_width), (2, 192, 192));
    for (k, p) in pts.iter().enumerate() {
        let (x, y, v) = argmax(&b.targets, k, 192, 192);
        assert!(
            ((x * 2) as f64 - p[0]).abs() <= 1.0 && ((y * 2) as f64 - p[1]).abs() <= 1.0,
            "node {k}: peak ({x},{y}) vs {p:?}"
        );
        assert!(v > 0.9);
    }
    let mean = b.images.iter().map(|&v| v as f64).sum::<f64>() / b.images.len() as f64;
    assert!(mean > 0.0 && mean < 1.0);
}

#[test]
fn centroid_targets_have_one_peak_per_instance() {
    let ds = PoseDataset::open(
        &[minimal()],
        spec(
            HeadTargets::Centroid {
                rule: CentroidRule::CenterOfMass,
            },
            4,
        ),
    )
    .unwrap();
    let b = ds.batch(ds.items(), &[0], None).unwrap();
    assert_eq!(b.maps, 1);
    let labels = read_labels(&minimal()).unwrap();
    for inst in &labels.frames[0].instances {
        let c = [
            (inst.points[0][0] + inst.points[1][0]) / 2.0,
            (inst.points[0][1] + inst.points[1][1]) / 2.0,
        ];
        let (gx, gy) = ((c[0] / 4.0).round() as usize, (c[1] / 4.0).round() as usize);
        assert!(b.targets[gy * 96 + gx] > 0.8, "centroid {c:?}");
    }
}

#[test]
fn centered_instance_samples_are_crops_around_each_instance() {
    let head = HeadTargets::CenteredInstance {
        nodes: vec![0, 1],
        rule: CentroidRule::CenterOfMass,
        crop: 96,
    };
    let ds = PoseDataset::open(&[minimal()], spec(head, 1)).unwrap();
    assert_eq!(ds.items().len(), 2, "one sample per instance");
    let b = ds.batch(ds.items(), &[0, 1], None).unwrap();
    assert_eq!((b.n, b.height, b.width, b.maps), (2, 96, 96, 2));
    // Each crop's two node peaks straddle its centre.
    for s in 0..2 {
        let maps = &b.targets[s * 2 * 96 * 96..(s + 1) * 2 * 96 * 96];
        let (x0, y0, _) = argmax(maps, 0, 96, 96);
        let (x1, y1, _) = argmax(maps, 1, 96, 96);
        let mid = ((x0 + x1) as f64 / 2.0, (y0 + y1) as f64 / 2.0);
        assert!(
            (mid.0 - 48.0).abs() <= 1.5 && (mid.1 - 48.0).abs() <= 1.5,
            "sample {s}: {mid:?}"
        );
    }
}

#[test]
fn augmented_samples_differ_by_epoch_and_repeat_by_key() {
    let mut sp = spec(HeadTargets::SingleInstance { nodes: vec![0, 1] }, 2);
    sp.augment = Some(Augmenter {
        intensity: None,
        geometric: Some(Default::default()),
        symmetries: vec![],
    });
    let ds = PoseDataset::open(&[minimal()], sp).unwrap();
    let a = ds.batch(ds.items(), &[0], Some(0)).unwrap();
    let again = ds.batch(ds.items(), &[0], Some(0)).unwrap();
    let other = ds.batch(ds.items(), &[0], Some(1)).unwrap();
    assert_eq!(a, again);
    assert_ne!(a.targets, other.targets);
}

#[test]
fn split_keeps_a_fraction_of_frames_for_validation() {
    use data::pose::dataset::Item;
    let items: Vec<Item> = (0..20)
        .map(|f| Item {
            source: 0,
            frame: f,
            instance: 0,
        })
        .collect();
    let (train, val) = split(&items, 0.1, 42);
    assert_eq!((train.len(), val.len()), (18, 2));
    let (t2, v2) = split(&items, 0.1, 42);
    assert_eq!((train, val.clone()), (t2, v2));
    let (_, v3) = split(&items, 0.1, 7);
    assert_ne!(val, v3);
}

#[test]
fn caching_frames_in_memory_gives_the_same_samples() {
    let mut sp = spec(HeadTargets::SingleInstance { nodes: vec![0, 1] }, 2);
    sp.augment = Some(Augmenter {
        intensity: None,
        geometric: Some(Default::default()),
        symmetries: vec![],
    });
    let plain = PoseDataset::open(&[minimal()], sp.clone()).unwrap();
    sp.cache_frames = true;
    let cached = PoseDataset::open(&[minimal()], sp).unwrap();
    for epoch in 0..3 {
        let a = plain.batch(plain.items(), &[0], Some(epoch)).unwrap();
        let b = cached.batch(cached.items(), &[0], Some(epoch)).unwrap();
        assert_eq!(a, b, "epoch {epoch}");
    }
}
