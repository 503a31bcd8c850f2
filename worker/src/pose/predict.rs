//! Prediction with trained pose models (sleap-nn's `track` without tracking): a single-instance
//! model finds each node's global peak per frame; a centroid model and a centered-instance model
//! together run top-down — centroids as local peaks of the centroid map, then each instance's
//! nodes in a crop around its centroid. Peaks are refined to sub-pixel positions by integral
//! regression, as sleap-nn does by default, and mapped back to the frame's pixels.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use configs::SleapNnConfig;
use data::pose::dataset::{crop_at, HeadTargets, PoseSpec};
use data::pose::peaks::{global_peaks, local_peaks, Refinement};
use data::pose::slp::{media, read_labels, tiff, to_grayscale_if, SlpImages};
use data::pose::{
    Image, Instance, InstanceKind, LabeledFrame, Labels, Skeleton, Video, VideoSource,
};
use kernels::backend::ConvDevice;
use kernels::Precision;

use super::spec;
use super::unet::{UNetModel, UNetRun};
use crate::checkpoint;

/// A trained model loaded from a checkpoint.
pub struct TrainedPose {
    pub dir: PathBuf,
    pub cfg: SleapNnConfig,
    pub skeleton: Skeleton,
    pub spec: PoseSpec,
    pub model: UNetModel,
    pub params: Vec<f32>,
}

/// The checkpoint a `--model` path names: a checkpoint, a run's `checkpoints/` directory or the
/// run directory itself; in a directory of checkpoints `best` wins, then the newest.
pub fn resolve_model_dir(path: &Path) -> anyhow::Result<PathBuf> {
    if path.join(checkpoint::MANIFEST).exists() {
        return Ok(path.to_path_buf());
    }
    let dir = if path.join("checkpoints").is_dir() {
        path.join("checkpoints")
    } else {
        path.to_path_buf()
    };
    if dir.join("best").join(checkpoint::MANIFEST).exists() {
        return Ok(dir.join("best"));
    }
    checkpoint::resolve_resume(&dir).with_context(|| format!("--model {}", path.display()))
}

