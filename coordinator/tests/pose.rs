//! Pose models end to end with the real binaries on the bundled minimal_instance.pkg.slp:
//! `coordinator launch` trains a single-instance UNet on two workers, `coordinator track`
//! predicts, `coordinator eval` scores the predictions within 2 px of the labels; the loss
//! curve does not depend on the number of workers; a run stopped part-way and resumed ends with
//! the parameters of the uninterrupted run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{describe, repo, scratch, worker_bin};

fn labels() -> PathBuf {
    repo().join("data/minimal_instance.pkg.slp")
}

/// A small, fast single-instance run: 8 filters, half-size frames, no augmentation unless
/// `augment`, `steps` = epochs x 25.
fn small(epochs: usize, augment: bool) -> Vec<String> {
    let mut v: Vec<String> = [
        "model_config.backbone_config.unet.filters=8",
        "data_config.preprocessing.scale=0.5",
        "trainer_config.optimizer.lr=0.002",
        "trainer_config.min_train_steps_per_epoch=25",
        "trainer_config.early_stopping=null",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("trainer_config.max_epochs={epochs}"));
    v.push(format!(
        "data_config.train_labels_path=[{}]",
        labels().display()
    ));
    v.push(format!("data_config.use_augmentations_train={augment}"));
    v
}

fn launch(dir: &Path, nodes: usize, sets: &[String], extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.arg("launch")
        .args(["--nodes", &nodes.to_string()])
        .arg("--config")
        .arg(repo().join("configs/sleap_single_instance.yaml"))
        .arg("--run-dir")
        .arg(dir)
        .arg("--worker-bin")
        .arg(worker_bin())
        .args(extra);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.output().unwrap()
}

/// train/loss per step from the run's metrics.csv.
fn losses(dir: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join("version_0/metrics.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|c| *c == "train/loss").unwrap();
    lines
        .filter_map(|l| l.split(',').nth(col).and_then(|v| v.parse().ok()))
        .collect()
}

/// The parameter hash the coordinator reports at the end of a run.
fn params_hash(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find_map(|l| {
            l.split("(sha256 ")
                .nth(1)
                .map(|h| h.trim_end_matches(')').to_string())
        })
        .unwrap_or_else(|| panic!("no parameter hash in:\n{err}"))
}

#[test]
fn single_instance_trains_on_two_workers_and_finds_the_keypoints() {
    let dir = scratch("pose", "e2e");
    let run = dir.join("run");
    let out = launch(&run, 2, &small(6, false), &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("frames/s"), "{err}");
    assert!(run.join("checkpoints/best/model.safetensors").exists());
    let l = losses(&run);
    assert_eq!(l.len(), 150);
    assert!(l[149] < l[0] / 5.0, "loss {} -> {}", l[0], l[149]);

    let pred = dir.join("predictions.slp");
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["track", "--model"])
        .arg(&run)
        .arg("--data")
        .arg(labels())
        .arg("--output")
        .arg(&pred)
        .arg("--worker-bin")
        .arg(worker_bin())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));

    let evals = dir.join("eval");
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["eval", "--ground-truth"])
        .arg(labels())
        .arg("--predictions")
        .arg(&pred)
        .arg("--output")
        .arg(&evals)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(evals.join("metrics.json")).unwrap())
            .unwrap();
    // A single-instance model predicts one of the frame's two animals: the first one, which
    // it was trained on.
    let avg = m["distance_metrics"]["avg"].as_f64().unwrap_or(f64::NAN);
    assert!(avg < 2.0, "mean keypoint error {avg} px; metrics: {m}");
    assert!(evals.join("metrics.md").exists());
    assert!(String::from_utf8_lossy(&out.stdout).contains("mOKS"));
}

