//! Labels whose frames are in a media file (mp4), decoded through ffmpeg as sleap-io's
//! MediaVideo reads them: byte-identical to sleap-io 0.9.5 (all three of its readers) on a
//! lossy H.264 file with B-frames (fixture from scripts/media_fixture.py), exact frames from a
//! lossless file, the right frames (not their neighbours) from another lossy one, grayscale,
//! and the errors for a frame past the end and a missing ffmpeg.
//!
//! Needs ffmpeg (ANVIL_FFMPEG, IMAGEIO_FFMPEG_EXE or PATH; scripts/test.sh points ANVIL_FFMPEG
//! at the imageio-ffmpeg binary it installs).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use data::pose::slp::{media, read_labels, write_labels, SlpImages};
use data::pose::{Image, Labels, Video, VideoSource};

const W: usize = 64;
const H: usize = 48;
const FRAMES: usize = 30;

fn ffmpeg() -> PathBuf {
    for var in ["ANVIL_FFMPEG", "IMAGEIO_FFMPEG_EXE"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
    }
    let on_path = Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        on_path,
        "these tests need ffmpeg: set ANVIL_FFMPEG (scripts/test.sh does) or put it on PATH"
    );
    PathBuf::from("ffmpeg")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anvil-media-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Frame i: a smooth background and a bright 8×8 square whose place moves with i, so each
/// frame differs from its neighbours by far more than compression noise.
fn source_frame(i: usize, gray: bool) -> Vec<u8> {
    let (sx, sy) = (4 + (i * 5) % (W - 12), 4 + (i * 3) % (H - 12));
    let mut rgb = Vec::with_capacity(W * H * 3);
    for y in 0..H {
        for x in 0..W {
            let inside = (sx..sx + 8).contains(&x) && (sy..sy + 8).contains(&y);
            let base = (40 + x + y) as u8;
            let px = if inside {
                [230, 200, 60]
            } else {
                [base, base / 2 + 20, 90]
            };
            let px = if gray { [px[0]; 3] } else { px };
            rgb.extend(px);
        }
    }
    rgb
}

/// Encodes the source frames into `path` with ffmpeg and `codec` arguments.
fn encode(path: &Path, gray: bool, codec: &[&str]) {
    let mut child = Command::new(ffmpeg())
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo"])
        .args(["-pix_fmt", "rgb24", "-s", &format!("{W}x{H}"), "-r", "25"])
        .args(["-i", "pipe:0"])
        .args(codec)
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run ffmpeg");
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..FRAMES {
        stdin.write_all(&source_frame(i, gray)).unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "ffmpeg could not encode");
}

/// Labels with one user instance on each of `frames` of `video` (a media file).
fn labels(video: &str, frames: &[u64], shape: Option<[usize; 4]>) -> Labels {
    let video = Video {
        filename: video.into(),
        source: VideoSource::External {
            filename: video.into(),
            backend: "MediaVideo".into(),
            dataset: None,
        },
        shape,
    };
    common::one_node_labels(video, frames, [10.0, 10.0])
}

