//! SLEAP labels as training samples for a confidence-map model: which frames (or instances)
//! are samples, the train/validation split, and a batch of network inputs with their target
//! maps, as sleap-nn's datasets build them for its single_instance, centroid and
//! centered_instance heads.
//!
//! A sample is a labeled frame with at least one user instance (`user_instances_only`, the
//! default) — or, for centered_instance, one such instance of a frame. Frames are decoded on
//! request (nothing is cached: `data_pipeline_fw` caching modes give the same samples, just
//! faster or slower), preprocessed ([`super::frame`]), augmented ([`super::augment`]) and turned
//! into maps ([`super::targets`]).

use std::path::{Path, PathBuf};

use super::augment::Augmenter;
use super::frame::{drop_out_of_bounds, Preprocess, Sample};
use super::slp::{read_labels, SlpImages};
use super::targets::{centroid, confmaps, multi_confmaps, CentroidRule};
use super::{Labels, Skeleton};
use crate::error::{DataError, Result};
use crate::rng::{key, CounterRng, Stream};

/// What the head predicts, with the nodes (indices into the skeleton) it has maps for.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadTargets {
    /// One map per node for the frame's one animal (the first user instance).
    SingleInstance { nodes: Vec<usize> },
    /// One map with a peak at every instance's centroid.
    Centroid { rule: CentroidRule },
    /// One map per node for the instance centred in a `crop × crop` window.
    CenteredInstance {
        nodes: Vec<usize>,
        rule: CentroidRule,
        crop: usize,
    },
}

impl HeadTargets {
    pub fn channels(&self) -> usize {
        match self {
            HeadTargets::SingleInstance { nodes } | HeadTargets::CenteredInstance { nodes, .. } => {
                nodes.len()
            }
            HeadTargets::Centroid { .. } => 1,
        }
    }
}

/// How samples are made.
#[derive(Debug, Clone, PartialEq)]
pub struct PoseSpec {
    pub head: HeadTargets,
    /// In output-grid cells (sleap-nn's meaning).
    pub sigma: f64,
    pub output_stride: usize,
    pub preprocess: Preprocess,
    /// Applied to training samples only.
    pub augment: Option<Augmenter>,
    pub user_instances_only: bool,
    pub seed: u64,
    /// Keep decoded frames in memory after their first use (`data_pipeline_fw:
    /// torch_dataset_cache_img_memory`); otherwise every use decodes the frame again. The
    /// samples are the same either way.
    pub cache_frames: bool,
}

/// One sample: a labeled frame of a file, and for centered-instance models one of its
/// instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub source: usize,
    pub frame: usize,
    pub instance: usize,
}

struct Source {
    path: PathBuf,
    labels: Labels,
    images: SlpImages,
    /// Decoded frames by labeled-frame index, when caching.
    cache: std::sync::Mutex<std::collections::HashMap<usize, std::sync::Arc<super::Image>>>,
}

/// Network inputs and targets of several samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoseBatch {
    /// [n, channels, height, width], 0–1.
    pub images: Vec<f32>,
    /// [n, maps, map_height, map_width].
    pub targets: Vec<f32>,
    pub n: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub maps: usize,
    pub map_height: usize,
    pub map_width: usize,
}

pub struct PoseDataset {
    sources: Vec<Source>,
    pub spec: PoseSpec,
    items: Vec<Item>,
}

impl PoseDataset {
    /// Opens the labels files; every one must have the first one's skeleton.
    pub fn open(paths: &[PathBuf], spec: PoseSpec) -> Result<PoseDataset> {
        let mut sources = Vec::new();
        for path in paths {
            let labels = read_labels(path)?;
            let images = SlpImages::open(path, &labels)?;
            sources.push(Source {
                path: path.clone(),
                labels,
                images,
                cache: Default::default(),
            });
        }
        let Some(first) = sources.first() else {
            return Err(DataError::Config("no labels files given".into()));
        };
        let skeleton =
            first
                .labels
                .skeletons
                .first()
                .cloned()
                .ok_or_else(|| DataError::Invalid {
                    path: first.path.clone(),
                    object: "metadata".into(),
                    problem: "the labels have no skeleton".into(),
                })?;
        for s in &sources[1..] {
            if s.labels.skeletons.first().map(|k| &k.nodes) != Some(&skeleton.nodes) {
                return Err(DataError::Invalid {
                    path: s.path.clone(),
                    object: "metadata".into(),
                    problem: format!(
                        "its skeleton differs from {}'s (nodes {:?})",
                        first.path.display(),
                        skeleton.nodes
                    ),
                });
            }
        }
        let mut ds = PoseDataset {
            sources,
            spec,
            items: Vec::new(),
        };
        ds.items = ds.enumerate_items();
        if ds.items.is_empty() {
            return Err(DataError::Config(format!(
                "{}: no labeled frame has a {}instance with a visible node to train on",
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if ds.spec.user_instances_only {
                    "user "
                } else {
                    ""
                }
            )));
        }
        Ok(ds)
    }