#[test]
fn the_loss_curve_does_not_depend_on_the_number_of_workers() {
    let dir = scratch("pose", "world");
    // With augmentation on: each sample's draw is keyed by its global position, so one worker
    // with batch 2 and two with batch 1 see the same augmented samples.
    let mut one = small(1, true);
    one.push("trainer_config.train_data_loader.batch_size=2".into());
    let out = launch(&dir.join("one"), 1, &one, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let mut two = small(1, true);
    two.push("trainer_config.train_data_loader.batch_size=1".into());
    let out = launch(&dir.join("two"), 2, &two, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let (a, b) = (losses(&dir.join("one")), losses(&dir.join("two")));
    assert_eq!(a.len(), 25);
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-3 * x.abs().max(1e-6),
            "step {}: {x} vs {y}",
            i + 1
        );
    }
}

#[test]
fn a_resumed_run_ends_with_the_parameters_of_an_uninterrupted_one() {
    let dir = scratch("pose", "resume");
    // A plateau scheduler that halves the rate after every epoch (no improvement can beat a
    // threshold of 1): its state must survive the restart for the parameters to agree.
    let mut sets = small(3, true);
    sets.extend(
        [
            "trainer_config.lr_scheduler.reduce_lr_on_plateau.threshold=1.0",
            "trainer_config.lr_scheduler.reduce_lr_on_plateau.patience=0",
            "trainer_config.lr_scheduler.reduce_lr_on_plateau.cooldown=0",
        ]
        .map(String::from),
    );
    let whole = launch(&dir.join("whole"), 1, &sets, &[]);
    assert!(whole.status.success(), "{}", describe(&whole));
    // Stopped inside the second epoch, then resumed to the end.
    let part = dir.join("part");
    let first = launch(&part, 1, &sets, &["--max-steps", "35"]);
    assert!(first.status.success(), "{}", describe(&first));
    let resumed = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("launch")
        .arg("--resume")
        .arg(&part)
        .arg("--worker-bin")
        .arg(worker_bin())
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", describe(&resumed));
    let said = String::from_utf8_lossy(&resumed.stderr);
    assert!(said.contains("resumed from"), "{said}");
    assert_eq!(params_hash(&whole), params_hash(&resumed));
}