/// Opens `video` through a labels file written beside it, labeled on `frames`.
fn open(dir: &Path, video: &str, frames: &[u64], shape: Option<[usize; 4]>) -> SlpImages {
    let path = dir.join("labels.slp");
    write_labels(&path, &labels(video, frames, shape)).unwrap();
    let back = read_labels(&path).unwrap();
    SlpImages::open(&path, &back).unwrap_or_else(|e| panic!("{e}"))
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn media_video_frames_are_decoded_as_sleap_io_reads_them() {
    use sha2::{Digest, Sha256};
    // sleap-io's frames of the fixture, by SHA-256 of their RGB bytes.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("testsrc_frames.json")).unwrap(),
    )
    .unwrap();
    let hashes = reference["sha256_rgb"].as_object().unwrap();
    let wanted: Vec<u64> = hashes.keys().map(|k| k.parse().unwrap()).collect();
    let dir = scratch("parity");
    std::fs::copy(fixtures.join("testsrc.mp4"), dir.join("testsrc.mp4")).unwrap();
    let images = open(&dir, "testsrc.mp4", &wanted, Some([60, 120, 160, 3]));
    for (k, want) in hashes {
        let img = images.frame(0, k.parse().unwrap()).unwrap();
        assert_eq!((img.width, img.height, img.channels), (160, 120, 3));
        let got = format!("{:x}", Sha256::digest(&img.data));
        assert_eq!(
            &got,
            want.as_str().unwrap(),
            "frame {k} differs from sleap-io's"
        );
    }

    let dir = scratch("decode");
    let wanted = [0u64, 5, 6, 17, 29];

    // Lossless H.264 (RGB): every labeled frame is exactly its source frame; a frame that was
    // not labeled is decoded when asked for.
    encode(
        &dir.join("lossless.mp4"),
        false,
        &["-c:v", "libx264rgb", "-qp", "0", "-preset", "ultrafast"],
    );
    let images = open(&dir, "lossless.mp4", &wanted, None);
    for &i in wanted.iter().chain(&[11]) {
        let img: Image = images.frame(0, i).unwrap();
        assert_eq!((img.width, img.height, img.channels), (W, H, 3));
        assert!(
            img.data == source_frame(i as usize, false),
            "lossless frame {i} differs from its source"
        );
    }

    // Streamed selections (track --frames): ranges and single frames, exact and in order; a
    // frame past the end is named after the ones before it were handed over.
    let mut got = Vec::new();
    media::for_each_selected(&dir.join("lossless.mp4"), &[0, 5, 6, 7, 29], |i, img| {
        got.push(i);
        if img.data != source_frame(i as usize, false) {
            return Err(format!("selected frame {i} differs from its source"));
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(got, vec![0, 5, 6, 7, 29]);
    let mut got = Vec::new();
    let err = media::for_each_selected(&dir.join("lossless.mp4"), &[28, 29, 30], |i, _| {
        got.push(i);
        Ok(())
    })
    .unwrap_err();
    assert_eq!(got, vec![28, 29]);
    assert!(
        err.contains("frame 30") && err.contains("frame 29 was there"),
        "{err}"
    );

    // The usual lossy H.264 (yuv420p, B-frames, a keyframe every 8 frames): each decoded frame
    // is closest to its own source frame, not a neighbour's, and close to it.
    encode(
        &dir.join("lossy.mp4"),
        false,
        &[
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-bf", "3", "-g", "8", "-crf", "18",
        ],
    );
    let images = open(&dir, "lossy.mp4", &wanted, None);
    for &i in &wanted {
        let img = images.frame(0, i).unwrap();
        let own = mean_abs_diff(&img.data, &source_frame(i as usize, false));
        assert!(
            own < 4.0,
            "frame {i}: mean difference {own:.2} from its source"
        );
        for j in [i.wrapping_sub(1), i + 1] {
            if (j as usize) < FRAMES {
                let other = mean_abs_diff(&img.data, &source_frame(j as usize, false));
                assert!(
                    own < other,
                    "frame {i} looks like frame {j} ({own:.2} vs {other:.2})"
                );
            }
        }
    }

    // Grayscale recorded in the labels: one channel, the first of the decoded RGB.
    encode(
        &dir.join("gray.mp4"),
        true,
        &["-c:v", "libx264rgb", "-qp", "0", "-preset", "ultrafast"],
    );
    let images = open(&dir, "gray.mp4", &[3], Some([FRAMES, H, W, 1]));
    let img = images.frame(0, 3).unwrap();
    assert_eq!(img.channels, 1);
    let want: Vec<u8> = source_frame(3, true).chunks(3).map(|p| p[0]).collect();
    assert_eq!(img.data, want);

    // A labeled frame past the end: the error names the video and the frame.
    let path = dir.join("labels.slp");
    write_labels(&path, &labels("lossless.mp4", &[4, 40], None)).unwrap();
    let back = read_labels(&path).unwrap();
    let err = SlpImages::open(&path, &back)
        .err()
        .expect("frame 40 does not exist");
    let msg = err.to_string();
    assert!(
        msg.contains("lossless.mp4") && msg.contains("frame 40") && msg.contains("past the end"),
        "{msg}"
    );

    // No ffmpeg where ANVIL_FFMPEG points: the error says so and how to get one (the last
    // step, as it changes the environment of this test binary).
    std::env::set_var("ANVIL_FFMPEG", dir.join("no-such-ffmpeg"));
    let err = SlpImages::open(&path, &back).err().expect("no ffmpeg");
    let msg = err.to_string();
    assert!(
        msg.contains("ANVIL_FFMPEG") && msg.contains("not a file"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