    /// The same labels under another spec, its samples enumerated anew; nothing is read again
    /// (the spec can depend on the labels: their skeleton, the crop size their instances need).
    pub fn with_spec(mut self, spec: PoseSpec) -> PoseDataset {
        self.spec = spec;
        self.items = self.enumerate_items();
        self
    }

    pub fn skeleton(&self) -> &Skeleton {
        &self.sources[0].labels.skeletons[0]
    }

    pub fn labels(&self, source: usize) -> &Labels {
        &self.sources[source].labels
    }

    pub fn path(&self, source: usize) -> &Path {
        &self.sources[source].path
    }

    /// Every sample, in file and frame order.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// The instances of a frame that count as labels.
    fn instances(&self, source: usize, frame: usize) -> Vec<&super::Instance> {
        self.sources[source].labels.frames[frame]
            .instances
            .iter()
            .filter(|i| (i.is_user() || !self.spec.user_instances_only) && i.n_visible() > 0)
            .collect()
    }

    fn enumerate_items(&self) -> Vec<Item> {
        let mut items = Vec::new();
        for (si, s) in self.sources.iter().enumerate() {
            for fi in 0..s.labels.frames.len() {
                let n = self.instances(si, fi).len();
                let per_instance = matches!(self.spec.head, HeadTargets::CenteredInstance { .. });
                match (n, per_instance) {
                    (0, _) => {}
                    (n, true) => items.extend((0..n).map(|i| Item {
                        source: si,
                        frame: fi,
                        instance: i,
                    })),
                    (_, false) => items.push(Item {
                        source: si,
                        frame: fi,
                        instance: 0,
                    }),
                }
            }
        }
        items
    }

    /// The decoded frame of a sample (from the cache when caching).
    fn frame_image(&self, item: &Item) -> Result<std::sync::Arc<super::Image>> {
        let src = &self.sources[item.source];
        let lf = &src.labels.frames[item.frame];
        if !self.spec.cache_frames {
            return Ok(std::sync::Arc::new(
                src.images.frame(lf.video, lf.frame_idx)?,
            ));
        }
        if let Some(img) = src
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(&item.frame).cloned())
        {
            return Ok(img);
        }
        let img = std::sync::Arc::new(src.images.frame(lf.video, lf.frame_idx)?);
        if let Ok(mut c) = src.cache.lock() {
            c.insert(item.frame, img.clone());
        }
        Ok(img)
    }

    /// One sample's input and target maps; `augment_key` (epoch, position) augments it.
    pub fn sample(
        &self,
        item: &Item,
        augment_key: Option<(u64, u64)>,
    ) -> Result<(Sample, Vec<f32>)> {
        let img = self.frame_image(item)?;
        let instances: Vec<Vec<[f64; 2]>> = self
            .instances(item.source, item.frame)
            .iter()
            .map(|i| i.points.clone())
            .collect();
        let mut s = self.spec.preprocess.apply(&img, &instances);
        if let HeadTargets::CenteredInstance { rule, crop, .. } = &self.spec.head {
            crop_to_instance(&mut s, item.instance, *rule, *crop);
        }
        if let (Some(aug), Some((epoch, pos))) = (&self.spec.augment, augment_key) {
            let mut rng = CounterRng::new(self.spec.seed, Stream::Augment, &[epoch, pos]);
            aug.apply(&mut s, &mut rng);
        }
        drop_out_of_bounds(&mut s.instances, s.height, s.width);
        let (h, w, sigma, os) = (s.height, s.width, self.spec.sigma, self.spec.output_stride);
        let pick = |inst: &Vec<[f64; 2]>, nodes: &[usize]| -> Vec<[f64; 2]> {
            nodes
                .iter()
                .map(|&n| inst.get(n).copied().unwrap_or([f64::NAN; 2]))
                .collect()
        };
        let mut maps = Vec::new();
        match &self.spec.head {
            HeadTargets::SingleInstance { nodes } => {
                let first = s
                    .instances
                    .first()
                    .map(|i| pick(i, nodes))
                    .unwrap_or_default();
                confmaps(&mut maps, &first, h, w, sigma, os);
            }
            HeadTargets::CenteredInstance { nodes, .. } => {
                let inst = s
                    .instances
                    .get(item.instance)
                    .map(|i| pick(i, nodes))
                    .unwrap_or_default();
                confmaps(&mut maps, &inst, h, w, sigma, os);
            }
            HeadTargets::Centroid { rule } => {
                let centroids: Vec<Vec<[f64; 2]>> = s
                    .instances
                    .iter()
                    .filter_map(|i| centroid(i, *rule))
                    .map(|c| vec![c])
                    .collect();
                multi_confmaps(&mut maps, &centroids, 1, h, w, sigma, os);
            }
        }
        Ok((s, maps))
    }

    /// A batch of `items`; with `augment_epoch`, each is augmented keyed by (epoch, its index in
    /// the epoch's order, `positions[i]`).
    pub fn batch(
        &self,
        items: &[Item],
        positions: &[u64],
        augment_epoch: Option<u64>,
    ) -> Result<PoseBatch> {
        let mut b = PoseBatch::default();
        for (k, item) in items.iter().enumerate() {
            let (s, maps) = self.sample(item, augment_epoch.map(|e| (e, positions[k])))?;
            if k == 0 {
                b.channels = s.channels;
                b.height = s.height;
                b.width = s.width;
                b.maps = self.spec.head.channels();
                b.map_height = s.height.div_ceil(self.spec.output_stride);
                b.map_width = s.width.div_ceil(self.spec.output_stride);
            } else if (s.channels, s.height, s.width) != (b.channels, b.height, b.width) {
                let lf = &self.sources[item.source].labels.frames[item.frame];
                return Err(DataError::Invalid {
                    path: self.sources[item.source].path.clone(),
                    object: format!("video {} frame {}", lf.video, lf.frame_idx),
                    problem: format!(
                        "preprocessed to {} x {} x {}, while the batch's first frame is {} x {} x {}; \
                         frames of one batch must match: set data_config.preprocessing.max_height \
                         and max_width (and ensure_rgb or ensure_grayscale)",
                        s.channels, s.height, s.width, b.channels, b.height, b.width
                    ),
                });
            }
            b.images.extend_from_slice(&s.image);
            b.targets.extend_from_slice(&maps);
            b.n += 1;
        }
        Ok(b)
    }
}

