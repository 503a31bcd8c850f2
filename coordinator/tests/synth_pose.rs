//! `coordinator data synth-pose`: synthetic SLEAP labels with embedded frames that anvil's
//! labels reader opens, and sizes it cannot draw refused with the file named.

mod common;

use std::process::Command;

use common::{describe, scratch};

#[test]
fn synth_pose_writes_labels_with_embedded_frames() {
    let dir = scratch("synthpose", "writes");
    let out_path = dir.join("synth.pkg.slp");
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["data", "synth-pose", "--frames", "6", "--height", "64"])
        .args(["--width", "80", "--seed", "7", "--output"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));

    let labels = data::pose::slp::read_labels(&out_path).unwrap();
    assert_eq!(labels.skeletons.len(), 1);
    assert_eq!(labels.skeletons[0].nodes, ["head", "body", "tail"]);
    assert_eq!(labels.skeletons[0].edges, [(0, 1), (1, 2)]);
    assert_eq!(labels.frames.len(), 6);
    let images = data::pose::slp::SlpImages::open(&out_path, &labels).unwrap();
    for f in &labels.frames {
        let image = images.frame(f.video, f.frame_idx).unwrap();
        assert_eq!((image.height, image.width, image.channels), (64, 80, 1));
        assert_eq!(f.instances.len(), 1);
        assert_eq!(f.instances[0].n_visible(), 3);
    }

    // The same seed writes the same labels; `data inspect` reads the file too.
    let again = dir.join("again.pkg.slp");
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["data", "synth-pose", "--frames", "6", "--height", "64"])
        .args(["--width", "80", "--seed", "7", "--output"])
        .arg(&again)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let labels_again = data::pose::slp::read_labels(&again).unwrap();
    assert_eq!(labels.frames, labels_again.frames);
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["data", "inspect"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("head, body, tail"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn synth_pose_refuses_frames_too_small() {
    let dir = scratch("synthpose", "small");
    let out_path = dir.join("tiny.pkg.slp");
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["data", "synth-pose", "--height", "8", "--output"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tiny.pkg.slp") && err.contains("too small"),
        "{err}"
    );
    assert!(!out_path.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