impl TrainedPose {
    pub fn load(path: &Path) -> anyhow::Result<TrainedPose> {
        let dir = resolve_model_dir(path)?;
        let files = checkpoint::verify(&dir)?;
        let text = |name: &str| -> anyhow::Result<String> {
            let bytes = files.get(name).ok_or_else(|| {
                anyhow!(
                    "checkpoint {}: no {name} (not a pose model?)",
                    dir.display()
                )
            })?;
            Ok(String::from_utf8_lossy(bytes).into_owned())
        };
        let cfg: SleapNnConfig = configs::Sources::from_str(&text("config.yaml")?, "config.yaml")
            .and_then(|s| s.load_as())
            .map_err(|e| anyhow!("checkpoint {}: config.yaml: {e}", dir.display()))?;
        let sk: serde_json::Value = serde_json::from_str(&text("skeleton.json")?)
            .with_context(|| format!("checkpoint {}: skeleton.json", dir.display()))?;
        let pairs = |v: &serde_json::Value| -> Vec<(usize, usize)> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| Some((p[0].as_u64()? as usize, p[1].as_u64()? as usize)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let skeleton = Skeleton {
            name: sk["name"].as_str().unwrap_or("skeleton").to_string(),
            nodes: sk["nodes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            edges: pairs(&sk["edges"]),
            symmetries: pairs(&sk["symmetries"]),
        };
        let crop = cfg.data_config.preprocessing.crop_size.unwrap_or(0);
        let built = spec::build(&cfg, &skeleton, crop)
            .map_err(|e| anyhow!("checkpoint {}: {e}", dir.display()))?;
        let model = UNetModel::new(built.plan, Precision::F32);
        let loaded = checkpoint::load(&dir, model.layout())?;
        Ok(TrainedPose {
            dir,
            cfg,
            skeleton,
            spec: built.spec,
            model,
            params: loaded.params,
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PredictOptions {
    /// Peaks below this confidence are not reported (sleap-nn's default 0.2).
    pub peak_threshold: f32,
    /// Integral refinement window (sleap-nn's default 5).
    pub integral_patch: usize,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            peak_threshold: 0.2,
            integral_patch: 5,
        }
    }
}

/// The models of one prediction: a single-instance model, or centroid + centered instance.
#[allow(clippy::large_enum_variant)] // one per prediction run
pub enum Pipeline {
    SingleInstance(TrainedPose),
    TopDown {
        centroid: TrainedPose,
        instance: TrainedPose,
    },
}

impl Pipeline {
    pub fn from_models(mut models: Vec<TrainedPose>) -> anyhow::Result<Pipeline> {
        let kind = |m: &TrainedPose| match m.spec.head {
            HeadTargets::SingleInstance { .. } => 0,
            HeadTargets::Centroid { .. } => 1,
            HeadTargets::CenteredInstance { .. } => 2,
        };
        models.sort_by_key(kind);
        match models.len() {
            1 if kind(&models[0]) == 0 => Ok(Pipeline::SingleInstance(models.remove(0))),
            2 if kind(&models[0]) == 1 && kind(&models[1]) == 2 => {
                let instance = models.remove(1);
                let centroid = models.remove(0);
                Ok(Pipeline::TopDown { centroid, instance })
            }
            _ => bail!(
                "--model: give one single_instance model, or a centroid model and a centered_instance \
                 model (top-down); got {}",
                models.iter().map(|m| format!("{} ({})", m.dir.display(), head_name(m))).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    fn skeleton(&self) -> &Skeleton {
        match self {
            Pipeline::SingleInstance(m) => &m.skeleton,
            Pipeline::TopDown { instance, .. } => &instance.skeleton,
        }
    }
}

fn head_name(m: &TrainedPose) -> &'static str {
    match m.spec.head {
        HeadTargets::SingleInstance { .. } => "single_instance",
        HeadTargets::Centroid { .. } => "centroid",
        HeadTargets::CenteredInstance { .. } => "centered_instance",
    }
}

/// The instance a model's node maps give: one point per skeleton node (NaN where the model has
/// no map or no peak above threshold), with per-node scores.
#[allow(clippy::too_many_arguments)]
fn instance_from(
    maps: &[f32],
    nodes: &[usize],
    n_nodes: usize,
    gh: usize,
    gw: usize,
    stride: usize,
    to_frame: impl Fn([f64; 2]) -> [f64; 2],
    score: Option<f32>,
    o: &PredictOptions,
) -> anyhow::Result<Instance> {
    let peaks = global_peaks(
        maps,
        nodes.len(),
        gh,
        gw,
        o.peak_threshold,
        Refinement::Integral,
        o.integral_patch,
    )?;
    let mut points = vec![[f64::NAN; 2]; n_nodes];
    let mut scores = vec![0.0; n_nodes];
    for (p, &n) in peaks.iter().zip(nodes) {
        if p.x.is_finite() && p.y.is_finite() {
            points[n] = to_frame([p.x as f64 * stride as f64, p.y as f64 * stride as f64]);
        }
        scores[n] = p.score as f64;
    }
    let mean = scores.iter().sum::<f64>() / n_nodes.max(1) as f64;
    Ok(Instance {
        skeleton: 0,
        points,
        point_scores: scores,
        kind: InstanceKind::Predicted {
            score: score.unwrap_or(mean as f32),
        },
        track: None,
        tracking_score: 0.0,
    })
}

/// Predicts every labeled frame of `data_path` (a labels file), or the frames of it when it is
/// a media file or TIFF stack ([`predict_video`]). The result has the input's videos and the
/// model's skeleton, with predicted instances only. `frames` (ascending, distinct; sleap-nn's
/// `--frames`, see [`parse_frames`]) are asked of videos only: with a labels file they are an
/// error. The models run on the compute device `dev` (their parameters copied there; the peaks are
/// found on the host from the maps).
pub fn predict_on<D: ConvDevice<f32>>(
    dev: &D,
    pipe: &Pipeline,
    data_path: &Path,
    frames: Option<&[u64]>,
    o: &PredictOptions,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<Labels> {
    if media::is_media_file(data_path) || tiff::is_tiff_file(data_path) {
        return predict_video(dev, pipe, data_path, frames, o, progress);
    }
    if frames.is_some() {
        bail!(
            "--frames selects frames of a video; {} is a labels file, whose labeled frames are \
             predicted",
            data_path.display()
        );
    }
    let skeleton = pipe.skeleton().clone();
    let mut runs = Runs::new(pipe, dev);
    let input = read_labels(data_path)?;
    let images = SlpImages::open(data_path, &input)?;
    if let Some(s) = input.skeletons.first() {
        if s.nodes != skeleton.nodes {
            bail!(
                "{}: its skeleton's nodes {:?} differ from the model's {:?}",
                data_path.display(),
                s.nodes,
                skeleton.nodes
            );
        }
    }
    let mut out = Labels {
        skeletons: vec![skeleton],
        videos: input.videos.clone(),
        frames: Vec::new(),
        tracks: Vec::new(),
    };
    let total = input.frames.len();
    for (i, lf) in input.frames.iter().enumerate() {
        let img = images.frame(lf.video, lf.frame_idx)?;
        out.frames.push(LabeledFrame {
            video: lf.video,
            frame_idx: lf.frame_idx,
            instances: runs.instances(&img, o)?,
        });
        progress(i + 1, total);
    }
    Ok(out)
}

/// Every frame of the media file (decoded by ffmpeg) or TIFF stack `path` (or only `frames`), streamed:
/// memory stays one frame. The predictions refer to the video itself.
fn predict_video<D: ConvDevice<f32>>(
    dev: &D,
    pipe: &Pipeline,
    path: &Path,
    wanted: Option<&[u64]>,
    o: &PredictOptions,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<Labels> {
    let mut runs = Runs::new(pipe, dev);
    // For progress only: a container ffmpeg cannot count without decoding reports 0 (unknown)
    // and the frames are predicted all the same.
    let stack = tiff::is_tiff_file(path);
    let count = || {
        if stack {
            tiff::count_pages(path)
        } else {
            media::count_frames(path)
        }
    };
    let total = match wanted {
        Some(f) => f.len() as u64,
        None => count().unwrap_or(0),
    };
    let mut frames = Vec::with_capacity(total as usize);
    let mut shape = None;
    // As sleap-io: a video is grayscale when its first frame's first and last channels are
    // equal, and then every frame keeps its first channel.
    let mut grayscale = None;
    let each = |i: u64, img: Image| {
        let gray =
            *grayscale.get_or_insert_with(|| to_grayscale_if(img.clone(), None).channels == 1);
        let img = to_grayscale_if(img, Some(gray));
        shape.get_or_insert([img.height, img.width, img.channels]);
        let instances = runs
            .instances(&img, o)
            .map_err(|e| format!("frame {i}: {e:#}"))?;
        frames.push(LabeledFrame {
            video: 0,
            frame_idx: i,
            instances,
        });
        progress(frames.len(), total as usize);
        Ok(())
    };
    match (stack, wanted) {
        (true, w) => tiff::for_each_page(path, w, each).map(|_| ()),
        (false, Some(w)) => media::for_each_selected(path, w, each),
        (false, None) => media::for_each_frame(path, each).map(|_| ()),
    }
    .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    // The video's own length for its recorded shape (unknown: left for readers to probe).
    let video_frames = match wanted {
        Some(_) => count().ok().map(|n| n as usize),
        None => Some(frames.len()),
    };
    let filename = std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string();
    Ok(Labels {
        skeletons: vec![pipe.skeleton().clone()],
        videos: vec![Video {
            filename: filename.clone(),
            source: VideoSource::External {
                filename,
                backend: if stack { "TiffVideo" } else { "MediaVideo" }.into(),
                dataset: None,
            },
            shape: shape.zip(video_frames).map(|(s, n)| [n, s[0], s[1], s[2]]),
        }],
        frames,
        tracks: Vec::new(),
    })
}

/// sleap-nn's `--frames`: comma-separated frame indices and inclusive ranges (`0-99,150`),
/// returned ascending without repeats.
pub fn parse_frames(spec: &str) -> anyhow::Result<Vec<u64>> {
    let bad = |item: &str| {
        anyhow!("--frames {spec:?}: {item:?} is not a frame index or a range like 0-99")
    };
    let mut frames = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (
                    a.trim().parse().map_err(|_| bad(item))?,
                    b.trim().parse().map_err(|_| bad(item))?,
                );
                if a > b {
                    return Err(bad(item));
                }
                frames.extend(a..=b);
            }
            None => frames.push(item.parse().map_err(|_| bad(item))?),
        }
    }
    if frames.is_empty() {
        bail!("--frames {spec:?} names no frames");
    }
    frames.sort_unstable();
    frames.dedup();
    Ok(frames)
}

/// The pipeline's models on a device, with their parameters there and their forward buffers,
/// run frame by frame. (One per `predict` call, so the variants' sizes do not matter.)
#[allow(clippy::large_enum_variant)]
enum Runs<'p, D: ConvDevice<f32>> {
    SingleInstance {
        m: &'p TrainedPose,
        params: D::Mem,
        run: UNetRun<'p, D>,
    },
    TopDown {
        centroid: &'p TrainedPose,
        instance: &'p TrainedPose,
        cparams: D::Mem,
        iparams: D::Mem,
        crun: UNetRun<'p, D>,
        irun: UNetRun<'p, D>,
    },
}

impl<'p, D: ConvDevice<f32>> Runs<'p, D> {
    fn new(pipe: &'p Pipeline, dev: &'p D) -> Self {
        match pipe {
            Pipeline::SingleInstance(m) => Runs::SingleInstance {
                m,
                params: dev.upload(&m.params),
                run: UNetRun::new(&m.model, dev),
            },
            Pipeline::TopDown { centroid, instance } => Runs::TopDown {
                centroid,
                instance,
                cparams: dev.upload(&centroid.params),
                iparams: dev.upload(&instance.params),
                crun: UNetRun::new(&centroid.model, dev),
                irun: UNetRun::new(&instance.model, dev),
            },
        }
    }

    /// The predicted instances of one frame, in the frame's pixels.
    fn instances(&mut self, img: &Image, o: &PredictOptions) -> anyhow::Result<Vec<Instance>> {
        match self {
            Runs::SingleInstance { m, params, run } => {
                let HeadTargets::SingleInstance { nodes } = &m.spec.head else {
                    unreachable!()
                };
                let n_nodes = m.skeleton.nodes.len();
                let s = m.spec.preprocess.apply(img, &[]);
                run.forward(params, &s.image, 1, s.height, s.width)?;
                let (maps, (k, gh, gw)) = run.maps().expect("after forward");
                let maps = run.device().read(maps, 0..k * gh * gw);
                let scale = s.scale;
                Ok(vec![instance_from(
                    &maps,
                    nodes,
                    n_nodes,
                    gh,
                    gw,
                    m.spec.output_stride,
                    |p| [p[0] / scale, p[1] / scale],
                    None,
                    o,
                )?])
            }
            Runs::TopDown {
                centroid,
                instance,
                cparams,
                iparams,
                crun,
                irun,
            } => {
                let HeadTargets::CenteredInstance { nodes, crop, .. } = &instance.spec.head else {
                    unreachable!()
                };
                let n_nodes = instance.skeleton.nodes.len();
                let sc = centroid.spec.preprocess.apply(img, &[]);
                crun.forward(cparams, &sc.image, 1, sc.height, sc.width)?;
                let (cmap, (k, gh, gw)) = crun.maps().expect("after forward");
                let cmap = crun.device().read(cmap, 0..k * gh * gw);
                let peaks = local_peaks(
                    &cmap,
                    gh,
                    gw,
                    o.peak_threshold,
                    Refinement::Integral,
                    o.integral_patch,
                )?;
                let si = instance.spec.preprocess.apply(img, &[]);
                let mut instances = Vec::new();
                for p in peaks {
                    let stride = centroid.spec.output_stride as f64;
                    // Centroid in frame pixels, then in the instance model's input.
                    let c = [
                        p.x as f64 * stride / sc.scale,
                        p.y as f64 * stride / sc.scale,
                    ];
                    let ci = [c[0] * si.scale, c[1] * si.scale];
                    let (window, origin) =
                        crop_at(&si.image, si.channels, si.height, si.width, ci, *crop);
                    irun.forward(iparams, &window, 1, *crop, *crop)?;
                    let (maps, (k, mh, mw)) = irun.maps().expect("after forward");
                    let maps = irun.device().read(maps, 0..k * mh * mw);
                    let scale = si.scale;
                    let to_frame = |q: [f64; 2]| {
                        [
                            (q[0] + origin[0] as f64) / scale,
                            (q[1] + origin[1] as f64) / scale,
                        ]
                    };
                    instances.push(instance_from(
                        &maps,
                        nodes,
                        n_nodes,
                        mh,
                        mw,
                        instance.spec.output_stride,
                        to_frame,
                        Some(p.score),
                        o,
                    )?);
                }
                Ok(instances)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_as_sleap_nn_writes_them() {
        assert_eq!(parse_frames("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_frames("5,1,2").unwrap(), vec![1, 2, 5]);
        assert_eq!(parse_frames("8-9, 2,9").unwrap(), vec![2, 8, 9]);
        for bad in ["", "a", "3-1", "1-", "-2", "1.5"] {
            assert!(parse_frames(bad).is_err(), "{bad:?}");
        }
    }
}