/// Cuts the `crop × crop` window centred on instance `i`'s centroid and moves every instance's
/// points into it.
fn crop_to_instance(s: &mut Sample, i: usize, rule: CentroidRule, crop: usize) {
    let c = s
        .instances
        .get(i)
        .and_then(|p| centroid(p, rule))
        .unwrap_or([0.0, 0.0]);
    let (image, origin) = crop_at(&s.image, s.channels, s.height, s.width, c, crop);
    s.image = image;
    s.height = crop;
    s.width = crop;
    for p in s.instances.iter_mut().flatten() {
        p[0] -= origin[0] as f64;
        p[1] -= origin[1] as f64;
    }
}

/// The `crop × crop` window of a [channels, h, w] image whose top-left pixel is
/// round(centre − crop/2) (pixels outside the frame are black), and that top-left pixel: a
/// point p of the frame is p − origin in the crop. Training and prediction crop alike.
pub fn crop_at(
    image: &[f32],
    channels: usize,
    h: usize,
    w: usize,
    centre: [f64; 2],
    crop: usize,
) -> (Vec<f32>, [isize; 2]) {
    let x0 = (centre[0] - crop as f64 / 2.0).round() as isize;
    let y0 = (centre[1] - crop as f64 / 2.0).round() as isize;
    let mut out = vec![0.0f32; channels * crop * crop];
    for ch in 0..channels {
        for y in 0..crop {
            let sy = y0 + y as isize;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x in 0..crop {
                let sx = x0 + x as isize;
                if sx >= 0 && sx < w as isize {
                    out[(ch * crop + y) * crop + x] =
                        image[(ch * h + sy as usize) * w + sx as usize];
                }
            }
        }
    }
    (out, [x0, y0])
}

/// Splits sample indices into (train, validation): a seeded random `fraction` of the frames
/// for validation (at least one when there are two or more), as sleap-nn's random split.
/// Instances of one frame stay on one side.
pub fn split(items: &[Item], fraction: f64, seed: u64) -> (Vec<Item>, Vec<Item>) {
    let mut frames: Vec<(usize, usize)> = items.iter().map(|i| (i.source, i.frame)).collect();
    frames.dedup();
    let mut keyed: Vec<(u64, (usize, usize))> = frames
        .iter()
        .map(|&(s, f)| (key(seed, Stream::Split, &[s as u64, f as u64]), (s, f)))
        .collect();
    keyed.sort();
    let n_val = if frames.len() >= 2 {
        ((frames.len() as f64 * fraction).round() as usize).clamp(1, frames.len() - 1)
    } else {
        0
    };
    let val: std::collections::HashSet<(usize, usize)> =
        keyed[..n_val].iter().map(|k| k.1).collect();
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for it in items {
        if val.contains(&(it.source, it.frame)) {
            valid.push(*it);
        } else {
            train.push(*it);
        }
    }
    (train, valid)
}
