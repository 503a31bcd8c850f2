//! Frames of media files (mp4, avi, mov, mkv: sleap-io's `MediaVideo`) decoded by an `ffmpeg`
//! executable, as imageio-ffmpeg (one of sleap-io's readers) does: a child process that writes
//! the frames it is asked for to a pipe.
//!
//! Frame `i` is the i-th decoded frame in presentation order (ffmpeg's `select` filter counts
//! them as `n`), which is what sleap-io's readers return for constant-frame-rate videos. The
//! frames are written as PPM images (their header gives the size), RGB; grayscale is decided by
//! the caller as for any other video.
//!
//! Which ffmpeg: `ANVIL_FFMPEG`, else imageio-ffmpeg's `IMAGEIO_FFMPEG_EXE`, else `ffmpeg` on
//! `PATH`. It needs ffmpeg 5.1 or newer (`-fps_mode`).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::pose::Image;

/// Runs of consecutive frames asked of one ffmpeg run: its `select` expression has a term per
/// run, and one argument may hold at most 128 KiB on Linux.
const FILTER_TERMS: usize = 4000;

/// How to find ffmpeg, for the error when it is missing.
pub(crate) const HOW_TO_GET_FFMPEG: &str = "install ffmpeg 5.1 or newer (apt install ffmpeg, \
     conda install ffmpeg, or `pip install imageio-ffmpeg`, whose binary \
     `python -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())'` prints) and put \
     it on PATH or in ANVIL_FFMPEG";

/// sleap-io's `MediaVideo.EXTS`: files it opens as media videos.
pub fn is_media_file(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("mp4" | "avi" | "mov" | "mj2" | "mkv"))
}

/// The ffmpeg executable to run, or why there is none.
pub(crate) fn ffmpeg() -> Result<PathBuf, String> {
    for var in ["ANVIL_FFMPEG", "IMAGEIO_FFMPEG_EXE"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(format!("{var} names {}, which is not a file", p.display()))
            };
        }
    }
    match Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(PathBuf::from("ffmpeg")),
        _ => Err(format!(
            "decoding media videos needs ffmpeg, which is not on PATH; {HOW_TO_GET_FFMPEG}"
        )),
    }
}

/// Decodes frames `wanted` (any order, repeats allowed) of the media file `path`. Returns each
/// frame by its index; a frame past the end of the video is an error naming it.
pub(crate) fn read_frames(path: &Path, wanted: &[u64]) -> Result<HashMap<u64, Image>, String> {
    let mut sorted: Vec<u64> = wanted.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = HashMap::with_capacity(sorted.len());
    for_each_selected(path, &sorted, |i, img| {
        out.insert(i, img);
        Ok(())
    })?;
    Ok(out)
}

/// Decodes every frame of the media file `path` in order, handing each to `each` with its
/// index as it arrives (memory stays one frame, however long the video). Stops at the first
/// error `each` returns. Returns the number of frames.
pub fn for_each_frame(
    path: &Path,
    each: impl FnMut(u64, Image) -> Result<(), String>,
) -> Result<u64, String> {
    decode(&ffmpeg()?, path, None, each)
}

