//! TensorBoard event files, written without TensorFlow: a file of TFRecords, each holding one
//! `tensorboard.Event` protobuf. A record is
//!
//! ```text
//! u64 length (little-endian) | u32 masked crc32c of those 8 bytes | data | u32 masked crc32c of data
//! ```
//!
//! The first event carries `file_version: "brain.Event:2"`; scalars are `Summary` values with
//! `simple_value`. Every record is written with one `write_all` on an unbuffered file, so a
//! TensorBoard watching the directory sees each step as soon as it is logged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

/// `tensorboard.Event` (tensorboard/compat/proto/event.proto), the fields anvil writes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
}

/// `Event.what`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorboard.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorboard.Summary.Value`: a tag and, for a scalar, `simple_value`. The value is a oneof
/// in the schema, so it is always written, 0.0 included (a plain proto3 float field would
/// leave a zero out and the reader would see no value at all).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(oneof = "ValueKind", tags = "2")]
    pub value: Option<ValueKind>,
}

/// `Summary.Value.value`, the scalar case.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ValueKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
}

/// `tensorboard.SessionLog`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    #[prost(int32, tag = "1")]
    pub status: i32,
    #[prost(string, tag = "2")]
    pub checkpoint_path: String,
    #[prost(string, tag = "3")]
    pub msg: String,
}

/// `SessionLog.SessionStatus.START`: TensorBoard drops every event it has read with a step at
/// or after this event's step (the data a crashed run logged past its checkpoint).
pub const SESSION_START: i32 = 1;

pub const FILE_VERSION: &str = "brain.Event:2";

/// TFRecord's masked CRC-32C: rotate right by 15 and add a constant, so that a CRC of data
/// that itself contains CRCs is not trivially zero.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
pub fn tf_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// Distinguishes event files one process opens within the same second (TensorBoard's writer
/// ends its file names with the same kind of counter).
static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An open event file.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// A new `events.out.tfevents.<unix seconds>.<host>.<pid>.<n>` in `dir`, begun with the
    /// file-version event. TensorBoard reads a directory's event files in name order, so when
    /// an older file's name carries this second or a later one (a resume within the same
    /// second, or on a host whose clock is behind), the name takes the second after it.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        let now = unix_seconds();
        let newest = newest_file_second(dir)?;
        let name = format!(
            "{FILE_PREFIX}{:010}.{}.{}.{}",
            newest.map_or(now as u64, |s| (now as u64).max(s + 1)),
            hostname(),
            std::process::id(),
            FILE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut w = EventWriter { file, path };
        w.write(&Event {
            wall_time: now,
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
        })?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as a record, straight to the file.
    pub fn write(&mut self, event: &Event) -> std::io::Result<()> {
        self.file.write_all(&tf_record(&event.encode_to_vec()))
    }

    /// One event with a scalar per `(tag, value)` at `step`.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> std::io::Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: (*tag).to_string(),
                value: Some(ValueKind::SimpleValue(*v as f32)),
            })
            .collect();
        self.write(&Event {
            wall_time: unix_seconds(),
            step: step as i64,
            what: Some(What::Summary(Summary { value })),
        })
    }

    /// A SessionLog START at `step`: TensorBoard forgets what earlier files of the directory
    /// logged at `step` and later, since a resumed run logs those steps again.
    pub fn session_start(&mut self, step: u64, msg: &str) -> std::io::Result<()> {
        self.write(&Event {
            wall_time: unix_seconds(),
            step: step as i64,
            what: Some(What::SessionLog(SessionLog {
                status: SESSION_START,
                checkpoint_path: String::new(),
                msg: msg.into(),
            })),
        })
    }
}

/// How every event file's name starts.
pub const FILE_PREFIX: &str = "events.out.tfevents.";

/// The largest seconds field among the event files in `dir`.
fn newest_file_second(dir: &Path) -> std::io::Result<Option<u64>> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let secs = name
            .to_str()
            .and_then(|n| n.strip_prefix(FILE_PREFIX))
            .and_then(|rest| rest.split('.').next())
            .and_then(|s| s.parse::<u64>().ok());
        newest = newest.max(secs);
    }
    Ok(newest)
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// This machine's name as gethostname(2) gives it ("localhost" if that fails).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname writes at most that many
    // bytes and we read only up to the first NUL (or the whole buffer).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if !h.is_empty() => h.to_string(),
        _ => "localhost".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_known_vectors() {
        // The CRC-32C check value (RFC 3720's polynomial) and iSCSI's 32 zero bytes.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        // Masked values as tensorboard's own reader computes them (masked_crc32c in
        // tensorboard.compat.tensorflow_stub.pywrap_tensorflow).
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc32c(&24u64.to_le_bytes()), 0x224b_7fa3);
    }

    #[test]
    fn a_record_frames_its_data() {
        let r = tf_record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[8..12], &masked_crc32c(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(&r[15..], &masked_crc32c(b"abc").to_le_bytes());
    }

    #[test]
    fn event_files_are_named_in_the_order_they_were_opened() {
        let dir = std::env::temp_dir().join(format!("anvil-tfevents-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // An older file from a host whose clock ran a minute ahead.
        let ahead = unix_seconds() as u64 + 60;
        std::fs::write(dir.join(format!("{FILE_PREFIX}{ahead:010}.h.1.0")), b"").unwrap();
        let a = EventWriter::create(&dir).unwrap();
        let b = EventWriter::create(&dir).unwrap();
        let name = |w: &EventWriter| w.path().file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name(&a).starts_with(&format!("{FILE_PREFIX}{:010}.", ahead + 1)),
            "{}",
            name(&a)
        );
        assert!(
            name(&b).starts_with(&format!("{FILE_PREFIX}{:010}.", ahead + 2)),
            "{}",
            name(&b)
        );
        // Each begins with the file-version record.
        let bytes = std::fs::read(a.path()).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let event = Event::decode(&bytes[12..12 + len]).unwrap();
        assert_eq!(event.what, Some(What::FileVersion(FILE_VERSION.into())));
        assert_eq!(bytes.len(), 12 + len + 4);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_zero_scalar_is_still_written() {
        let v = SummaryValue {
            tag: "x".into(),
            value: Some(ValueKind::SimpleValue(0.0)),
        };
        // tag (field 1, "x") then simple_value (field 2, fixed32 0.0).
        assert_eq!(v.encode_to_vec(), vec![0x0a, 0x01, b'x', 0x15, 0, 0, 0, 0]);
    }
}
