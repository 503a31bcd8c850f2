//! SLEAP labels: reading minimal_instance.pkg.slp as sleap-io reports it, decoding its embedded
//! frame, writing labels and reading them back, and the errors for files that are not labels
//! or videos that cannot be read.

mod common;

use std::path::{Path, PathBuf};

use data::pose::slp::{read_labels, write_labels, SlpImages};
use data::pose::{Instance, InstanceKind, LabeledFrame, Labels, Skeleton, Video, VideoSource};
use data::DataError;

const MINIMAL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/data/minimal_instance.pkg.slp"
);

/// Coordinates sleap-io 0.9.5 reports for the two instances (`inst.numpy()`).
const MINIMAL_POINTS: [[[f64; 2]; 2]; 2] = [
    [
        [92.65220773208894, 202.7259777426982],
        [152.34188115939048, 158.42364351243816],
    ],
    [
        [205.9300539013689, 187.88964024221963],
        [278.63521449272383, 203.3658657346604],
    ],
];

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anvil-slp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn same_points(a: &[[f64; 2]], b: &[[f64; 2]]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(p, q)| (0..2).all(|k| (p[k].is_nan() && q[k].is_nan()) || p[k] == q[k]))
}

#[test]
fn minimal_instance_reads_as_sleap_io_reports_it() {
    let labels = read_labels(Path::new(MINIMAL)).unwrap();
    assert_eq!(labels.skeletons.len(), 1);
    let s = &labels.skeletons[0];
    assert_eq!(s.nodes, ["A", "B"]);
    assert_eq!(s.edges, [(0, 1)]);
    assert!(s.symmetries.is_empty());
    assert_eq!(s.name, "Skeleton-0");
    assert!(labels.tracks.is_empty());

    assert_eq!(labels.videos.len(), 1);
    let v = &labels.videos[0];
    assert_eq!(
        v.filename,
        "tests/data/json_format_v1/centered_pair_low_quality.mp4"
    );
    assert_eq!(v.shape, Some([1, 384, 384, 1]));
    match &v.source {
        VideoSource::Embedded {
            file,
            dataset,
            format,
            frame_numbers,
        } => {
            assert_eq!(file, Path::new(MINIMAL));
            assert_eq!(dataset, "video0/video");
            assert_eq!(format, "png");
            assert_eq!(frame_numbers, &[0]);
        }
        other => panic!("expected embedded frames, got {other:?}"),
    }

    assert_eq!(labels.frames.len(), 1);
    let f = &labels.frames[0];
    assert_eq!((f.video, f.frame_idx), (0, 0));
    assert_eq!(f.instances.len(), 2);
    for (inst, want) in f.instances.iter().zip(MINIMAL_POINTS) {
        assert!(inst.is_user());
        assert_eq!(inst.track, None);
        assert_eq!(inst.points, want);
        assert!(inst.point_scores.is_empty());
    }
}

#[test]
fn minimal_instance_frame_decodes_as_sleap_io_reads_it() {
    let labels = read_labels(Path::new(MINIMAL)).unwrap();
    let images = SlpImages::open(Path::new(MINIMAL), &labels).unwrap();
    let img = images.frame(0, 0).unwrap();
    assert_eq!((img.height, img.width, img.channels), (384, 384, 1));
    assert_eq!(img.data.len(), 384 * 384);
    // sleap-io: labels.video[0] -> sum 754996, max 228, min 0, [383, 383] = 5.
    assert_eq!(img.data.iter().map(|&p| p as u64).sum::<u64>(), 754_996);
    assert_eq!(img.data.iter().max(), Some(&228));
    assert_eq!(img.data.iter().min(), Some(&0));
    assert_eq!(img.data[383 * 384 + 383], 5);

    let err = images.frame(0, 7).unwrap_err().to_string();
    assert!(err.contains("frame 7 is not embedded"), "{err}");
}