/// Decodes frames `frames` (ascending, distinct) of the media file `path` in order, handing
/// each to `each` with its index, streamed as [`for_each_frame`]. A frame past the end of the
/// video is an error naming it (after the ones before it were handed over).
pub fn for_each_selected(
    path: &Path,
    frames: &[u64],
    mut each: impl FnMut(u64, Image) -> Result<(), String>,
) -> Result<(), String> {
    debug_assert!(frames.windows(2).all(|w| w[0] < w[1]));
    if frames.is_empty() {
        return Ok(());
    }
    let ffmpeg = ffmpeg()?;
    // Runs of consecutive frames; one ffmpeg run takes up to FILTER_TERMS of them.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &f in frames {
        match runs.last_mut() {
            Some((_, b)) if *b + 1 == f => *b = f,
            _ => runs.push((f, f)),
        }
    }
    for group in runs.chunks(FILTER_TERMS) {
        let chunk: Vec<u64> = group.iter().flat_map(|&(a, b)| a..=b).collect();
        let done = decode(&ffmpeg, path, Some(&select_filter(group)), |k, img| {
            let i = *chunk
                .get(k as usize)
                .ok_or("ffmpeg returned more frames than were asked for")?;
            each(i, img)
        })? as usize;
        if let Some(missing) = chunk.get(done) {
            return Err(format!(
                "frame {missing} is past the end of the video (ffmpeg decoded no frame with \
                 that index{})",
                match done.checked_sub(1) {
                    Some(l) => format!("; frame {} was there", chunk[l]),
                    None => String::new(),
                }
            ));
        }
    }
    Ok(())
}

/// ffmpeg's `select` filter keeping the frames of `runs` (inclusive, ascending), counted by
/// their decoded index `n`: `between(n,a,b)` for a run, `eq(n,i)` for a single frame (commas
/// inside a filter's argument are escaped).
fn select_filter(runs: &[(u64, u64)]) -> String {
    let terms: Vec<String> = runs
        .iter()
        .map(|&(a, b)| {
            if a == b {
                format!("eq(n\\,{a})")
            } else {
                format!("between(n\\,{a}\\,{b})")
            }
        })
        .collect();
    format!("select='{}'", terms.join("+"))
}

/// Runs ffmpeg on the first video stream of `path` (through the filter `vf`, if any), reading
/// the frames it writes as RGB PPM to a pipe and handing each to `each` in order.
fn decode(
    ffmpeg: &Path,
    path: &Path,
    vf: Option<&str>,
    mut each: impl FnMut(u64, Image) -> Result<(), String>,
) -> Result<u64, String> {
    let mut cmd = Command::new(ffmpeg);
    cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-an", "-sn", "-dn"]);
    if let Some(vf) = vf {
        cmd.arg("-vf").arg(vf);
    }
    let mut child = cmd
        .args(PPM_OUTPUT)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}; {HOW_TO_GET_FFMPEG}", ffmpeg.display()))?;
    // stderr is drained on a thread so a chatty ffmpeg never blocks on a full pipe.
    let errors = drain(child.stderr.take().expect("piped"));
    let mut stdout =
        std::io::BufReader::with_capacity(1 << 20, child.stdout.take().expect("piped"));
    let mut n = 0;
    let result = loop {
        match read_ppm(&mut stdout) {
            Ok(Some(img)) => {
                if let Err(e) = each(n, img) {
                    break Err(e);
                }
                n += 1;
            }
            Ok(None) => break Ok(n),
            Err(e) => break Err(e),
        }
    };
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let errors = errors.join().unwrap_or_default();
    let n = result?;
    if !status.success() {
        return Err(ffmpeg_failed(ffmpeg, &errors));
    }
    Ok(n)
}

/// The number of frames of the media file `path`, counted by demuxing without decoding
/// (ffmpeg's final `frame=` count).
pub fn count_frames(path: &Path) -> Result<u64, String> {
    let ffmpeg = ffmpeg()?;
    let out = Command::new(&ffmpeg)
        .args(["-nostdin", "-hide_banner", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-c", "copy", "-f", "null", "-"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}; {HOW_TO_GET_FFMPEG}", ffmpeg.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(ffmpeg_failed(&ffmpeg, &log));
    }
    // Progress lines end in \r; the last "frame=" is the total.
    log.rsplit("frame=")
        .next()
        .filter(|_| log.contains("frame="))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| "ffmpeg did not report a frame count".to_string())
}

/// ffmpeg's output arguments for RGB PPM frames on stdout, one per decoded frame.
const PPM_OUTPUT: [&str; 9] = [
    "-fps_mode",
    "passthrough",
    "-pix_fmt",
    "rgb24",
    "-c:v",
    "ppm",
    "-f",
    "image2pipe",
    "pipe:1",
];

