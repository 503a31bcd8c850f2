//! TIFF frames: multi-page stacks (sleap-io's TiffVideo) and `.tif` images of an image
//! sequence, against the same pages written as PNG by an independent writer (Pillow,
//! scripts/tiff_fixture.py): every pixel must match. 16-bit stacks are refused by name.

mod common;

use std::path::{Path, PathBuf};

use data::pose::slp::tiff::{count_pages, read_page};
use data::pose::slp::{read_labels, write_labels, SlpImages};
use data::pose::{Image, Labels, Video, VideoSource};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiff")
}

/// A PNG page as Pillow wrote it: 1 or 3 channels of 8 bits.
fn png_page(name: &str) -> Image {
    let file = std::fs::File::open(fixtures().join(name)).expect(name);
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    buf.truncate(info.buffer_size());
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::Rgb => 3,
        other => panic!("{name}: unexpected {other:?}"),
    };
    Image {
        height: info.height as usize,
        width: info.width as usize,
        channels,
        data: buf,
    }
}

fn same(what: &str, got: &Image, want: &Image) {
    assert_eq!(
        (got.height, got.width, got.channels),
        (want.height, want.width, want.channels),
        "{what}: shape"
    );
    assert!(got.data == want.data, "{what}: pixels differ");
}

#[test]
fn every_page_of_a_stack_decodes_to_the_pixels_written() {
    for (stack, pages) in [("stack_gray_lzw", 3), ("stack_rgb_deflate", 2)] {
        let path = fixtures().join(format!("{stack}.tif"));
        assert_eq!(count_pages(&path).unwrap(), pages, "{stack}");
        for i in 0..pages {
            let got = read_page(&path, i).unwrap_or_else(|e| panic!("{stack} page {i}: {e}"));
            same(
                &format!("{stack} page {i}"),
                &got,
                &png_page(&format!("page_{stack}_{i}.png")),
            );
        }
        let err = read_page(&path, pages).unwrap_err();
        assert!(err.contains(&format!("{pages} pages")), "{err}");
    }
}

#[test]
fn sixteen_bit_stacks_are_refused_saying_to_convert_them() {
    let err = read_page(&fixtures().join("gray16.tif"), 0).unwrap_err();
    assert!(err.contains("8-bit"), "{err}");
    assert!(err.contains("Gray(16)"), "{err}");
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anvil-tiff-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn labels(video: Video, frames: &[u64]) -> Labels {
    common::one_node_labels(video, frames, [1.0, 1.0])
}

/// Writes `labels` beside copies of the fixtures, reads them back and opens their frames.
fn open(dir: &Path, labels: &Labels) -> SlpImages {
    for f in [
        "stack_gray_lzw.tif",
        "stack_rgb_deflate.tif",
        "frame_rgba.tif",
    ] {
        std::fs::copy(fixtures().join(f), dir.join(f)).unwrap();
    }
    let path = dir.join("labels.slp");
    write_labels(&path, labels).unwrap();
    let back = read_labels(&path).unwrap();
    SlpImages::open(&path, &back).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_labels_file_on_a_tiff_stack_reads_its_labeled_pages() {
    let dir = scratch("stack");
    let video = Video {
        filename: "stack_gray_lzw.tif".into(),
        source: VideoSource::External {
            filename: "stack_gray_lzw.tif".into(),
            backend: "TiffVideo".into(),
            dataset: None,
        },
        shape: None,
    };
    let images = open(&dir, &labels(video, &[0, 2]));
    // The labeled pages and one that is not labeled.
    for i in [0, 2, 1] {
        let got = images.frame(0, i).unwrap();
        same(
            &format!("frame {i}"),
            &got,
            &png_page(&format!("page_stack_gray_lzw_{i}.png")),
        );
    }
    let err = images.frame(0, 3).unwrap_err().to_string();
    assert!(err.contains("3 pages"), "{err}");
}

#[test]
fn an_image_sequence_of_tiffs_reads_rgb_without_alpha() {
    let dir = scratch("sequence");
    let video = Video {
        filename: "frame_rgba.tif".into(),
        source: VideoSource::ImageSequence {
            files: vec!["frame_rgba.tif".into(), "stack_rgb_deflate.tif".into()],
        },
        shape: None,
    };
    let images = open(&dir, &labels(video, &[0, 1]));
    same(
        "frame 0",
        &images.frame(0, 0).unwrap(),
        &png_page("page_frame_rgba_0.png"),
    );
    // An image of a sequence is its file's first page.
    same(
        "frame 1",
        &images.frame(0, 1).unwrap(),
        &png_page("page_stack_rgb_deflate_0.png"),
    );
}