#[test]
fn a_field_anvil_cannot_train_with_is_refused_by_name() {
    let dir = scratch("pose", "refuse");
    let mut sets = small(1, false);
    sets.push("trainer_config.optimizer.amsgrad=true".into());
    let out = launch(&dir.join("run"), 1, &sets, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trainer_config.optimizer.amsgrad"), "{err}");
}

/// `worker train` on the single-instance config with `small(epochs)` and `more` overrides.
fn train_alone(run: &Path, epochs: usize, more: &[&str]) -> Output {
    let mut cmd = Command::new(worker_bin());
    cmd.arg("train")
        .arg("--config")
        .arg(repo().join("configs/sleap_single_instance.yaml"))
        .arg("--run-dir")
        .arg(run);
    for s in small(epochs, false)
        .iter()
        .map(String::as_str)
        .chain(more.iter().copied())
    {
        cmd.args(["--set", s]);
    }
    cmd.output().unwrap()
}

#[test]
fn evaluation_and_pictures_during_training() {
    let run = scratch("pose", "extras").join("run");
    let out = train_alone(
        &run,
        3,
        &[
            "trainer_config.eval.enabled=true",
            "trainer_config.model_ckpt.monitor=eval/val/mOKS",
            "trainer_config.model_ckpt.mode=max",
            "trainer_config.visualize_preds_during_training=true",
            "trainer_config.keep_viz=true",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("evaluation: eval/val/PCK_10"), "{err}");
    let csv = std::fs::read_to_string(run.join("version_0/metrics.csv")).unwrap();
    assert!(
        csv.lines().next().unwrap().contains("eval/val/mOKS"),
        "{csv}"
    );
    for name in ["train.0000.png", "validation.0002.png"] {
        let bytes = std::fs::read(run.join("viz").join(name)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{name}");
    }
    // The best checkpoint is ranked by the monitored evaluation metric (an OKS in [0, 1]).
    let state = std::fs::read_to_string(run.join("checkpoints/best/state.json"))
        .unwrap_or_else(|e| panic!("no best checkpoint ({e}):\n{err}"));
    let s: serde_json::Value = serde_json::from_str(&state).unwrap();
    let best = s["metrics"]["best"][0][0].as_f64();
    assert!(best.is_some_and(|v| (0.0..=1.0).contains(&v)), "{state}");
}

#[test]
fn hard_keypoint_mining_trains_and_adds_to_the_loss() {
    let dir = scratch("pose", "ohkm");
    let plain = train_alone(&dir.join("plain"), 1, &[]);
    assert!(plain.status.success(), "{}", describe(&plain));
    let mined = train_alone(
        &dir.join("mined"),
        1,
        &["trainer_config.online_hard_keypoint_mining.online_mining=true"],
    );
    assert!(mined.status.success(), "{}", describe(&mined));
    // Same start, same first batch: the first loss differs by the mining term alone (> 0).
    let (a, b) = (losses(&dir.join("plain")), losses(&dir.join("mined")));
    assert!(
        b[0] > a[0] * 1.5,
        "first loss {} without mining, {} with",
        a[0],
        b[0]
    );
}

#[test]
fn a_checkpoint_monitor_the_run_does_not_log_is_refused() {
    let dir = scratch("pose", "monitor");
    let mut sets = small(1, false);
    sets.push("trainer_config.model_ckpt.monitor=eval/val/mOKS".into());
    let out = launch(&dir.join("run"), 1, &sets, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trainer_config.model_ckpt.monitor"), "{err}");
}

#[test]
fn save_top_k_keeps_the_k_best_checkpoints_and_last() {
    let run = scratch("pose", "topk").join("run");
    let out = train_alone(
        &run,
        4,
        &[
            "trainer_config.min_train_steps_per_epoch=5",
            "trainer_config.model_ckpt.save_top_k=2",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let epochs: Vec<&String> = names.iter().filter(|n| n.starts_with("epoch=")).collect();
    assert_eq!(epochs.len(), 2, "{names:?}");
    assert!(
        names.contains(&"best".to_string()) && names.contains(&"last".to_string()),
        "{names:?}"
    );
}

/// The ffmpeg the media tests encode with (scripts/test.sh sets ANVIL_FFMPEG).
fn ffmpeg() -> PathBuf {
    ["ANVIL_FFMPEG", "IMAGEIO_FFMPEG_EXE"]
        .iter()
        .find_map(|v| std::env::var_os(v).filter(|p| !p.is_empty()))
        .map_or_else(|| PathBuf::from("ffmpeg"), PathBuf::from)
}

/// `trainer_config.trainer_devices` is the number of workers per node when the command line
/// does not say (one process per device, as Lightning runs them); `--workers-per-node` wins
/// and says so.
#[test]
fn trainer_devices_sets_the_workers_per_node_unless_the_flag_does() {
    let dir = scratch("pose", "devices");
    let mut sets = small(1, false);
    sets.push("trainer_config.trainer_devices=2".into());
    let run = dir.join("two");
    let out = launch(&run, 1, &sets, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("2 worker(s) per node, one per device (trainer_config.trainer_devices = 2)"),
        "{stderr}"
    );
    let record = std::fs::read_to_string(run.join("run.json")).unwrap();
    assert!(record.contains("\"world\": 2"), "{record}");

    let run = dir.join("flag");
    let out = launch(&run, 1, &sets, &["--workers-per-node", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("--workers-per-node 1 is used instead of trainer_config.trainer_devices = 2"),
        "{stderr}"
    );
    let record = std::fs::read_to_string(run.join("run.json")).unwrap();
    assert!(record.contains("\"world\": 1"), "{record}");
}

/// The bundled labels' first labeled frame.
fn bundled_frame() -> (data::pose::Labels, data::pose::Image) {
    use data::pose::slp::{read_labels, SlpImages};
    let pkg = read_labels(&labels()).unwrap();
    let frame = SlpImages::open(&labels(), &pkg)
        .unwrap()
        .frame(pkg.frames[0].video, pkg.frames[0].frame_idx)
        .unwrap();
    (pkg, frame)
}

/// The bundled labels moved onto `video` (in `dir`, 3 frames of `shape`), labeled on its frame
/// 1, written as `dir/NAME.slp`; trained on for 6 epochs (the loss must fall); then `track`
/// on the video itself.
fn train_on_video_then_track(
    dir: &Path,
    pkg: &data::pose::Labels,
    video: &str,
    backend: &str,
    shape: [usize; 4],
) -> Tracked {
    use data::pose::slp::{read_labels, write_labels};
    use data::pose::{Video, VideoSource};
    let mut moved = pkg.clone();
    moved.videos = vec![Video {
        filename: video.into(),
        source: VideoSource::External {
            filename: video.into(),
            backend: backend.into(),
            dataset: None,
        },
        shape: Some(shape),
    }];
    moved.frames[0].video = 0;
    moved.frames[0].frame_idx = 1;
    let slp = dir.join(format!("{video}.slp"));
    write_labels(&slp, &moved).unwrap();

    let run = dir.join("run");
    let mut sets = small(6, false);
    sets.retain(|s| !s.starts_with("data_config.train_labels_path"));
    sets.push(format!("data_config.train_labels_path=[{}]", slp.display()));
    let out = launch(&run, 1, &sets, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let l = losses(&run);
    assert!(
        l[l.len() - 1] < l[0] / 5.0,
        "loss {} -> {}",
        l[0],
        l[l.len() - 1]
    );

    let pred = dir.join("predictions.slp");
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["track", "--model"])
        .arg(&run)
        .arg("--data")
        .arg(dir.join(video))
        .arg("--output")
        .arg(&pred)
        .arg("--worker-bin")
        .arg(worker_bin())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    Tracked {
        predictions: read_labels(&pred).unwrap(),
        run,
        labels: slp,
        output: pred,
    }
}

/// What [`train_on_video_then_track`] made: the run, the labels on the video, the
/// predictions file and what it holds.
struct Tracked {
    run: PathBuf,
    labels: PathBuf,
    output: PathBuf,
    predictions: data::pose::Labels,
}

/// Labels on a multi-page TIFF stack (sleap-io's TiffVideo) train, and `track` predicts every
/// page, recording the stack as a TiffVideo.
#[test]
fn labels_on_a_tiff_stack_train_and_the_stack_is_tracked_page_by_page() {
    use data::pose::VideoSource;

    let dir = scratch("pose", "tiff");
    // The bundled labeled frame as three 8-bit grayscale pages; page 1 is labeled.
    let (pkg, frame) = bundled_frame();
    let gray: Vec<u8> = frame.data.chunks(frame.channels).map(|p| p[0]).collect();
    {
        let file = std::fs::File::create(dir.join("stack.tif")).unwrap();
        let mut enc = tiff::encoder::TiffEncoder::new(std::io::BufWriter::new(file)).unwrap();
        for _ in 0..3 {
            enc.write_image::<tiff::encoder::colortype::Gray8>(
                frame.width as u32,
                frame.height as u32,
                &gray,
            )
            .unwrap();
        }
    }
    let shape = [3, frame.height, frame.width, 1];
    let p = train_on_video_then_track(&dir, &pkg, "stack.tif", "TiffVideo", shape).predictions;
    assert!(
        matches!(&p.videos[0].source, VideoSource::External { backend, .. } if backend == "TiffVideo"),
        "{:?}",
        p.videos[0]
    );
    assert_eq!(p.videos[0].shape, Some(shape));
    let frames: Vec<u64> = p.frames.iter().map(|f| f.frame_idx).collect();
    assert_eq!(frames, vec![0, 1, 2]);
    let first = &p.frames[0].instances[0].points;
    assert!(p.frames.iter().all(|f| &f.instances[0].points == first));
}

/// Labels whose frames are in an mp4 (the way most SLEAP projects keep them): anvil trains on
/// them, `coordinator track` predicts every frame of the mp4 itself, and the predictions
/// point at the video and score against the labels.
#[test]
fn labels_on_an_mp4_train_and_the_mp4_is_tracked_frame_by_frame() {
    use data::pose::slp::read_labels;
    use std::io::Write;

    let dir = scratch("pose", "mp4");
    // The bundled labeled frame, three times, as a lossless H.264 mp4; frame 1 is labeled.
    let (pkg, frame) = bundled_frame();
    let rgb: Vec<u8> = frame
        .data
        .chunks(frame.channels)
        .flat_map(|p| [p[0], p[p.len() / 2], p[p.len() - 1]])
        .collect();
    let clip = dir.join("clip.mp4");
    let mut enc = Command::new(ffmpeg())
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo"])
        .args(["-pix_fmt", "rgb24", "-s"])
        .arg(format!("{}x{}", frame.width, frame.height))
        .args(["-r", "10", "-i", "pipe:0", "-c:v", "libx264rgb", "-qp", "0"])
        .arg(&clip)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("ffmpeg (set ANVIL_FFMPEG)");
    let mut stdin = enc.stdin.take().unwrap();
    for _ in 0..3 {
        stdin.write_all(&rgb).unwrap();
    }
    drop(stdin);
    assert!(enc.wait().unwrap().success());
    let shape = [3, frame.height, frame.width, frame.channels];
    let Tracked {
        run,
        labels: slp,
        output: pred,
        predictions: p,
    } = train_on_video_then_track(&dir, &pkg, "clip.mp4", "MediaVideo", shape);
    assert_eq!(p.videos.len(), 1);
    assert!(
        p.videos[0].filename.ends_with("clip.mp4"),
        "{:?}",
        p.videos[0]
    );
    // Three frames; grayscale (equal channels), kept as one channel as sleap-io does.
    assert_eq!(
        p.videos[0].shape,
        Some([3, frame.height, frame.width, 1]),
        "{:?}",
        p.videos[0]
    );
    let frames: Vec<u64> = p.frames.iter().map(|f| f.frame_idx).collect();
    assert_eq!(frames, vec![0, 1, 2]);
    assert!(p.frames.iter().all(|f| f.instances.len() == 1));
    // The same image three times: the same prediction three times.
    let first = &p.frames[0].instances[0].points;
    assert!(p.frames.iter().all(|f| &f.instances[0].points == first));

    // --frames, as sleap-nn's: only those frames; the video keeps its own length. A frame past
    // the end, or --frames with a labels file, is an error naming it.
    let track = |data: &Path, frames: &str, out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_coordinator"))
            .args(["track", "--model"])
            .arg(&run)
            .arg("--data")
            .arg(data)
            .args(["--frames", frames, "--output"])
            .arg(out)
            .arg("--worker-bin")
            .arg(worker_bin())
            .output()
            .unwrap()
    };
    let some = dir.join("some.slp");
    let out = track(&clip, "2,1-1", &some);
    assert!(out.status.success(), "{}", describe(&out));
    let s = read_labels(&some).unwrap();
    let frames: Vec<u64> = s.frames.iter().map(|f| f.frame_idx).collect();
    assert_eq!(frames, vec![1, 2]);
    assert_eq!(s.videos[0].shape.map(|v| v[0]), Some(3));
    let out = track(&clip, "1-5", &dir.join("past.slp"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("frame 3 is past the end"), "{err}");
    let out = track(&slp, "1", &dir.join("labels.slp"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frames selects frames of a video"));

    // Scored against the labels on the mp4, as if tracked from the labels file.
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["eval", "--ground-truth"])
        .arg(&slp)
        .arg("--predictions")
        .arg(&pred)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mOKS"));
}