fn predictions(source: &Labels) -> Labels {
    let mut labels = source.clone();
    labels.skeletons.push(Skeleton {
        name: "mouse".into(),
        nodes: vec!["nose".into(), "ear_L".into(), "ear_R".into()],
        edges: vec![(0, 1), (0, 2)],
        symmetries: vec![(1, 2)],
    });
    labels.tracks = vec!["track_0".into(), "track_1".into()];
    let f = &mut labels.frames[0];
    f.instances[1].track = Some(1);
    f.instances[1].tracking_score = 0.25;
    f.instances.push(Instance {
        skeleton: 0,
        points: vec![[10.5, 20.25], [f64::NAN, f64::NAN]],
        point_scores: vec![0.9, 0.1],
        kind: InstanceKind::Predicted { score: 0.75 },
        track: Some(0),
        tracking_score: 0.5,
    });
    labels.frames.push(LabeledFrame {
        video: 0,
        frame_idx: 3,
        instances: vec![Instance {
            skeleton: 1,
            points: vec![[1.0, 2.0], [3.0, 4.0], [f64::NAN, f64::NAN]],
            point_scores: vec![0.5, 0.625, f64::NAN],
            kind: InstanceKind::Predicted { score: 1.5 },
            track: None,
            tracking_score: 0.0,
        }],
    });
    labels
}

fn assert_same_labels(a: &Labels, b: &Labels) {
    assert_eq!(a.skeletons, b.skeletons);
    assert_eq!(a.tracks, b.tracks);
    assert_eq!(a.frames.len(), b.frames.len());
    for (fa, fb) in a.frames.iter().zip(&b.frames) {
        assert_eq!((fa.video, fa.frame_idx), (fb.video, fb.frame_idx));
        assert_eq!(fa.instances.len(), fb.instances.len());
        for (ia, ib) in fa.instances.iter().zip(&fb.instances) {
            assert!(same_points(&ia.points, &ib.points), "{ia:?} vs {ib:?}");
            assert_eq!(ia.point_scores.len(), ib.point_scores.len());
            for (x, y) in ia.point_scores.iter().zip(&ib.point_scores) {
                assert!((x.is_nan() && y.is_nan()) || x == y, "{ia:?} vs {ib:?}");
            }
            assert_eq!(ia.kind, ib.kind);
            assert_eq!(ia.track, ib.track);
            // minimal_instance stores NaN tracking scores; they stay NaN.
            assert_eq!(ia.tracking_score.to_bits(), ib.tracking_score.to_bits());
            assert_eq!(ia.skeleton, ib.skeleton);
        }
    }
}

