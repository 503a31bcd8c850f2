//! SLEAP labels in memory, as sleap-io models them: skeletons, videos, labeled frames holding
//! user-labeled and predicted instances, and tracks. Coordinates are pixels in the frame's image,
//! x to the right and y down, with (0, 0) the centre of the top-left pixel, as in SLEAP.

/// Nodes and the edges between them (indices into `nodes`).
#[derive(Debug, Clone, PartialEq)]
pub struct Skeleton {
    pub name: String,
    pub nodes: Vec<String>,
    /// Directed edges (source, destination).
    pub edges: Vec<(usize, usize)>,
    /// Left/right pairs, for flip augmentation.
    pub symmetries: Vec<(usize, usize)>,
}

/// Where a video's frames come from.
#[derive(Debug, Clone, PartialEq)]
pub enum VideoSource {
    /// Frames embedded in the labels file (`.pkg.slp`): an HDF5 dataset of encoded images
    /// (`dataset`, e.g. `video0/video`), with the frame numbers each entry holds.
    Embedded {
        /// The HDF5 file holding the frames: the labels file itself, or another `.pkg.slp`
        /// that a predictions file refers to.
        file: std::path::PathBuf,
        dataset: String,
        /// `format` attribute: "png" or "jpg".
        format: String,
        frame_numbers: Vec<u64>,
    },
    /// A list of image files, one per frame.
    ImageSequence { files: Vec<String> },
    /// A media file (mp4, avi, ...) or an HDF5 video outside the labels file.
    External {
        filename: String,
        /// sleap-io's backend type: "MediaVideo", "HDF5Video", "TiffVideo", ...
        backend: String,
        /// The dataset inside an HDF5 video.
        dataset: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    /// The filename the labels file records (for an embedded video, its original source).
    pub filename: String,
    pub source: VideoSource,
    /// (frames, height, width, channels) where the labels file records it.
    pub shape: Option<[usize; 4]>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InstanceKind {
    /// Labeled by a person (ground truth).
    User,
    /// Predicted by a model, with the instance's score.
    Predicted { score: f32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Index into [`Labels::skeletons`].
    pub skeleton: usize,
    /// One point per skeleton node: (x, y), NaN for a node that is not visible/labeled.
    pub points: Vec<[f64; 2]>,
    /// Per-node scores for predicted instances (empty for user instances).
    pub point_scores: Vec<f64>,
    pub kind: InstanceKind,
    /// Index into [`Labels::tracks`].
    pub track: Option<usize>,
    pub tracking_score: f32,
}

impl Instance {
    pub fn is_user(&self) -> bool {
        matches!(self.kind, InstanceKind::User)
    }
    /// Whether node `n` has a position.
    pub fn visible(&self, n: usize) -> bool {
        self.points
            .get(n)
            .is_some_and(|p| p[0].is_finite() && p[1].is_finite())
    }
    pub fn n_visible(&self) -> usize {
        (0..self.points.len()).filter(|&n| self.visible(n)).count()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LabeledFrame {
    /// Index into [`Labels::videos`].
    pub video: usize,
    pub frame_idx: u64,
    pub instances: Vec<Instance>,
}

impl LabeledFrame {
    pub fn user_instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(|i| i.is_user())
    }
    pub fn predicted_instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(|i| !i.is_user())
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labels {
    pub skeletons: Vec<Skeleton>,
    pub videos: Vec<Video>,
    pub frames: Vec<LabeledFrame>,
    pub tracks: Vec<String>,
}

/// A decoded frame: `height × width × channels` bytes, row-major, channels last (1 or 3).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}