fn drain(mut stderr: std::process::ChildStderr) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    })
}

fn ffmpeg_failed(ffmpeg: &Path, errors: &str) -> String {
    let detail = errors.trim();
    format!(
        "ffmpeg ({}) could not decode it: {}",
        ffmpeg.display(),
        if detail.is_empty() {
            "no message"
        } else {
            detail
        }
    )
}

/// The next PPM of a stream, or None at its end.
fn read_ppm(r: &mut impl std::io::BufRead) -> Result<Option<Image>, String> {
    let io = |e: std::io::Error| format!("reading ffmpeg's output: {e}");
    // The header is four whitespace-separated fields and one whitespace byte; read it a byte at
    // a time (it is ~15 bytes) into a buffer the slice parser understands.
    let mut header = Vec::with_capacity(32);
    let mut fields = 0;
    let mut in_field = false;
    loop {
        let mut b = [0u8; 1];
        if r.read(&mut b).map_err(io)? == 0 {
            return if header.iter().all(u8::is_ascii_whitespace) {
                Ok(None)
            } else {
                Err("ffmpeg wrote an unexpected image (truncated header)".into())
            };
        }
        header.push(b[0]);
        let ws = b[0].is_ascii_whitespace();
        if in_field && ws {
            fields += 1;
            if fields == 4 {
                break;
            }
        }
        in_field = !ws;
    }
    let (img, _) = parse_ppm_header(&header)?;
    let mut data = vec![0u8; img.0 * img.1 * 3];
    r.read_exact(&mut data).map_err(io)?;
    Ok(Some(Image {
        width: img.0,
        height: img.1,
        channels: 3,
        data,
    }))
}

/// (width, height) of a binary 8-bit PPM and where its pixels start.
fn parse_ppm_header(bytes: &[u8]) -> Result<((usize, usize), usize), String> {
    let bad = |what: &str| format!("ffmpeg wrote an unexpected image ({what})");
    let mut at = 0;
    // Magic, width, height, maxval: whitespace-separated, then exactly one whitespace byte.
    let mut field = || -> Result<&[u8], String> {
        while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        let start = at;
        while bytes.get(at).is_some_and(|b| !b.is_ascii_whitespace()) {
            at += 1;
        }
        if start == at || at >= bytes.len() {
            return Err(bad("truncated header"));
        }
        Ok(&bytes[start..at])
    };
    if field()? != b"P6" {
        return Err(bad("not a binary PPM"));
    }
    let mut number = |what: &str| -> Result<usize, String> {
        std::str::from_utf8(field()?)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(what))
    };
    let (width, height, maxval) = (number("width")?, number("height")?, number("maxval")?);
    if maxval != 255 {
        return Err(bad("not 8-bit"));
    }
    Ok(((width, height), at + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppm_stream_parses_into_images_and_rejects_truncation() {
        let mut s = b"P6\n2 1\n255\n".to_vec();
        s.extend([1, 2, 3, 4, 5, 6]);
        s.extend(b"P6 1 1 255 ");
        s.extend([7, 8, 9]);
        let mut r = std::io::BufReader::new(&s[..]);
        let a = read_ppm(&mut r).unwrap().unwrap();
        assert_eq!((a.width, a.height, a.channels), (2, 1, 3));
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(read_ppm(&mut r).unwrap().unwrap().data, vec![7, 8, 9]);
        assert!(read_ppm(&mut r).unwrap().is_none());
        let mut cut = std::io::BufReader::new(&s[..s.len() - 1]);
        assert!(read_ppm(&mut cut).unwrap().is_some());
        assert!(read_ppm(&mut cut).is_err());
        let mut p5 = std::io::BufReader::new(&b"P5\n1 1\n255\n\0"[..]);
        assert!(read_ppm(&mut p5).is_err());
    }
}