#[test]
fn written_predictions_read_back_and_refer_to_the_embedded_frames() {
    let dir = scratch("roundtrip");
    let source = read_labels(Path::new(MINIMAL)).unwrap();
    let labels = predictions(&source);
    let out = dir.join("predictions.slp");
    write_labels(&out, &labels).unwrap();
    let back = read_labels(&out).unwrap();
    assert_same_labels(&labels, &back);

    // The video is the source .pkg.slp's embedded frames, by reference.
    assert_eq!(back.videos.len(), 1);
    match &back.videos[0].source {
        VideoSource::Embedded {
            file,
            dataset,
            frame_numbers,
            ..
        } => {
            assert_eq!(
                std::fs::canonicalize(file).unwrap(),
                std::fs::canonicalize(MINIMAL).unwrap()
            );
            assert_eq!(dataset, "video0/video");
            assert_eq!(frame_numbers, &[0]);
        }
        other => panic!("expected a reference to embedded frames, got {other:?}"),
    }
    assert_eq!(back.videos[0].shape, Some([1, 384, 384, 1]));
    let img = SlpImages::open(&out, &back).unwrap().frame(0, 0).unwrap();
    assert_eq!(img.data.iter().map(|&p| p as u64).sum::<u64>(), 754_996);

    // No temporary file is left beside the output.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("predictions.slp")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn writing_over_the_file_the_frames_come_from_is_refused() {
    let dir = scratch("overwrite");
    let copy = dir.join("labels.pkg.slp");
    std::fs::copy(MINIMAL, &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    let labels = read_labels(&copy).unwrap();
    let err = write_labels(&copy, &labels).unwrap_err().to_string();
    assert!(err.contains("frames come from"), "{err}");
    assert_eq!(std::fs::read(&copy).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn format_before_1_1_shifts_points_to_pixel_centres() {
    let dir = scratch("legacy");
    let out = dir.join("old.slp");
    let labels = read_labels(Path::new(MINIMAL)).unwrap();
    write_labels(&out, &labels).unwrap();
    {
        let f = hdf5::File::open_rw(&out).unwrap();
        let md = f.group("metadata").unwrap();
        md.delete_attr("format_id").unwrap();
        md.new_attr::<f64>()
            .create("format_id")
            .unwrap()
            .write_scalar(&1.0)
            .unwrap();
    }
    let old = read_labels(&out).unwrap();
    let p = old.frames[0].instances[0].points[0];
    assert_eq!(
        p,
        [MINIMAL_POINTS[0][0][0] - 0.5, MINIMAL_POINTS[0][0][1] - 0.5]
    );
    // Format 1.0 has no tracking_score: it reads as 0.
    assert_eq!(old.frames[0].instances[0].tracking_score, 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn png_bytes(w: u32, h: u32, color: png::ColorType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(data).unwrap();
    }
    out
}

fn one_frame_labels(video: Video) -> Labels {
    common::one_node_labels(video, &[0], [1.0, 1.0])
}

#[test]
fn image_sequence_beside_the_labels_decodes_rgb() {
    let dir = scratch("imgseq");
    // 2x2 RGB: red, green / blue, white.
    let rgb = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];
    std::fs::write(
        dir.join("f0.png"),
        png_bytes(2, 2, png::ColorType::Rgb, &rgb),
    )
    .unwrap();
    let labels = one_frame_labels(Video {
        filename: "f0.png".into(),
        source: VideoSource::ImageSequence {
            files: vec!["elsewhere/f0.png".into()],
        },
        shape: Some([1, 2, 2, 3]),
    });
    let out = dir.join("labels.slp");
    write_labels(&out, &labels).unwrap();
    let back = read_labels(&out).unwrap();
    assert_eq!(
        back.videos[0].source,
        VideoSource::ImageSequence {
            files: vec!["elsewhere/f0.png".into()]
        }
    );
    let img = SlpImages::open(&out, &back).unwrap().frame(0, 0).unwrap();
    assert_eq!((img.height, img.width, img.channels), (2, 2, 3));
    assert_eq!(img.data, rgb);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_file_and_files_that_are_not_labels_are_errors() {
    let dir = scratch("notslp");
    let missing = dir.join("absent.slp");
    assert!(matches!(
        read_labels(&missing),
        Err(DataError::NotFound { .. })
    ));

    let text = dir.join("notes.slp");
    std::fs::write(&text, "not hdf5").unwrap();
    let err = read_labels(&text).unwrap_err();
    assert!(matches!(err, DataError::NotLabels { .. }), "{err}");
    assert!(err.to_string().contains("notes.slp"), "{err}");

    let h5 = dir.join("other.h5");
    hdf5::File::create(&h5).unwrap().create_group("X").unwrap();
    let err = read_labels(&h5).unwrap_err();
    assert!(matches!(err, DataError::NotLabels { .. }), "{err}");
    assert!(err.to_string().contains("metadata"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_external_video_error_names_it_and_says_how_to_remap() {
    let dir = scratch("media");
    let labels = one_frame_labels(Video {
        filename: "/data/session1/cam0.mp4".into(),
        source: VideoSource::External {
            filename: "/data/session1/cam0.mp4".into(),
            backend: "MediaVideo".into(),
            dataset: None,
        },
        shape: None,
    });
    let out = dir.join("labels.slp");
    write_labels(&out, &labels).unwrap();
    let back = read_labels(&out).unwrap();
    assert_eq!(back.videos[0].source, labels.videos[0].source);
    let err = SlpImages::open(&out, &back)
        .err()
        .expect("the mp4 cannot be read");
    assert!(matches!(err, DataError::VideoUnavailable { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("/data/session1/cam0.mp4"), "{msg}");
    assert!(msg.contains(&out.display().to_string()), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");
    assert!(msg.contains("replace_filenames"), "{msg}");

    // A missing image of an image sequence names the image.
    let seq = one_frame_labels(Video {
        filename: "img_000.png".into(),
        source: VideoSource::ImageSequence {
            files: vec!["img_000.png".into()],
        },
        shape: None,
    });
    let err = SlpImages::open(&out, &seq)
        .err()
        .expect("no such image")
        .to_string();
    assert!(
        err.contains("img_000.png") && err.contains("not found"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

const RGB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rgb.pkg.slp");

fn channel_sums(img: &data::pose::Image) -> Vec<u64> {
    (0..img.channels)
        .map(|c| {
            img.data
                .iter()
                .skip(c)
                .step_by(img.channels)
                .map(|&p| p as u64)
                .sum()
        })
        .collect()
}

fn pixel(img: &data::pose::Image, y: usize, x: usize) -> &[u8] {
    let at = (y * img.width + x) * img.channels;
    &img.data[at..at + img.channels]
}

#[test]
fn embedded_rgb_png_and_jpeg_decode_as_sleap_io_reads_them() {
    // scripts/slp_fixtures.py wrote the fixture and printed what sleap-io reads.
    let labels = read_labels(Path::new(RGB)).unwrap();
    assert_eq!(labels.videos.len(), 2);
    assert_eq!(labels.frames.len(), 2);
    assert_eq!(labels.frames[1].video, 1);
    assert_eq!(
        labels.frames[1].instances[0].points,
        [[2.0, 3.0], [10.0, 8.0]]
    );
    let images = SlpImages::open(Path::new(RGB), &labels).unwrap();

    let png = images.frame(0, 0).unwrap();
    assert_eq!((png.height, png.width, png.channels), (12, 16, 3));
    assert_eq!(channel_sums(&png), [21855, 21120, 34305]);
    assert_eq!(pixel(&png, 0, 0), [255, 0, 0]);
    assert_eq!(pixel(&png, 5, 7), [105, 100, 185]);

    // JPEG decoders may differ from OpenCV's by rounding: within 1 per pixel on average.
    let jpg = images.frame(1, 0).unwrap();
    assert_eq!((jpg.height, jpg.width, jpg.channels), (12, 16, 3));
    for (got, want) in channel_sums(&jpg).iter().zip([21834u64, 21143, 34321]) {
        assert!(
            got.abs_diff(want) <= 12 * 16,
            "channel sum {got} vs sleap-io {want}"
        );
    }
    for (got, want) in pixel(&jpg, 5, 7).iter().zip([104u8, 99, 181]) {
        assert!(got.abs_diff(want) <= 3, "pixel {got} vs sleap-io {want}");
    }
}

#[test]
fn embedded_colour_frames_before_format_1_4_are_bgr() {
    let dir = scratch("bgr");
    let legacy = dir.join("legacy.pkg.slp");
    std::fs::copy(RGB, &legacy).unwrap();
    {
        let f = hdf5::File::open_rw(&legacy).unwrap();
        f.dataset("video0/video")
            .unwrap()
            .delete_attr("channel_order")
            .unwrap();
        let md = f.group("metadata").unwrap();
        md.delete_attr("format_id").unwrap();
        md.new_attr::<f64>()
            .create("format_id")
            .unwrap()
            .write_scalar(&1.2)
            .unwrap();
    }
    let labels = read_labels(&legacy).unwrap();
    let img = SlpImages::open(&legacy, &labels)
        .unwrap()
        .frame(0, 0)
        .unwrap();
    // sleap-io reads [0, 0, 255] and [185, 100, 105] from this file.
    assert_eq!(pixel(&img, 0, 0), [0, 0, 255]);
    assert_eq!(pixel(&img, 5, 7), [185, 100, 105]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_video_referred_to_by_its_embedded_group_number_maps_back_to_its_list_index() {
    // Only video1 of the fixture: frames.video holds 1 (the N of video1/video, as sleap-io
    // writes it) while the file lists a single video.
    let dir = scratch("sparse");
    let mut labels = read_labels(Path::new(RGB)).unwrap();
    labels.videos.remove(0);
    labels.frames.retain(|f| f.video == 1);
    labels.frames[0].video = 0;
    let out = dir.join("only_jpg.slp");
    write_labels(&out, &labels).unwrap();
    #[derive(hdf5::H5Type, Clone, Copy)]
    #[repr(C)]
    struct FrameVideo {
        video: u32,
    }
    let stored = hdf5::File::open(&out)
        .unwrap()
        .dataset("frames")
        .unwrap()
        .read_raw::<FrameVideo>()
        .unwrap();
    assert_eq!(stored.iter().map(|f| f.video).collect::<Vec<_>>(), [1]);
    let back = read_labels(&out).unwrap();
    assert_eq!(back.frames.len(), 1);
    assert_eq!(back.frames[0].video, 0);
    let img = SlpImages::open(&out, &back).unwrap().frame(0, 0).unwrap();
    assert_eq!((img.height, img.width, img.channels), (12, 16, 3));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An HDF5 video outside the labels file holding raw frames (sleap-io's `HDF5Video` with a
/// rank-4 uint8 dataset), channels last and SLEAP's channels first ([frames, channels, width,
/// height]): the frame as sleap-io returns it (height × width × channels).
#[test]
fn raw_frames_of_an_hdf5_video_read_as_sleap_io_reads_them() {
    let dir = scratch("h5video");
    let (n, h, w) = (3usize, 4usize, 5usize);
    let value = |f: usize, y: usize, x: usize, c: usize| (f * 60 + y * 12 + x * 2 + c) as u8;
    for (name, channels_first) in [("last.h5", false), ("first.h5", true)] {
        let c = 3;
        let data: Vec<u8> = if channels_first {
            let mut v = Vec::new();
            for f in 0..n {
                for ch in 0..c {
                    for x in 0..w {
                        for y in 0..h {
                            v.push(value(f, y, x, ch));
                        }
                    }
                }
            }
            v
        } else {
            let mut v = Vec::new();
            for f in 0..n {
                for y in 0..h {
                    for x in 0..w {
                        for ch in 0..c {
                            v.push(value(f, y, x, ch));
                        }
                    }
                }
            }
            v
        };
        let shape = if channels_first {
            [n, c, w, h]
        } else {
            [n, h, w, c]
        };
        let file = hdf5::File::create(dir.join(name)).unwrap();
        file.new_dataset::<u8>()
            .shape(shape)
            .create("box")
            .unwrap()
            .write_raw(&data)
            .unwrap();
        drop(file);
        let mut labels = one_frame_labels(Video {
            filename: name.into(),
            source: VideoSource::External {
                filename: name.into(),
                backend: "HDF5Video".into(),
                dataset: Some("box".into()),
            },
            shape: Some([n, h, w, c]),
        });
        labels.frames[0].frame_idx = 2;
        let out = dir.join(format!("{name}.slp"));
        write_labels(&out, &labels).unwrap();
        let back = read_labels(&out).unwrap();
        let images = SlpImages::open(&out, &back).unwrap_or_else(|e| panic!("{name}: {e}"));
        let img = images.frame(0, 2).unwrap();
        assert_eq!((img.height, img.width, img.channels), (h, w, c), "{name}");
        let mut want = Vec::new();
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    want.push(value(2, y, x, ch));
                }
            }
        }
        assert_eq!(img.data, want, "{name}");
        let err = images.frame(0, 3).unwrap_err().to_string();
        assert!(err.contains("box[3]") && err.contains("3 frames"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
