//! The sleap-nn configuration family (animal pose estimation). Sections, fields, types and
//! defaults follow sleap-nn 0.3.5's config classes (PyPI `sleap-nn`), which extend the early
//! configuration guide and win where the two differ; `configs/tests/fixtures/sleap_nn_0.3.5/`
//! holds configs written by sleap-nn's own code (`scripts/sleap_nn_configs.py`), all of which
//! load here.
//!
//! A config names exactly one backbone (`unet`, `convnext`, `swint`, `pretrained`) and exactly
//! one head type; the others are null. [`SleapNnConfig::validate`] checks that, the strides
//! and the ranges sleap-nn enforces; [`SleapNnConfig::resolved`] applies the stride changes
//! sleap-nn makes before building a model. anvil trains no sleap-nn model yet, so every field
//! is accepted at load and `coordinator launch` refuses the whole config.

use crate::schema::{join, map_entries, Ctx, FromNode, ToValue, Value};
use crate::tree::{Node, NodeKind};
use crate::{choice, section};

choice! {
    /// Reader for the input labels; only LabelsReader exists for training.
    pub enum Provider { LabelsReader = "LabelsReader" }
}
choice! {
    /// How samples reach the data loaders.
    pub enum DataPipelineFw {
        TorchDataset = "torch_dataset",
        TorchDatasetCacheImgMemory = "torch_dataset_cache_img_memory",
        TorchDatasetCacheImgDisk = "torch_dataset_cache_img_disk",
    }
}
choice! {
    /// "default" is Kaiming-uniform, "xavier" is Xavier initialization.
    pub enum InitWeights { Default = "default", Xavier = "xavier" }
}
choice! {
    pub enum ConvNextModelType { Tiny = "tiny", Small = "small", Base = "base", Large = "large" }
}
choice! {
    /// ImageNet weights (torchvision names) a ConvNeXt backbone can start from.
    pub enum ConvNextWeights {
        Base = "ConvNeXt_Base_Weights",
        Tiny = "ConvNeXt_Tiny_Weights",
        Small = "ConvNeXt_Small_Weights",
        Large = "ConvNeXt_Large_Weights",
    }
}
choice! {
    pub enum SwinTModelType { Tiny = "tiny", Small = "small", Base = "base" }
}
choice! {
    /// ImageNet weights (torchvision names) a Swin Transformer backbone can start from.
    pub enum SwinTWeights { T = "Swin_T_Weights", S = "Swin_S_Weights", B = "Swin_B_Weights" }
}
choice! {
    pub enum Accelerator { Cpu = "cpu", Gpu = "gpu", Cuda = "cuda", Mps = "mps", Auto = "auto" }
}
choice! {
    pub enum Profiler {
        Advanced = "advanced",
        Passthrough = "passthrough",
        Pytorch = "pytorch",
        Simple = "simple",
    }
}
choice! {
    pub enum OptimizerName { Adam = "Adam", AdamW = "AdamW" }
}
choice! {
    /// Centered-instance crops: a fixed square (`crop_size`) or each instance's bounding box.
    pub enum CropMode { Fixed = "fixed", Bbox = "bbox" }
}
choice! {
    /// How a bounding-box crop is fitted to the model's square input.
    pub enum CropBboxAspect { Square = "square", Letterbox = "letterbox", Stretch = "stretch" }
}
choice! {
    /// Where instance bounding boxes come from.
    pub enum BboxSource { Auto = "auto", Bboxes = "bboxes", Instances = "instances", Masks = "masks" }
}
choice! {
    /// How overlapping tiles are blended back together.
    pub enum TileBlend { Gaussian = "gaussian", Pyramid = "pyramid", Constant = "constant" }
}
choice! {
    pub enum AccumulatorDevice { Auto = "auto", Cpu = "cpu", Cuda = "cuda" }
}
choice! {
    /// Which tiles training samples: around instances, or a regular grid.
    pub enum TileSampling { Foreground = "foreground", Grid = "grid" }
}
choice! {
    /// What identity classes are: track names or identity labels.
    pub enum ClassOutput { Track = "track", Identity = "identity" }
}
choice! {
    /// Whether checkpoints keep the lowest or the highest monitored value.
    pub enum CkptMode { Min = "min", Max = "max" }
}
choice! {
    /// What an embedding model's crops are cut around.
    pub enum DetectionMode { Pose = "pose", Mask = "mask" }
}
choice! {
    /// How ReduceLROnPlateau compares against the best value: relative or absolute margin.
    pub enum ThresholdMode { Rel = "rel", Abs = "abs" }
}

section! {
    /// A whole sleap-nn training job.
    pub struct SleapNnConfig {
        data_config: DataConfig = DataConfig::default(),
        model_config: ModelConfig = ModelConfig::default(),
        trainer_config: TrainerConfig = TrainerConfig::default(),
        name: Option<String> = Some(String::new()),
        description: Option<String> = Some(String::new()),
        sleap_nn_version: Option<String> = Some(String::new()),
        filename: Option<String> = Some(String::new()),
    }
}

// ---------------------------------------------------------------------------------------------
// data_config

section! {
    pub struct DataConfig {
        provider: Provider = Provider::LabelsReader,
        /// `.slp` / `.pkg.slp` files to train on; null when they are given on the command line.
        train_labels_path: Option<Vec<String>> = None,
        /// None: split `validation_fraction` of the training frames off instead.
        val_labels_path: Option<Vec<String>> = None,
        validation_fraction: f64 = 0.1,
        /// Evaluated once training ends (CLI only).
        test_file_path: Option<PathList> = None,
        user_instances_only: bool = true,
        /// Train = val, for intentionally overfitting a handful of frames.
        use_same_data_for_val: bool = false,
        data_pipeline_fw: DataPipelineFw = DataPipelineFw::TorchDataset,
        /// None: `<ckpt_dir>/<run_name>`.
        cache_img_path: Option<String> = None,
        use_existing_imgs: bool = false,
        delete_cache_imgs_after_training: bool = true,
        /// Cache images with several threads.
        parallel_caching: bool = true,
        /// Threads for caching; 0: chosen automatically.
        cache_workers: usize = 0,
        preprocessing: PreprocessingConfig = PreprocessingConfig::default(),
        use_augmentations_train: bool = true,
        /// Only used when `use_augmentations_train` is true. Geometric augmentation (rotation
        /// and scale) is on by default.
        augmentation_config: Option<AugmentationConfig> = Some(AugmentationConfig::default()),
        /// Also train on labeled frames without instances (all-zero targets).
        use_negative_frames: bool = false,
        /// Loss weight of those negative frames.
        negative_loss_weight: f64 = 1.0,
        /// The skeletons of the training labels, as sleap-nn saves them in
        /// `training_config.yaml` (nodes, edges, symmetries, name); None: read from the labels.
        skeletons: Option<Vec<Value>> = None,
        /// What the identity (track) labels can be trusted for.
        identity: Option<IdentityConfig> = None,
        /// Grouped or k-fold train/val splits; None: a random `validation_fraction` of frames.
        split: Option<SplitConfig> = None,
        /// Derive instance centroids from segmentation masks (a method name); None: from points.
        centroids_from_masks: Option<String> = None,
        bbox_source: BboxSource = BboxSource::Auto,
        /// Pixels added around boxes made from keypoints.
        bbox_padding: f64 = 0.0,
    }
}

section! {
    pub struct IdentityConfig {
        tracks_are_proofread: bool = false,
        track_names_are_global: bool = false,
        detections_deduplicated: bool = true,
    }
}

section! {
    pub struct SplitConfig {
        /// "frame", "video" or a grouping key.
        split_by: String = "frame".into(),
        n_folds: usize = 5,
        fold: usize = 0,
        seed: i64 = 0,
    }
}

/// One path or a list of paths (`test_file_path` accepts both).
#[derive(Debug, Clone, PartialEq)]
pub enum PathList {
    One(String),
    Many(Vec<String>),
}

impl PathList {
    pub fn paths(&self) -> Vec<&str> {
        match self {
            PathList::One(p) => vec![p.as_str()],
            PathList::Many(ps) => ps.iter().map(String::as_str).collect(),
        }
    }
}

impl FromNode for PathList {
    fn expected() -> String {
        "a path or a list of paths".into()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        match &node.kind {
            NodeKind::Seq(_) => Vec::<String>::from_node(node, path, cx).map(PathList::Many),
            NodeKind::Scalar { .. } => String::from_node(node, path, cx).map(PathList::One),
            NodeKind::Map(_) => {
                cx.type_error(node, path, &Self::expected());
                None
            }
        }
    }
}

impl ToValue for PathList {
    fn to_value(&self) -> Value {
        match self {
            PathList::One(p) => p.to_value(),
            PathList::Many(ps) => ps.to_value(),
        }
    }
}

section! {
    pub struct PreprocessingConfig {
        /// Replicate single-channel images to 3 channels.
        ensure_rgb: bool = false,
        /// Convert RGB images to one channel.
        ensure_grayscale: bool = false,
        max_height: Option<usize> = None,
        max_width: Option<usize> = None,
        scale: f64 = 1.0,
        /// Instance crop for centered-instance models; None: from the largest instance.
        crop_size: Option<usize> = None,
        min_crop_size: Option<usize> = Some(100),
        /// None: derived from the rotation and scale augmentation ranges.
        crop_padding: Option<usize> = None,
        crop_mode: CropMode = CropMode::Fixed,
        crop_bbox_aspect: CropBboxAspect = CropBboxAspect::Square,
        /// Fraction of the box size added around a bounding-box crop.
        crop_bbox_padding: f64 = 0.1,
        crop_bbox_min_size: Option<f64> = None,
        /// Train and predict on tiles of large frames.
        tiling: TilingConfig = TilingConfig::default(),
        /// Draw the labels into the image (debugging).
        burn_in: bool = false,
        /// Fill of pixels outside the frame in crops.
        background_fill: String = "black".into(),
        crop_centering: String = "auto".into(),
    }
}

section! {
    /// Tiling of large frames; off unless `enabled`.
    pub struct TilingConfig {
        enabled: bool = false,
        tile_size: Option<usize> = None,
        overlap: Option<usize> = None,
        min_overlap_fraction: f64 = 0.25,
        blend: TileBlend = TileBlend::Gaussian,
        sigma_scale: f64 = 0.125,
        tile_batch_size: Option<usize> = None,
        accumulator_device: AccumulatorDevice = AccumulatorDevice::Auto,
        cpu_thresh: f64 = 0.4,
        sampling: TileSampling = TileSampling::Foreground,
        tile_fg_fraction: f64 = 0.5,
        samples_per_frame: Option<usize> = None,
        center_jitter: f64 = 0.5,
        min_visible_keypoints: usize = 1,
        steps_per_epoch: Option<usize> = None,
        full_frame_pass: bool = false,
    }
}

section! {
    /// Written without `geometric`, the default geometric set stays on (as in sleap-nn, whose
    /// loader merges a file over its defaults); `geometric: null` turns it off.
    pub struct AugmentationConfig {
        intensity: Option<IntensityConfig> = None,
        geometric: Option<GeometricConfig> = Some(GeometricConfig::default()),
    }
}

section! {
    pub struct IntensityConfig {
        /// Noise is on the 0-1 intensity scale.
        uniform_noise_min: f64 = 0.0,
        uniform_noise_max: f64 = 0.04,
        uniform_noise_p: f64 = 0.0,
        gaussian_noise_mean: f64 = 0.0,
        gaussian_noise_std: f64 = 0.02,
        gaussian_noise_p: f64 = 0.0,
        contrast_min: f64 = 0.9,
        contrast_max: f64 = 1.1,
        contrast_p: f64 = 0.0,
        brightness_min: f64 = 0.9,
        brightness_max: f64 = 1.1,
        brightness_p: f64 = 0.0,
    }
}

section! {
    pub struct GeometricConfig {
        /// Degrees.
        rotation_min: f64 = -15.0,
        rotation_max: f64 = 15.0,
        scale_min: f64 = 0.9,
        scale_max: f64 = 1.1,
        /// Fractions of the image width / height.
        translate_width: f64 = 0.0,
        translate_height: f64 = 0.0,
        /// Rotation, scale and translation bundled together.
        affine_p: f64 = 0.0,
        /// Independent probabilities; each set one replaces `affine_p` for its transform.
        /// Rotation and scale are applied to every sample by default.
        rotation_p: Option<f64> = Some(1.0),
        scale_p: Option<f64> = Some(1.0),
        translate_p: Option<f64> = None,
        erase_scale_min: f64 = 0.0001,
        erase_scale_max: f64 = 0.01,
        erase_ratio_min: f64 = 1.0,
        erase_ratio_max: f64 = 1.0,
        erase_p: f64 = 0.0,
        mixup_lambda_min: f64 = 0.01,
        mixup_lambda_max: f64 = 0.05,
        mixup_p: f64 = 0.0,
        /// Probability of a horizontal flip (symmetric nodes swap).
        flip_p: f64 = 0.0,
    }
}

// ---------------------------------------------------------------------------------------------
// model_config

section! {
    pub struct ModelConfig {
        init_weights: InitWeights = InitWeights::Default,
        /// A `.ckpt` (or SLEAP `.h5`, UNet only) to initialize the backbone from.
        pretrained_backbone_weights: Option<String> = None,
        pretrained_head_weights: Option<String> = None,
        backbone_config: BackboneConfig = BackboneConfig::default(),
        head_configs: HeadConfigs = HeadConfigs::default(),
        /// The model's parameter count, written by sleap-nn into `training_config.yaml`.
        total_params: Option<usize> = None,
    }
}

section! {
    /// Exactly one of these is set.
    pub struct BackboneConfig {
        unet: Option<UNetConfig> = None,
        convnext: Option<ConvNextConfig> = None,
        swint: Option<SwinTConfig> = None,
        /// A pretrained encoder from a model hub (timm / Hugging Face) with a UNet-style decoder.
        pretrained: Option<PretrainedConfig> = None,
    }
}

section! {
    pub struct PretrainedConfig {
        /// "hf" (Hugging Face) or "timm".
        source: String = "hf".into(),
        model_name: String = "facebook/convnextv2-nano-22k-224".into(),
        /// Load the pretrained weights (false: the architecture only).
        weights: bool = true,
        /// "auto", "encoder" or "decoder".
        mode: String = "auto".into(),
        freeze: bool = false,
        revision: Option<String> = None,
        normalize: bool = true,
        image_mean: Option<Vec<f64>> = None,
        image_std: Option<Vec<f64>> = None,
        out_indices: Option<Vec<usize>> = None,
        in_channels: usize = 3,
        filters_rate: f64 = 2.0,
        convs_per_block: usize = 2,
        kernel_size: usize = 3,
        up_interpolate: bool = true,
        output_stride: usize = 2,
        max_stride: usize = 32,
        layers: Option<Vec<i64>> = None,
        vit_neck: String = "dpt".into(),
        neck_channels: Option<Vec<usize>> = None,
        token_stride: Option<usize> = None,
        gradient_checkpointing: bool = false,
        encoder_lr_scale: f64 = 1.0,
        layer_decay: Option<f64> = None,
        detail_stem: bool = false,
        detail_channels: Option<Vec<usize>> = None,
    }
}

section! {
    pub struct UNetConfig {
        in_channels: usize = 1,
        kernel_size: usize = 3,
        /// Filters of the first block; each further block multiplies by `filters_rate`.
        filters: usize = 32,
        filters_rate: f64 = 1.5,
        /// Sets the number of down blocks: log2(max_stride).
        max_stride: usize = 16,
        /// Extra down blocks for initial downsampling.
        stem_stride: Option<usize> = None,
        middle_block: bool = true,
        up_interpolate: bool = true,
        stacks: usize = 1,
        convs_per_block: usize = 2,
        output_stride: usize = 1,
    }
}

section! {
    pub struct ConvNextConfig {
        pre_trained_weights: Option<ConvNextWeights> = None,
        /// Explicit stage layout; overrides the `model_type` preset when set.
        arch: Option<ConvNextArch> = None,
        model_type: ConvNextModelType = ConvNextModelType::Tiny,
        max_stride: usize = 32,
        stem_patch_kernel: usize = 4,
        stem_patch_stride: usize = 2,
        in_channels: usize = 1,
        kernel_size: usize = 3,
        filters_rate: f64 = 2.0,
        convs_per_block: usize = 2,
        up_interpolate: bool = true,
        output_stride: usize = 1,
    }
}

section! {
    /// ConvNeXt stages: blocks per stage and channels per stage. Defaults are the tiny model.
    pub struct ConvNextArch {
        depths: Vec<usize> = vec![3, 3, 9, 3],
        channels: Vec<usize> = vec![96, 192, 384, 768],
    }
}

impl ConvNextArch {
    pub fn preset(model_type: ConvNextModelType) -> Self {
        let (depths, channels) = match model_type {
            ConvNextModelType::Tiny => (vec![3, 3, 9, 3], vec![96, 192, 384, 768]),
            ConvNextModelType::Small => (vec![3, 3, 27, 3], vec![96, 192, 384, 768]),
            ConvNextModelType::Base => (vec![3, 3, 27, 3], vec![128, 256, 512, 1024]),
            ConvNextModelType::Large => (vec![3, 3, 27, 3], vec![192, 384, 768, 1536]),
        };
        ConvNextArch { depths, channels }
    }
}

impl ConvNextConfig {
    /// The stage layout to build: the explicit `arch`, else the `model_type` preset.
    pub fn resolved_arch(&self) -> ConvNextArch {
        self.arch
            .clone()
            .unwrap_or_else(|| ConvNextArch::preset(self.model_type))
    }
}

section! {
    pub struct SwinTConfig {
        pre_trained_weights: Option<SwinTWeights> = None,
        model_type: SwinTModelType = SwinTModelType::Tiny,
        /// Explicit layout; overrides the `model_type` preset when set.
        arch: Option<SwinTArch> = None,
        max_stride: usize = 32,
        patch_size: usize = 4,
        stem_patch_stride: usize = 2,
        window_size: usize = 7,
        in_channels: usize = 1,
        kernel_size: usize = 3,
        filters_rate: f64 = 2.0,
        convs_per_block: usize = 2,
        up_interpolate: bool = true,
        output_stride: usize = 1,
    }
}

/// Swin Transformer layout: patch embedding width, blocks per stage, attention heads per stage.
///
/// The guide spells the heads key `channels` (`{'embed': 96, 'depths': [2,2,6,2],
/// 'channels': [3, 6, 12, 24]}`); sleap-nn's model code reads `num_heads`. Both are accepted
/// (not together) and the guide's spelling is written back.
#[derive(Debug, Clone, PartialEq)]
pub struct SwinTArch {
    pub embed: usize,
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
}

impl Default for SwinTArch {
    fn default() -> Self {
        SwinTArch::preset(SwinTModelType::Tiny)
    }
}

impl SwinTArch {
    pub const FIELDS: &'static [&'static str] = &["embed", "depths", "channels", "num_heads"];

    pub fn preset(model_type: SwinTModelType) -> Self {
        let (embed, depths, num_heads) = match model_type {
            SwinTModelType::Tiny => (96, vec![2, 2, 6, 2], vec![3, 6, 12, 24]),
            SwinTModelType::Small => (96, vec![2, 2, 18, 2], vec![3, 6, 12, 24]),
            SwinTModelType::Base => (128, vec![2, 2, 18, 2], vec![4, 8, 16, 32]),
        };
        SwinTArch {
            embed,
            depths,
            num_heads,
        }
    }
}

impl FromNode for SwinTArch {
    fn expected() -> String {
        "a mapping (embed, depths, channels)".into()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        let entries = map_entries(node, path, cx, &Self::expected())?;
        let mut out = SwinTArch::default();
        let mut heads_key: Option<&str> = None;
        for (key, value) in entries {
            let child = join(path, &key.text);
            cx.wrote(&child, key.mark);
            match key.text.as_str() {
                "embed" => {
                    if let Some(v) = usize::from_node(value, &child, cx) {
                        out.embed = v;
                    }
                }
                "depths" => {
                    if let Some(v) = Vec::<usize>::from_node(value, &child, cx) {
                        out.depths = v;
                    }
                }
                k @ ("channels" | "num_heads") => {
                    if let Some(first) = heads_key {
                        cx.error_at(
                            &child,
                            key.mark,
                            format!(
                                "`{k}` and `{first}` both give the attention heads per stage; \
                                 write one of them"
                            ),
                        );
                    }
                    heads_key = Some(if k == "channels" {
                        "channels"
                    } else {
                        "num_heads"
                    });
                    if let Some(v) = Vec::<usize>::from_node(value, &child, cx) {
                        out.num_heads = v;
                    }
                }
                other => cx.unknown_key(&child, key.mark, other, Self::FIELDS),
            }
        }
        Some(out)
    }
}

impl ToValue for SwinTArch {
    fn to_value(&self) -> Value {
        Value::Map(vec![
            ("embed".into(), self.embed.to_value()),
            ("depths".into(), self.depths.to_value()),
            ("channels".into(), self.num_heads.to_value()),
        ])
    }
}

impl SwinTConfig {
    /// The layout to build: the explicit `arch`, else the `model_type` preset.
    pub fn resolved_arch(&self) -> SwinTArch {
        self.arch
            .clone()
            .unwrap_or_else(|| SwinTArch::preset(self.model_type))
    }
}

/// The backbone a config selects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backbone<'a> {
    Unet(&'a UNetConfig),
    ConvNext(&'a ConvNextConfig),
    SwinT(&'a SwinTConfig),
    Pretrained(&'a PretrainedConfig),
}

impl Backbone<'_> {
    /// The key under `backbone_config`.
    pub fn name(&self) -> &'static str {
        match self {
            Backbone::Unet(_) => "unet",
            Backbone::ConvNext(_) => "convnext",
            Backbone::SwinT(_) => "swint",
            Backbone::Pretrained(_) => "pretrained",
        }
    }

    pub fn output_stride(&self) -> usize {
        match self {
            Backbone::Unet(b) => b.output_stride,
            Backbone::ConvNext(b) => b.output_stride,
            Backbone::SwinT(b) => b.output_stride,
            Backbone::Pretrained(b) => b.output_stride,
        }
    }

    pub fn max_stride(&self) -> usize {
        match self {
            Backbone::Unet(b) => b.max_stride,
            Backbone::ConvNext(b) => b.max_stride,
            Backbone::SwinT(b) => b.max_stride,
            Backbone::Pretrained(b) => b.max_stride,
        }
    }

    pub fn in_channels(&self) -> usize {
        match self {
            Backbone::Unet(b) => b.in_channels,
            Backbone::ConvNext(b) => b.in_channels,
            Backbone::SwinT(b) => b.in_channels,
            Backbone::Pretrained(b) => b.in_channels,
        }
    }
}

impl BackboneConfig {
    /// Every backbone that is set, in declaration order.
    pub fn all(&self) -> Vec<Backbone<'_>> {
        let mut out = Vec::new();
        if let Some(b) = &self.unet {
            out.push(Backbone::Unet(b));
        }
        if let Some(b) = &self.convnext {
            out.push(Backbone::ConvNext(b));
        }
        if let Some(b) = &self.swint {
            out.push(Backbone::SwinT(b));
        }
        if let Some(b) = &self.pretrained {
            out.push(Backbone::Pretrained(b));
        }
        out
    }
}

// Heads. Each head type holds the sub-heads the guide lists for it, with exactly the fields
// the guide documents for each.

section! {
    /// Exactly one of these is set.
    pub struct HeadConfigs {
        single_instance: Option<SingleInstanceHead> = None,
        centroid: Option<CentroidHead> = None,
        centered_instance: Option<CenteredInstanceHead> = None,
        bottomup: Option<BottomUpHead> = None,
        multi_class_bottomup: Option<MultiClassBottomUpHead> = None,
        multi_class_topdown: Option<MultiClassTopDownHead> = None,
        bottomup_segmentation: Option<BottomUpSegmentationHead> = None,
        centered_instance_segmentation: Option<CenteredInstanceSegmentationHead> = None,
        semantic_segmentation: Option<SemanticSegmentationHead> = None,
        /// Crop -> vector re-identification.
        embedding: Option<EmbeddingHead> = None,
        /// Bounding boxes, CenterNet style (center heatmap, size, offset).
        bbox_centernet: Option<BBoxCenterNetHead> = None,
        /// Bounding boxes, SSD style (anchors over a feature pyramid).
        bbox_ssd: Option<BBoxSsdHead> = None,
    }
}

section! {
    pub struct SingleInstanceHead {
        confmaps: SingleInstanceConfMaps = SingleInstanceConfMaps::default(),
    }
}

section! {
    pub struct SingleInstanceConfMaps {
        /// None: every node of the skeleton.
        part_names: Option<Vec<String>> = None,
        /// Gaussian spread in input-image pixels (after scaling).
        sigma: f64 = 5.0,
        output_stride: usize = 1,
    }
}

section! {
    pub struct CentroidHead {
        confmaps: CentroidConfMaps = CentroidConfMaps::default(),
    }
}

section! {
    pub struct CentroidConfMaps {
        /// None: the midpoint of the instance's bounding box.
        anchor_part: Option<String> = None,
        /// How the centroid is computed (a sleap-nn method name); None: from `anchor_part`.
        centroid_method: Option<String> = None,
        centroid_fallback: Option<String> = None,
        centroid_source: Option<String> = None,
        sigma: f64 = 5.0,
        output_stride: usize = 1,
        /// Sigmoid output trained with a focal loss instead of MSE.
        use_sigmoid_activation: bool = false,
        focal_loss_alpha: f64 = 0.0,
        focal_loss_beta: f64 = 4.0,
        focal_loss_pos_threshold: f64 = 0.5,
    }
}

section! {
    pub struct CenteredInstanceHead {
        confmaps: CenteredInstanceConfMaps = CenteredInstanceConfMaps::default(),
    }
}

section! {
    pub struct CenteredInstanceConfMaps {
        part_names: Option<Vec<String>> = None,
        anchor_part: Option<String> = None,
        centroid_method: Option<String> = None,
        centroid_fallback: Option<String> = None,
        sigma: f64 = 5.0,
        output_stride: usize = 1,
        loss_weight: f64 = 1.0,
    }
}

section! {
    pub struct BottomUpHead {
        confmaps: BottomUpConfMaps = BottomUpConfMaps::default(),
        pafs: PafConfig = PafConfig::default(),
    }
}

section! {
    pub struct BottomUpConfMaps {
        part_names: Option<Vec<String>> = None,
        sigma: f64 = 5.0,
        output_stride: usize = 1,
        loss_weight: Option<f64> = None,
    }
}

section! {
    /// Part affinity fields.
    pub struct PafConfig {
        /// None: the skeleton's edges.
        edges: Option<Vec<PafEdge>> = None,
        sigma: f64 = 15.0,
        output_stride: usize = 1,
        loss_weight: Option<f64> = None,
    }
}

/// One end of a skeleton edge: a node name, or a node index into the skeleton.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRef {
    Name(String),
    Index(usize),
}

impl std::fmt::Display for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeRef::Name(n) => f.write_str(n),
            NodeRef::Index(i) => write!(f, "#{i}"),
        }
    }
}

/// A `[source, destination]` edge for part affinity fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PafEdge {
    pub src: NodeRef,
    pub dst: NodeRef,
}

impl NodeRef {
    fn from_scalar(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        match &node.kind {
            NodeKind::Scalar { text, quoted } if !node.is_null() => {
                if *quoted {
                    return Some(NodeRef::Name(text.clone()));
                }
                match text.trim().parse::<i64>() {
                    Ok(i) => match usize::try_from(i) {
                        Ok(i) => Some(NodeRef::Index(i)),
                        Err(_) => {
                            cx.error_at(
                                path,
                                node.mark,
                                format!("node index must not be negative, got {i}"),
                            );
                            None
                        }
                    },
                    Err(_) => Some(NodeRef::Name(text.clone())),
                }
            }
            _ => {
                cx.type_error(node, path, "a node name or index");
                None
            }
        }
    }
}

impl FromNode for PafEdge {
    fn expected() -> String {
        "a [source, destination] pair".into()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        match &node.kind {
            NodeKind::Seq(items) if items.len() == 2 => {
                let src = NodeRef::from_scalar(&items[0], &format!("{path}[0]"), cx);
                let dst = NodeRef::from_scalar(&items[1], &format!("{path}[1]"), cx);
                Some(PafEdge {
                    src: src?,
                    dst: dst?,
                })
            }
            NodeKind::Seq(items) => {
                cx.error_at(
                    path,
                    node.mark,
                    format!(
                        "an edge is a [source, destination] pair of node names or indices, \
                         got {} items",
                        items.len()
                    ),
                );
                None
            }
            _ => {
                cx.type_error(
                    node,
                    path,
                    "a [source, destination] pair of node names or indices",
                );
                None
            }
        }
    }
}

impl ToValue for NodeRef {
    fn to_value(&self) -> Value {
        match self {
            NodeRef::Name(n) => Value::Str(n.clone()),
            NodeRef::Index(i) => Value::Int(*i as i64),
        }
    }
}

impl ToValue for PafEdge {
    fn to_value(&self) -> Value {
        Value::List(vec![self.src.to_value(), self.dst.to_value()])
    }
}

section! {
    pub struct MultiClassBottomUpHead {
        confmaps: BottomUpConfMaps = BottomUpConfMaps::default(),
        class_maps: ClassMapsConfig = ClassMapsConfig::default(),
    }
}

section! {
    pub struct ClassMapsConfig {
        /// Class (track) names; None: the track names of the labels file.
        classes: Option<Vec<String>> = None,
        class_output: ClassOutput = ClassOutput::Track,
        sigma: f64 = 5.0,
        output_stride: usize = 1,
        loss_weight: Option<f64> = None,
    }
}

section! {
    pub struct MultiClassTopDownHead {
        confmaps: MultiClassTopDownConfMaps = MultiClassTopDownConfMaps::default(),
        class_vectors: ClassVectorsConfig = ClassVectorsConfig::default(),
    }
}

section! {
    pub struct MultiClassTopDownConfMaps {
        part_names: Option<Vec<String>> = None,
        anchor_part: Option<String> = None,
        centroid_method: Option<String> = None,
        centroid_fallback: Option<String> = None,
        sigma: f64 = 5.0,
        output_stride: usize = 1,
        loss_weight: Option<f64> = Some(1.0),
    }
}

section! {
    pub struct ClassVectorsConfig {
        classes: Option<Vec<String>> = None,
        class_output: ClassOutput = ClassOutput::Track,
        num_fc_layers: usize = 1,
        num_fc_units: usize = 64,
        global_pool: bool = true,
        /// Ignored: class vectors are read from the encoder's last layer, so sleap-nn sets this
        /// to the backbone's max_stride (see [`SleapNnConfig::resolved`]).
        output_stride: usize = 1,
        loss_weight: Option<f64> = Some(1.0),
    }
}

// Heads beyond pose estimation (sleap-nn 0.3.x).

section! {
    pub struct BottomUpSegmentationHead {
        segmentation: Option<SegmentationMaps> = None,
        center: Option<InstanceCenterMaps> = None,
        offsets: Option<CenterOffsetMaps> = None,
    }
}

section! {
    /// Foreground masks, trained with a BCE + Dice loss.
    pub struct SegmentationMaps {
        output_stride: usize = 2,
        loss_weight: f64 = 1.0,
        bce_weight: f64 = 0.5,
        dice_weight: f64 = 0.5,
        bce_pos_weight: Option<f64> = None,
        target_maxpool: bool = false,
    }
}

section! {
    pub struct InstanceCenterMaps {
        sigma: f64 = 4.0,
        output_stride: usize = 2,
        loss_weight: f64 = 1.0,
    }
}

section! {
    pub struct CenterOffsetMaps {
        output_stride: usize = 2,
        loss_weight: f64 = 0.1,
    }
}

section! {
    pub struct CenteredInstanceSegmentationHead {
        segmentation: Option<CenteredInstanceSegmentationMaps> = None,
    }
}

section! {
    pub struct CenteredInstanceSegmentationMaps {
        output_stride: usize = 2,
        loss_weight: f64 = 1.0,
        anchor_part: Option<String> = None,
        centroid_method: Option<String> = None,
        centroid_fallback: Option<String> = None,
    }
}

section! {
    pub struct SemanticSegmentationHead {
        segmentation: Option<SegmentationMaps> = None,
    }
}

section! {
    pub struct EmbeddingHead {
        embedding: Option<EmbeddingOutput> = None,
    }
}

section! {
    pub struct EmbeddingOutput {
        embedding_dim: usize = 128,
        num_fc_layers: usize = 1,
        num_fc_units: usize = 256,
        /// Pooling of the encoder's features; None: chosen from the backbone.
        pool: Option<String> = None,
        normalize: bool = true,
        /// sleap-nn sets this to the backbone's max_stride.
        output_stride: usize = 32,
        freeze_backbone: bool = false,
        anchor_part: Option<String> = None,
        centroid_method: Option<String> = None,
        centroid_fallback: Option<String> = None,
        detection_mode: Option<DetectionMode> = None,
        objective: Option<EmbeddingObjective> = None,
    }
}

section! {
    pub struct EmbeddingObjective {
        positives: Option<EmbeddingPositives> = None,
        negatives: Option<EmbeddingNegatives> = None,
        loss: Option<EmbeddingLoss> = None,
        sampler: Option<EmbeddingSampler> = None,
        use_projection: bool = true,
        projection_dim: usize = 128,
    }
}

section! {
    pub struct EmbeddingPositives {
        scope: String = "global_id".into(),
        aug_views: usize = 2,
    }
}

section! {
    pub struct EmbeddingNegatives {
        sources: Vec<String> = vec!["same_frame".into(), "in_batch".into()],
        exclude_same_track: bool = true,
        restrict_same_video: bool = false,
    }
}

section! {
    pub struct EmbeddingLoss {
        name: String = "supcon".into(),
        temperature: f64 = 0.1,
        margin: f64 = 0.2,
    }
}

section! {
    pub struct EmbeddingSampler {
        kind: String = "pk".into(),
        groups_per_batch: usize = 8,
        samples_per_group: usize = 16,
    }
}

section! {
    pub struct BBoxCenterNetHead {
        center: Option<BBoxCenterMaps> = None,
        size: Option<BBoxRegression> = None,
        offset: Option<BBoxOffsetRegression> = None,
    }
}

section! {
    pub struct BBoxCenterMaps {
        categories: Option<Vec<String>> = None,
        /// None: from each box's size (`min_overlap`).
        sigma: Option<f64> = None,
        min_overlap: f64 = 0.7,
        output_stride: usize = 4,
        loss_weight: f64 = 1.0,
        focal_alpha: f64 = 2.0,
        focal_beta: f64 = 4.0,
    }
}

section! {
    pub struct BBoxRegression {
        output_stride: usize = 4,
        loss_weight: f64 = 0.1,
    }
}

section! {
    pub struct BBoxOffsetRegression {
        output_stride: usize = 4,
        loss_weight: f64 = 1.0,
    }
}

section! {
    pub struct BBoxSsdHead {
        ssd: Option<SsdMaps> = None,
    }
}

section! {
    pub struct SsdMaps {
        categories: Option<Vec<String>> = None,
        /// Stride of the finest pyramid level; each further level doubles it.
        output_stride: usize = 8,
        num_levels: usize = 3,
        anchor_sizes: Option<Vec<f64>> = None,
        anchor_scales: Vec<f64> = vec![1.0, 1.26, 1.587],
        aspect_ratios: Vec<f64> = vec![0.5, 1.0, 2.0],
        pos_iou_threshold: f64 = 0.5,
        neg_iou_threshold: f64 = 0.4,
        neg_pos_ratio: f64 = 3.0,
        box_variances: Vec<f64> = vec![0.1, 0.1, 0.2, 0.2],
        head_channels: usize = 128,
        head_convs: usize = 1,
        loss_weight: f64 = 1.0,
    }
}

/// Which kind of model the head configuration trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeadKind {
    SingleInstance,
    Centroid,
    CenteredInstance,
    BottomUp,
    MultiClassBottomUp,
    MultiClassTopDown,
    BottomUpSegmentation,
    CenteredInstanceSegmentation,
    SemanticSegmentation,
    Embedding,
    BBoxCenterNet,
    BBoxSsd,
}

impl HeadKind {
    pub const ALL: [HeadKind; 12] = [
        HeadKind::SingleInstance,
        HeadKind::Centroid,
        HeadKind::CenteredInstance,
        HeadKind::BottomUp,
        HeadKind::MultiClassBottomUp,
        HeadKind::MultiClassTopDown,
        HeadKind::BottomUpSegmentation,
        HeadKind::CenteredInstanceSegmentation,
        HeadKind::SemanticSegmentation,
        HeadKind::Embedding,
        HeadKind::BBoxCenterNet,
        HeadKind::BBoxSsd,
    ];

    /// The key under `head_configs`.
    pub fn as_str(&self) -> &'static str {
        match self {
            HeadKind::SingleInstance => "single_instance",
            HeadKind::Centroid => "centroid",
            HeadKind::CenteredInstance => "centered_instance",
            HeadKind::BottomUp => "bottomup",
            HeadKind::MultiClassBottomUp => "multi_class_bottomup",
            HeadKind::MultiClassTopDown => "multi_class_topdown",
            HeadKind::BottomUpSegmentation => "bottomup_segmentation",
            HeadKind::CenteredInstanceSegmentation => "centered_instance_segmentation",
            HeadKind::SemanticSegmentation => "semantic_segmentation",
            HeadKind::Embedding => "embedding",
            HeadKind::BBoxCenterNet => "bbox_centernet",
            HeadKind::BBoxSsd => "bbox_ssd",
        }
    }
}

impl std::fmt::Display for HeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One output of a head: its dotted path under `head_configs`, output stride and sigma.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadOutput {
    pub path: String,
    pub output_stride: usize,
    pub sigma: Option<f64>,
}

impl HeadConfigs {
    /// Every head type that is set, in declaration order.
    pub fn kinds(&self) -> Vec<HeadKind> {
        HeadKind::ALL
            .into_iter()
            .filter(|k| self.is_set(*k))
            .collect()
    }

    pub fn is_set(&self, kind: HeadKind) -> bool {
        match kind {
            HeadKind::SingleInstance => self.single_instance.is_some(),
            HeadKind::Centroid => self.centroid.is_some(),
            HeadKind::CenteredInstance => self.centered_instance.is_some(),
            HeadKind::BottomUp => self.bottomup.is_some(),
            HeadKind::MultiClassBottomUp => self.multi_class_bottomup.is_some(),
            HeadKind::MultiClassTopDown => self.multi_class_topdown.is_some(),
            HeadKind::BottomUpSegmentation => self.bottomup_segmentation.is_some(),
            HeadKind::CenteredInstanceSegmentation => self.centered_instance_segmentation.is_some(),
            HeadKind::SemanticSegmentation => self.semantic_segmentation.is_some(),
            HeadKind::Embedding => self.embedding.is_some(),
            HeadKind::BBoxCenterNet => self.bbox_centernet.is_some(),
            HeadKind::BBoxSsd => self.bbox_ssd.is_some(),
        }
    }

    /// The outputs (confidence maps, PAFs, class maps, class vectors) of every head set.
    pub fn outputs(&self) -> Vec<HeadOutput> {
        let base = "model_config.head_configs";
        let out = |path: &str, output_stride: usize, sigma: Option<f64>| HeadOutput {
            path: format!("{base}.{path}"),
            output_stride,
            sigma,
        };
        let mut v = Vec::new();
        if let Some(h) = &self.single_instance {
            let c = &h.confmaps;
            v.push(out(
                "single_instance.confmaps",
                c.output_stride,
                Some(c.sigma),
            ));
        }
        if let Some(h) = &self.centroid {
            let c = &h.confmaps;
            v.push(out("centroid.confmaps", c.output_stride, Some(c.sigma)));
        }
        if let Some(h) = &self.centered_instance {
            let c = &h.confmaps;
            v.push(out(
                "centered_instance.confmaps",
                c.output_stride,
                Some(c.sigma),
            ));
        }
        if let Some(h) = &self.bottomup {
            let (c, p) = (&h.confmaps, &h.pafs);
            v.push(out("bottomup.confmaps", c.output_stride, Some(c.sigma)));
            v.push(out("bottomup.pafs", p.output_stride, Some(p.sigma)));
        }
        if let Some(h) = &self.multi_class_bottomup {
            let (c, m) = (&h.confmaps, &h.class_maps);
            v.push(out(
                "multi_class_bottomup.confmaps",
                c.output_stride,
                Some(c.sigma),
            ));
            v.push(out(
                "multi_class_bottomup.class_maps",
                m.output_stride,
                Some(m.sigma),
            ));
        }
        if let Some(h) = &self.multi_class_topdown {
            let (c, cv) = (&h.confmaps, &h.class_vectors);
            v.push(out(
                "multi_class_topdown.confmaps",
                c.output_stride,
                Some(c.sigma),
            ));
            v.push(out(
                "multi_class_topdown.class_vectors",
                cv.output_stride,
                None,
            ));
        }
        if let Some(h) = &self.bottomup_segmentation {
            if let Some(m) = &h.segmentation {
                v.push(out(
                    "bottomup_segmentation.segmentation",
                    m.output_stride,
                    None,
                ));
            }
            if let Some(m) = &h.center {
                v.push(out(
                    "bottomup_segmentation.center",
                    m.output_stride,
                    Some(m.sigma),
                ));
            }
            if let Some(m) = &h.offsets {
                v.push(out("bottomup_segmentation.offsets", m.output_stride, None));
            }
        }
        if let Some(m) = self
            .centered_instance_segmentation
            .as_ref()
            .and_then(|h| h.segmentation.as_ref())
        {
            v.push(out(
                "centered_instance_segmentation.segmentation",
                m.output_stride,
                None,
            ));
        }
        if let Some(m) = self
            .semantic_segmentation
            .as_ref()
            .and_then(|h| h.segmentation.as_ref())
        {
            v.push(out(
                "semantic_segmentation.segmentation",
                m.output_stride,
                None,
            ));
        }
        if let Some(m) = self.embedding.as_ref().and_then(|h| h.embedding.as_ref()) {
            v.push(out("embedding.embedding", m.output_stride, None));
        }
        if let Some(h) = &self.bbox_centernet {
            if let Some(m) = &h.center {
                v.push(out("bbox_centernet.center", m.output_stride, m.sigma));
            }
            if let Some(m) = &h.size {
                v.push(out("bbox_centernet.size", m.output_stride, None));
            }
            if let Some(m) = &h.offset {
                v.push(out("bbox_centernet.offset", m.output_stride, None));
            }
        }
        if let Some(m) = self.bbox_ssd.as_ref().and_then(|h| h.ssd.as_ref()) {
            v.push(out("bbox_ssd.ssd", m.output_stride, None));
        }
        v
    }

    /// Every `loss_weight` that is written, with its path.
    fn loss_weights(&self) -> Vec<(String, f64)> {
        let base = "model_config.head_configs";
        let mut v = Vec::new();
        let mut push = |path: &str, w: Option<f64>| {
            if let Some(w) = w {
                v.push((format!("{base}.{path}.loss_weight"), w));
            }
        };
        if let Some(h) = &self.centered_instance {
            push("centered_instance.confmaps", Some(h.confmaps.loss_weight));
        }
        if let Some(h) = &self.bottomup {
            push("bottomup.confmaps", h.confmaps.loss_weight);
            push("bottomup.pafs", h.pafs.loss_weight);
        }
        if let Some(h) = &self.multi_class_bottomup {
            push("multi_class_bottomup.confmaps", h.confmaps.loss_weight);
            push("multi_class_bottomup.class_maps", h.class_maps.loss_weight);
        }
        if let Some(h) = &self.multi_class_topdown {
            push("multi_class_topdown.confmaps", h.confmaps.loss_weight);
            push(
                "multi_class_topdown.class_vectors",
                h.class_vectors.loss_weight,
            );
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// trainer_config

section! {
    pub struct TrainerConfig {
        train_data_loader: TrainDataLoaderConfig = TrainDataLoaderConfig::default(),
        val_data_loader: ValDataLoaderConfig = ValDataLoaderConfig::default(),
        model_ckpt: ModelCkptConfig = ModelCkptConfig::default(),
        /// None: "auto", or the length of `trainer_device_indices` when that is set.
        trainer_devices: Option<TrainerDevices> = None,
        /// Overrides `trainer_devices` when set.
        trainer_device_indices: Option<Vec<usize>> = None,
        trainer_accelerator: Accelerator = Accelerator::Auto,
        profiler: Option<Profiler> = None,
        /// Any Lightning strategy name ("auto", "ddp", "fsdp", ...).
        trainer_strategy: String = "auto".into(),
        enable_progress_bar: bool = true,
        min_train_steps_per_epoch: usize = 200,
        /// None: max(batches in the training data, min_train_steps_per_epoch).
        train_steps_per_epoch: Option<usize> = None,
        visualize_preds_during_training: bool = false,
        keep_viz: bool = false,
        /// Image format of those visualizations ("png", "jpg").
        viz_img_format: String = "png".into(),
        max_epochs: usize = 100,
        /// None: no seeding.
        seed: Option<i64> = Some(42),
        use_wandb: bool = false,
        save_ckpt: bool = false,
        /// Checkpoints go to `<ckpt_dir>/<run_name>`; None: the working directory.
        ckpt_dir: Option<String> = Some(".".into()),
        /// None: `<timestamp>_<head_name>`.
        run_name: Option<String> = None,
        resume_ckpt_path: Option<String> = None,
        optimizer_name: OptimizerName = OptimizerName::Adam,
        optimizer: OptimizerConfig = OptimizerConfig::default(),
        /// Reduce-on-plateau unless configured otherwise; null: constant learning rate.
        lr_scheduler: Option<LrSchedulerConfig> = Some(LrSchedulerConfig::default()),
        early_stopping: Option<EarlyStoppingConfig> = Some(EarlyStoppingConfig::default()),
        online_hard_keypoint_mining: Option<OhkmConfig> = Some(OhkmConfig::default()),
        /// Only used when `use_wandb` is true.
        wandb: Option<WandbConfig> = Some(WandbConfig::default()),
        /// Log publishing and remote control (the SLEAP GUI).
        zmq: Option<ZmqConfig> = Some(ZmqConfig::default()),
        /// Evaluation (OKS, matching) on the validation data during training.
        eval: EvalConfig = EvalConfig::default(),
    }
}

section! {
    pub struct EvalConfig {
        enabled: bool = false,
        /// Every this many epochs.
        frequency: usize = 1,
        oks_stddev: f64 = 0.025,
        /// None: from each instance's bounding box area.
        oks_scale: Option<f64> = None,
        /// Pixels.
        match_threshold: f64 = 50.0,
        /// Metric an embedding model's checkpoints are selected by.
        select_metric: String = "rank1".into(),
    }
}

section! {
    pub struct TrainDataLoaderConfig {
        batch_size: usize = 4,
        shuffle: bool = true,
        /// 0: load in the main process; "auto": sized from the usable CPUs.
        num_workers: NumWorkers = NumWorkers::Count(0),
    }
}

section! {
    /// Like the training loader, but not shuffled by default.
    pub struct ValDataLoaderConfig {
        batch_size: usize = 4,
        shuffle: bool = false,
        num_workers: NumWorkers = NumWorkers::Count(0),
    }
}

section! {
    pub struct ModelCkptConfig {
        /// Best k by validation loss; 0: none; -1: all.
        save_top_k: i64 = 1,
        save_last: Option<bool> = None,
        /// The logged metric checkpoints are ranked by.
        monitor: String = "val/loss".into(),
        mode: CkptMode = CkptMode::Min,
    }
}

/// A data loader's `num_workers`: a count, or "auto" (any case), sized from the usable CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumWorkers {
    Count(usize),
    Auto,
}

impl FromNode for NumWorkers {
    fn expected() -> String {
        "a non-negative integer or \"auto\"".into()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        if let NodeKind::Scalar { text, .. } = &node.kind {
            if text.eq_ignore_ascii_case("auto") {
                return Some(NumWorkers::Auto);
            }
            if let Ok(n) = text.trim().parse::<usize>() {
                return Some(NumWorkers::Count(n));
            }
        }
        cx.type_error(node, path, &Self::expected());
        None
    }
}

impl ToValue for NumWorkers {
    fn to_value(&self) -> Value {
        match self {
            NumWorkers::Count(n) => n.to_value(),
            NumWorkers::Auto => Value::Str("auto".into()),
        }
    }
}

/// `trainer_devices`: a device count or "auto" (null is handled by the `Option` around it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainerDevices {
    Count(usize),
    Auto,
}

impl FromNode for TrainerDevices {
    fn expected() -> String {
        "a device count or \"auto\"".into()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        if let NodeKind::Scalar { text, .. } = &node.kind {
            if text == "auto" {
                return Some(TrainerDevices::Auto);
            }
            if let Ok(n) = text.trim().parse::<usize>() {
                return Some(TrainerDevices::Count(n));
            }
        }
        cx.type_error(node, path, &Self::expected());
        None
    }
}

impl ToValue for TrainerDevices {
    fn to_value(&self) -> Value {
        match self {
            TrainerDevices::Count(n) => n.to_value(),
            TrainerDevices::Auto => Value::Str("auto".into()),
        }
    }
}

section! {
    pub struct OptimizerConfig {
        lr: f64 = 1e-4,
        amsgrad: bool = false,
    }
}

section! {
    /// Several may be set (reduce-on-plateau is, unless written null); the one that runs is
    /// the first set of cosine_annealing_warmup, linear_warmup_linear_decay, step_lr,
    /// reduce_lr_on_plateau (sleap-nn's order; see [`LrSchedulerConfig::active`]).
    pub struct LrSchedulerConfig {
        step_lr: Option<StepLrConfig> = None,
        reduce_lr_on_plateau: Option<ReduceLrOnPlateauConfig> = Some(ReduceLrOnPlateauConfig::default()),
        cosine_annealing_warmup: Option<CosineAnnealingWarmupConfig> = None,
        linear_warmup_linear_decay: Option<LinearWarmupLinearDecayConfig> = None,
    }
}

section! {
    /// Linear warmup from `warmup_start_lr`, then cosine decay to `eta_min`.
    pub struct CosineAnnealingWarmupConfig {
        warmup_epochs: usize = 5,
        /// None: trainer_config.max_epochs.
        max_epochs: Option<usize> = None,
        warmup_start_lr: f64 = 0.0,
        eta_min: f64 = 0.0,
    }
}

section! {
    /// Linear warmup from `warmup_start_lr`, then linear decay to `end_lr`.
    pub struct LinearWarmupLinearDecayConfig {
        warmup_epochs: usize = 5,
        /// None: trainer_config.max_epochs.
        max_epochs: Option<usize> = None,
        warmup_start_lr: f64 = 0.0,
        end_lr: f64 = 0.0,
    }
}

/// The scheduler that runs, of those set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActiveScheduler<'a> {
    CosineAnnealingWarmup(&'a CosineAnnealingWarmupConfig),
    LinearWarmupLinearDecay(&'a LinearWarmupLinearDecayConfig),
    StepLr(&'a StepLrConfig),
    ReduceLrOnPlateau(&'a ReduceLrOnPlateauConfig),
}

impl LrSchedulerConfig {
    /// sleap-nn's precedence: cosine_annealing_warmup > linear_warmup_linear_decay > step_lr >
    /// reduce_lr_on_plateau; None: a constant learning rate.
    pub fn active(&self) -> Option<ActiveScheduler<'_>> {
        if let Some(c) = &self.cosine_annealing_warmup {
            Some(ActiveScheduler::CosineAnnealingWarmup(c))
        } else if let Some(c) = &self.linear_warmup_linear_decay {
            Some(ActiveScheduler::LinearWarmupLinearDecay(c))
        } else if let Some(c) = &self.step_lr {
            Some(ActiveScheduler::StepLr(c))
        } else {
            self.reduce_lr_on_plateau
                .as_ref()
                .map(ActiveScheduler::ReduceLrOnPlateau)
        }
    }
}

section! {
    pub struct StepLrConfig {
        /// Epochs between decays.
        step_size: usize = 10,
        gamma: f64 = 0.1,
    }
}

section! {
    pub struct ReduceLrOnPlateauConfig {
        threshold: f64 = 1e-6,
        threshold_mode: ThresholdMode = ThresholdMode::Abs,
        cooldown: usize = 3,
        patience: usize = 5,
        factor: f64 = 0.5,
        min_lr: MinLr = MinLr::All(1e-8),
    }
}

/// `min_lr`: one floor for every parameter group, or one per group.
#[derive(Debug, Clone, PartialEq)]
pub enum MinLr {
    All(f64),
    PerGroup(Vec<f64>),
}

impl MinLr {
    pub fn values(&self) -> Vec<f64> {
        match self {
            MinLr::All(v) => vec![*v],
            MinLr::PerGroup(vs) => vs.clone(),
        }
    }
}

impl FromNode for MinLr {
    fn expected() -> String {
        "a number or a list of numbers".into()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        match &node.kind {
            NodeKind::Seq(_) => Vec::<f64>::from_node(node, path, cx).map(MinLr::PerGroup),
            NodeKind::Scalar { .. } => f64::from_node(node, path, cx).map(MinLr::All),
            NodeKind::Map(_) => {
                cx.type_error(node, path, &Self::expected());
                None
            }
        }
    }
}

impl ToValue for MinLr {
    fn to_value(&self) -> Value {
        match self {
            MinLr::All(v) => v.to_value(),
            MinLr::PerGroup(vs) => vs.to_value(),
        }
    }
}

section! {
    pub struct EarlyStoppingConfig {
        stop_training_on_plateau: bool = true,
        min_delta: f64 = 1e-8,
        patience: usize = 10,
    }
}

section! {
    /// Online hard keypoint mining: up-weights the loss of the hardest keypoints.
    pub struct OhkmConfig {
        online_mining: bool = false,
        hard_to_easy_ratio: f64 = 2.0,
        min_hard_keypoints: usize = 2,
        max_hard_keypoints: Option<usize> = None,
        loss_scale: f64 = 5.0,
    }
}

section! {
    pub struct WandbConfig {
        entity: Option<String> = None,
        project: Option<String> = None,
        name: Option<String> = None,
        /// Never written back out (see [`ApiKey`]).
        api_key: Option<ApiKey> = None,
        save_viz_imgs_wandb: bool = false,
        /// "offline" for local logging only.
        wandb_mode: Option<String> = None,
        prv_runid: Option<String> = None,
        group: Option<String> = None,
        /// None: delete when logging online, keep when offline.
        delete_local_logs: Option<bool> = None,
        /// The W&B run of this training, written by sleap-nn into `training_config.yaml`.
        current_run_id: Option<String> = None,
        viz_enabled: bool = true,
        viz_boxes: bool = false,
        viz_masks: bool = false,
        viz_box_size: f64 = 5.0,
        viz_confmap_threshold: f64 = 0.1,
        log_viz_table: bool = false,
    }
}

/// A W&B API key. It is masked wherever a config is shown or saved: `Debug` prints `***` and
/// the YAML writer emits null (the key then comes from `WANDB_API_KEY`), so a resolved config
/// stored beside a checkpoint never carries the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl ApiKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl FromNode for ApiKey {
    fn expected() -> String {
        String::expected()
    }
    fn from_node(node: &Node, path: &str, cx: &mut Ctx) -> Option<Self> {
        String::from_node(node, path, cx).map(ApiKey)
    }
}

impl ToValue for ApiKey {
    fn to_value(&self) -> Value {
        Value::Null
    }
}

section! {
    pub struct ZmqConfig {
        /// Training logs are published on tcp://127.0.0.1:<port>; None: off.
        publish_port: Option<usize> = None,
        /// Stop/pause commands are received on tcp://127.0.0.1:<port>; None: off.
        controller_port: Option<usize> = None,
        /// Microseconds.
        controller_polling_timeout: usize = 10,
    }
}

// ---------------------------------------------------------------------------------------------
// semantic checks

fn probability(cx: &mut Ctx, path: &str, v: f64) {
    cx.check((0.0..=1.0).contains(&v), path, || {
        format!("is a probability and must be between 0 and 1, got {v}")
    });
}

fn positive(cx: &mut Ctx, path: &str, v: usize) {
    cx.check(v > 0, path, || "must be at least 1, got 0".to_string());
}

fn positive_f(cx: &mut Ctx, path: &str, v: f64) {
    cx.check(v > 0.0 && v.is_finite(), path, || {
        format!("must be a positive number, got {v}")
    });
}

fn non_negative_f(cx: &mut Ctx, path: &str, v: f64) {
    cx.check(v >= 0.0 && v.is_finite(), path, || {
        format!("must not be negative, got {v}")
    });
}

fn at_most(cx: &mut Ctx, path: &str, v: f64, max: f64) {
    cx.check(v <= max, path, || format!("must be at most {max}, got {v}"));
}

fn at_least(cx: &mut Ctx, path: &str, v: f64, min: f64) {
    cx.check(v >= min, path, || {
        format!("must be at least {min}, got {v}")
    });
}

/// `<prefix>.<name>_min <= <prefix>.<name>_max`, reported at the min key.
fn min_max(cx: &mut Ctx, prefix: &str, name: &str, min: f64, max: f64) {
    cx.check(min <= max, &format!("{prefix}.{name}_min"), || {
        format!("{name}_min ({min}) is greater than {name}_max ({max})")
    });
}

fn power_of_two(cx: &mut Ctx, path: &str, v: usize) {
    cx.check(v.is_power_of_two(), path, || {
        format!("must be a power of two (1, 2, 4, 8, 16, 32, ...), got {v}")
    });
}

fn list_names(names: &[&str]) -> String {
    match names.len() {
        0 => String::new(),
        1 => names[0].to_string(),
        n => format!("{} and {}", names[..n - 1].join(", "), names[n - 1]),
    }
}

impl DataConfig {
    /// Every labels file the config names, with the field naming it: the training files,
    /// then the validation files.
    pub fn labels_files(&self) -> Vec<(&'static str, &str)> {
        let train = self.train_labels_path.iter().flatten();
        let val = self.val_labels_path.iter().flatten();
        train
            .map(|p| ("data_config.train_labels_path", p.as_str()))
            .chain(val.map(|p| ("data_config.val_labels_path", p.as_str())))
            .collect()
    }
}

impl SleapNnConfig {
    /// The one head type set, if exactly one is.
    pub fn head_kind(&self) -> Option<HeadKind> {
        match self.model_config.head_configs.kinds().as_slice() {
            [k] => Some(*k),
            _ => None,
        }
    }

    /// The one backbone set, if exactly one is.
    pub fn backbone(&self) -> Option<Backbone<'_>> {
        match self.model_config.backbone_config.all().as_slice() {
            [b] => Some(*b),
            _ => None,
        }
    }

    /// Checks beyond types: one backbone and one head, consistent strides, ranges.
    pub fn validate(&self, cx: &mut Ctx) {
        self.validate_data(cx);
        self.validate_model(cx);
        self.validate_trainer(cx);
    }

    fn validate_data(&self, cx: &mut Ctx) {
        let d = &self.data_config;
        // Null (or empty) training labels are given on the command line, as with sleap-nn.
        for (i, p) in d.train_labels_path.iter().flatten().enumerate() {
            cx.check(
                !p.trim().is_empty(),
                &format!("data_config.train_labels_path[{i}]"),
                || "empty path".to_string(),
            );
        }
        if let Some(v) = &d.val_labels_path {
            for (i, p) in v.iter().enumerate() {
                cx.check(
                    !p.trim().is_empty(),
                    &format!("data_config.val_labels_path[{i}]"),
                    || "empty path".to_string(),
                );
            }
        }
        cx.check(
            (0.0..=1.0).contains(&d.validation_fraction),
            "data_config.validation_fraction",
            || format!("must be between 0 and 1, got {}", d.validation_fraction),
        );

        let p = &d.preprocessing;
        let pp = "data_config.preprocessing";
        cx.check(!(p.ensure_rgb && p.ensure_grayscale), pp, || {
            "ensure_rgb and ensure_grayscale are both true; an image cannot be made both \
             3-channel and 1-channel"
                .to_string()
        });
        positive_f(cx, &format!("{pp}.scale"), p.scale);
        positive_f(
            cx,
            "data_config.negative_loss_weight",
            d.negative_loss_weight,
        );
        non_negative_f(cx, "data_config.bbox_padding", d.bbox_padding);
        non_negative_f(cx, &format!("{pp}.crop_bbox_padding"), p.crop_bbox_padding);
        if let Some(v) = p.crop_bbox_min_size {
            positive_f(cx, &format!("{pp}.crop_bbox_min_size"), v);
        }
        let t = &p.tiling;
        let tp = format!("{pp}.tiling");
        for (key, v) in [
            ("min_overlap_fraction", t.min_overlap_fraction),
            ("cpu_thresh", t.cpu_thresh),
            ("center_jitter", t.center_jitter),
        ] {
            probability(cx, &format!("{tp}.{key}"), v);
        }
        cx.check(
            (0.0..1.0).contains(&t.tile_fg_fraction),
            &format!("{tp}.tile_fg_fraction"),
            || format!("must be at least 0 and below 1, got {}", t.tile_fg_fraction),
        );
        cx.check(
            t.sigma_scale > 0.0 && t.sigma_scale <= 1.0,
            &format!("{tp}.sigma_scale"),
            || format!("must be above 0 and at most 1, got {}", t.sigma_scale),
        );
        for (key, v) in [
            ("tile_size", t.tile_size),
            ("tile_batch_size", t.tile_batch_size),
            ("samples_per_frame", t.samples_per_frame),
            ("steps_per_epoch", t.steps_per_epoch),
        ] {
            if let Some(v) = v {
                positive(cx, &format!("{tp}.{key}"), v);
            }
        }
        if let Some(sp) = &d.split {
            positive(cx, "data_config.split.n_folds", sp.n_folds);
            cx.check(sp.fold < sp.n_folds, "data_config.split.fold", || {
                format!(
                    "fold {} does not exist among n_folds {}",
                    sp.fold, sp.n_folds
                )
            });
        }
        for (key, v) in [
            ("max_height", p.max_height),
            ("max_width", p.max_width),
            ("crop_size", p.crop_size),
            ("min_crop_size", p.min_crop_size),
        ] {
            if let Some(v) = v {
                positive(cx, &format!("{pp}.{key}"), v);
            }
        }

        if let Some(aug) = &d.augmentation_config {
            let ap = "data_config.augmentation_config";
            if let Some(i) = &aug.intensity {
                let ip = format!("{ap}.intensity");
                for (key, v) in [
                    ("uniform_noise_p", i.uniform_noise_p),
                    ("gaussian_noise_p", i.gaussian_noise_p),
                    ("contrast_p", i.contrast_p),
                    ("brightness_p", i.brightness_p),
                ] {
                    probability(cx, &format!("{ip}.{key}"), v);
                }
                non_negative_f(cx, &format!("{ip}.uniform_noise_min"), i.uniform_noise_min);
                at_most(
                    cx,
                    &format!("{ip}.uniform_noise_max"),
                    i.uniform_noise_max,
                    1.0,
                );
                min_max(
                    cx,
                    &ip,
                    "uniform_noise",
                    i.uniform_noise_min,
                    i.uniform_noise_max,
                );
                non_negative_f(
                    cx,
                    &format!("{ip}.gaussian_noise_std"),
                    i.gaussian_noise_std,
                );
                non_negative_f(cx, &format!("{ip}.contrast_min"), i.contrast_min);
                min_max(cx, &ip, "contrast", i.contrast_min, i.contrast_max);
                non_negative_f(cx, &format!("{ip}.brightness_min"), i.brightness_min);
                at_most(cx, &format!("{ip}.brightness_max"), i.brightness_max, 2.0);
                min_max(cx, &ip, "brightness", i.brightness_min, i.brightness_max);
            }
            if let Some(g) = &aug.geometric {
                let gp = format!("{ap}.geometric");
                for (key, v) in [
                    ("affine_p", Some(g.affine_p)),
                    ("rotation_p", g.rotation_p),
                    ("scale_p", g.scale_p),
                    ("translate_p", g.translate_p),
                    ("erase_p", Some(g.erase_p)),
                    ("mixup_p", Some(g.mixup_p)),
                    ("flip_p", Some(g.flip_p)),
                ] {
                    if let Some(v) = v {
                        probability(cx, &format!("{gp}.{key}"), v);
                    }
                }
                at_least(cx, &format!("{gp}.rotation_min"), g.rotation_min, -180.0);
                at_most(cx, &format!("{gp}.rotation_max"), g.rotation_max, 180.0);
                min_max(cx, &gp, "rotation", g.rotation_min, g.rotation_max);
                positive_f(cx, &format!("{gp}.scale_min"), g.scale_min);
                min_max(cx, &gp, "scale", g.scale_min, g.scale_max);
                for (key, v) in [
                    ("translate_width", g.translate_width),
                    ("translate_height", g.translate_height),
                ] {
                    cx.check((0.0..=1.0).contains(&v), &format!("{gp}.{key}"), || {
                        format!(
                            "is a fraction of the image size and must be between 0 and 1, got {v}"
                        )
                    });
                }
                for (key, v) in [
                    ("erase_scale_min", g.erase_scale_min),
                    ("erase_scale_max", g.erase_scale_max),
                ] {
                    cx.check((0.0..=1.0).contains(&v), &format!("{gp}.{key}"), || {
                        format!(
                            "is a fraction of the image area and must be between 0 and 1, got {v}"
                        )
                    });
                }
                min_max(cx, &gp, "erase_scale", g.erase_scale_min, g.erase_scale_max);
                positive_f(cx, &format!("{gp}.erase_ratio_min"), g.erase_ratio_min);
                min_max(cx, &gp, "erase_ratio", g.erase_ratio_min, g.erase_ratio_max);
                non_negative_f(cx, &format!("{gp}.mixup_lambda_min"), g.mixup_lambda_min);
                at_most(
                    cx,
                    &format!("{gp}.mixup_lambda_max"),
                    g.mixup_lambda_max,
                    1.0,
                );
                min_max(
                    cx,
                    &gp,
                    "mixup_lambda",
                    g.mixup_lambda_min,
                    g.mixup_lambda_max,
                );
            }
        }
    }

    fn validate_model(&self, cx: &mut Ctx) {
        let m = &self.model_config;
        let bp = "model_config.backbone_config";
        let backbones = m.backbone_config.all();
        let names: Vec<&str> = backbones.iter().map(Backbone::name).collect();
        match backbones.len() {
            0 => cx.error(
                bp,
                "no backbone is set; configure exactly one of unet, convnext, swint or pretrained",
            ),
            1 => {}
            _ => cx.error(
                bp,
                format!(
                    "{} backbones are set ({}); configure exactly one and set the others to null",
                    backbones.len(),
                    list_names(&names)
                ),
            ),
        }

        if let Some(u) = &m.backbone_config.unet {
            let p = format!("{bp}.unet");
            positive(cx, &format!("{p}.in_channels"), u.in_channels);
            positive(cx, &format!("{p}.kernel_size"), u.kernel_size);
            positive(cx, &format!("{p}.filters"), u.filters);
            positive_f(cx, &format!("{p}.filters_rate"), u.filters_rate);
            positive(cx, &format!("{p}.stacks"), u.stacks);
            positive(cx, &format!("{p}.convs_per_block"), u.convs_per_block);
            if let Some(s) = u.stem_stride {
                power_of_two(cx, &format!("{p}.stem_stride"), s);
            }
            check_backbone_strides(cx, &p, u.output_stride, u.max_stride);
        }
        if let Some(c) = &m.backbone_config.convnext {
            let p = format!("{bp}.convnext");
            positive(cx, &format!("{p}.in_channels"), c.in_channels);
            positive(cx, &format!("{p}.kernel_size"), c.kernel_size);
            positive(cx, &format!("{p}.stem_patch_kernel"), c.stem_patch_kernel);
            positive(cx, &format!("{p}.stem_patch_stride"), c.stem_patch_stride);
            positive_f(cx, &format!("{p}.filters_rate"), c.filters_rate);
            positive(cx, &format!("{p}.convs_per_block"), c.convs_per_block);
            if let Some(a) = &c.arch {
                let ap = format!("{p}.arch");
                check_stages(cx, &ap, &a.depths, "channels", &a.channels);
            }
            check_backbone_strides(cx, &p, c.output_stride, c.max_stride);
        }
        if let Some(s) = &m.backbone_config.swint {
            let p = format!("{bp}.swint");
            positive(cx, &format!("{p}.in_channels"), s.in_channels);
            positive(cx, &format!("{p}.kernel_size"), s.kernel_size);
            positive(cx, &format!("{p}.patch_size"), s.patch_size);
            positive(cx, &format!("{p}.stem_patch_stride"), s.stem_patch_stride);
            positive(cx, &format!("{p}.window_size"), s.window_size);
            positive_f(cx, &format!("{p}.filters_rate"), s.filters_rate);
            positive(cx, &format!("{p}.convs_per_block"), s.convs_per_block);
            if let Some(a) = &s.arch {
                let ap = format!("{p}.arch");
                positive(cx, &format!("{ap}.embed"), a.embed);
                if check_stages(cx, &ap, &a.depths, "channels", &a.num_heads) {
                    // Stage i works at width embed * 2^i, split evenly across its heads.
                    for (i, &h) in a.num_heads.iter().enumerate() {
                        let width = a.embed << i;
                        cx.check(width % h == 0, &format!("{ap}.channels"), || {
                            format!(
                                "stage {i} has width {width} (embed {} x 2^{i}), which {h} \
                                 attention heads do not divide",
                                a.embed
                            )
                        });
                    }
                }
            }
            check_backbone_strides(cx, &p, s.output_stride, s.max_stride);
        }

        let hp = "model_config.head_configs";
        let heads = &m.head_configs;
        let kinds = heads.kinds();
        match kinds.len() {
            0 => cx.error(
                hp,
                format!(
                    "no head is set; configure exactly one of {}",
                    list_names(&HeadKind::ALL.map(|k| k.as_str())).replace(" and ", " or ")
                ),
            ),
            1 => {}
            _ => {
                let names: Vec<&str> = kinds.iter().map(HeadKind::as_str).collect();
                cx.error(
                    hp,
                    format!(
                        "{} head types are set ({}); a config trains one model, so configure \
                         exactly one and set the others to null",
                        kinds.len(),
                        list_names(&names)
                    ),
                );
            }
        }

        // A head stride finer than the backbone's output_stride, or coarser than its
        // max_stride, is not an error: sleap-nn moves the backbone's strides to fit the heads
        // (`SleapNnConfig::resolved`). Strides pinned to the encoder (class vectors,
        // embeddings) are overwritten there, so only their sigma is checked.
        for out in heads.outputs() {
            let sp = format!("{}.output_stride", out.path);
            if let Some(sigma) = out.sigma {
                positive_f(cx, &format!("{}.sigma", out.path), sigma);
            }
            if out.path.ends_with("class_vectors") || out.path.ends_with("embedding.embedding") {
                continue;
            }
            power_of_two(cx, &sp, out.output_stride);
        }
        if let Some(h) = &heads.multi_class_topdown {
            let p = format!("{hp}.multi_class_topdown.class_vectors");
            positive(
                cx,
                &format!("{p}.num_fc_layers"),
                h.class_vectors.num_fc_layers,
            );
            positive(
                cx,
                &format!("{p}.num_fc_units"),
                h.class_vectors.num_fc_units,
            );
        }
        for (path, w) in heads.loss_weights() {
            non_negative_f(cx, &path, w);
        }
        for (path, classes) in [
            (
                "multi_class_bottomup.class_maps.classes",
                heads
                    .multi_class_bottomup
                    .as_ref()
                    .and_then(|h| h.class_maps.classes.as_ref()),
            ),
            (
                "multi_class_topdown.class_vectors.classes",
                heads
                    .multi_class_topdown
                    .as_ref()
                    .and_then(|h| h.class_vectors.classes.as_ref()),
            ),
        ] {
            if let Some(c) = classes {
                cx.check(!c.is_empty(), &format!("{hp}.{path}"), || {
                    "an empty list names no classes; use null to take the track names from \
                     the labels"
                        .to_string()
                });
            }
        }
    }

    fn validate_trainer(&self, cx: &mut Ctx) {
        let t = &self.trainer_config;
        let tp = "trainer_config";
        positive(
            cx,
            &format!("{tp}.train_data_loader.batch_size"),
            t.train_data_loader.batch_size,
        );
        positive(
            cx,
            &format!("{tp}.val_data_loader.batch_size"),
            t.val_data_loader.batch_size,
        );
        cx.check(
            t.model_ckpt.save_top_k >= -1,
            &format!("{tp}.model_ckpt.save_top_k"),
            || {
                format!(
                    "must be -1 (keep all), 0 (keep none) or a positive count, got {}",
                    t.model_ckpt.save_top_k
                )
            },
        );
        if let Some(TrainerDevices::Count(n)) = t.trainer_devices {
            positive(cx, &format!("{tp}.trainer_devices"), n);
        }
        if let Some(ix) = &t.trainer_device_indices {
            let p = format!("{tp}.trainer_device_indices");
            cx.check(!ix.is_empty(), &p, || {
                "an empty list selects no device; use null to count from device 0".to_string()
            });
            let mut seen = std::collections::HashSet::new();
            let dup = ix.iter().find(|i| !seen.insert(**i));
            if let Some(d) = dup {
                cx.error(&p, format!("device {d} is listed twice"));
            }
        }
        cx.check(
            !t.trainer_strategy.trim().is_empty(),
            &format!("{tp}.trainer_strategy"),
            || "must name a strategy (\"auto\", \"ddp\", \"fsdp\", ...)".to_string(),
        );
        if let Some(n) = t.train_steps_per_epoch {
            positive(cx, &format!("{tp}.train_steps_per_epoch"), n);
        }
        positive(cx, &format!("{tp}.max_epochs"), t.max_epochs);
        positive_f(cx, &format!("{tp}.optimizer.lr"), t.optimizer.lr);

        if let Some(s) = &t.lr_scheduler {
            let sp = format!("{tp}.lr_scheduler");
            if let Some(c) = &s.cosine_annealing_warmup {
                let cp = format!("{sp}.cosine_annealing_warmup");
                non_negative_f(cx, &format!("{cp}.warmup_start_lr"), c.warmup_start_lr);
                non_negative_f(cx, &format!("{cp}.eta_min"), c.eta_min);
                if let Some(n) = c.max_epochs {
                    positive(cx, &format!("{cp}.max_epochs"), n);
                }
            }
            if let Some(c) = &s.linear_warmup_linear_decay {
                let cp = format!("{sp}.linear_warmup_linear_decay");
                non_negative_f(cx, &format!("{cp}.warmup_start_lr"), c.warmup_start_lr);
                non_negative_f(cx, &format!("{cp}.end_lr"), c.end_lr);
                if let Some(n) = c.max_epochs {
                    positive(cx, &format!("{cp}.max_epochs"), n);
                }
            }
            if let Some(st) = &s.step_lr {
                positive(cx, &format!("{sp}.step_lr.step_size"), st.step_size);
                positive_f(cx, &format!("{sp}.step_lr.gamma"), st.gamma);
            }
            if let Some(r) = &s.reduce_lr_on_plateau {
                let rp = format!("{sp}.reduce_lr_on_plateau");
                non_negative_f(cx, &format!("{rp}.threshold"), r.threshold);
                cx.check(
                    r.factor > 0.0 && r.factor < 1.0,
                    &format!("{rp}.factor"),
                    || {
                        format!(
                        "must be between 0 and 1 (exclusive): the rate is multiplied by it, got {}",
                        r.factor
                    )
                    },
                );
                for v in r.min_lr.values() {
                    non_negative_f(cx, &format!("{rp}.min_lr"), v);
                }
                if let MinLr::PerGroup(v) = &r.min_lr {
                    cx.check(!v.is_empty(), &format!("{rp}.min_lr"), || {
                        "an empty list gives no floor; write one number for all groups".to_string()
                    });
                }
            }
        }
        if let Some(e) = &t.early_stopping {
            non_negative_f(cx, &format!("{tp}.early_stopping.min_delta"), e.min_delta);
        }
        if let Some(o) = &t.online_hard_keypoint_mining {
            let op = format!("{tp}.online_hard_keypoint_mining");
            positive_f(
                cx,
                &format!("{op}.hard_to_easy_ratio"),
                o.hard_to_easy_ratio,
            );
            positive_f(cx, &format!("{op}.loss_scale"), o.loss_scale);
            if let Some(max) = o.max_hard_keypoints {
                cx.check(
                    o.min_hard_keypoints <= max,
                    &format!("{op}.min_hard_keypoints"),
                    || {
                        format!(
                            "min_hard_keypoints ({}) is greater than max_hard_keypoints ({max})",
                            o.min_hard_keypoints
                        )
                    },
                );
            }
        }
        if let Some(z) = &t.zmq {
            for (key, port) in [
                ("publish_port", z.publish_port),
                ("controller_port", z.controller_port),
            ] {
                if let Some(port) = port {
                    cx.check(
                        (1..=65535).contains(&port),
                        &format!("{tp}.zmq.{key}"),
                        || format!("must be a TCP port between 1 and 65535, got {port}"),
                    );
                }
            }
            if let (Some(a), Some(b)) = (z.publish_port, z.controller_port) {
                cx.check(a != b, &format!("{tp}.zmq.controller_port"), || {
                    format!("is the same port as publish_port ({a})")
                });
            }
        }
    }

    /// The config as sleap-nn trains it, after its `check_output_strides`: the backbone's
    /// output_stride becomes the finest head stride, its max_stride grows to the coarsest (and
    /// to an SSD head's deepest pyramid level), class vectors and embeddings sit at the
    /// resulting max_stride (an embedding's backbone outputs there too).
    pub fn resolved(&self) -> SleapNnConfig {
        let mut c = self.clone();
        let strides: Vec<usize> = c
            .model_config
            .head_configs
            .outputs()
            .iter()
            .map(|o| o.output_stride)
            .collect();
        let heads = c.model_config.head_configs.clone();
        let b = &mut c.model_config.backbone_config;
        let native = b.unet.is_some() || b.convnext.is_some() || b.swint.is_some();
        let (os, ms): (&mut usize, &mut usize) = if let Some(x) = b.unet.as_mut() {
            (&mut x.output_stride, &mut x.max_stride)
        } else if let Some(x) = b.convnext.as_mut() {
            (&mut x.output_stride, &mut x.max_stride)
        } else if let Some(x) = b.swint.as_mut() {
            (&mut x.output_stride, &mut x.max_stride)
        } else if let Some(x) = b.pretrained.as_mut() {
            (&mut x.output_stride, &mut x.max_stride)
        } else {
            return c;
        };
        if let (Some(&min), Some(&max)) = (strides.iter().min(), strides.iter().max()) {
            *os = min;
            *ms = (*ms).max(max);
        }
        if let Some(ssd) = heads.bbox_ssd.as_ref().and_then(|h| h.ssd.as_ref()) {
            let deepest = ssd.output_stride << ssd.num_levels.saturating_sub(1);
            *ms = (*ms).max(deepest);
        }
        let max_stride = *ms;
        if heads.embedding.is_some() && native {
            *os = max_stride;
        }
        let h = &mut c.model_config.head_configs;
        if let Some(t) = h.multi_class_topdown.as_mut() {
            t.class_vectors.output_stride = max_stride;
        }
        if let Some(e) = h.embedding.as_mut().and_then(|e| e.embedding.as_mut()) {
            e.output_stride = max_stride;
        }
        c
    }

    /// One line for humans, e.g. "single_instance head on unet backbone (filters 16, max stride
    /// 16), 1 training file, batch 4 x 200 epochs".
    pub fn summary(&self) -> String {
        let heads: Vec<&str> = self
            .model_config
            .head_configs
            .kinds()
            .iter()
            .map(HeadKind::as_str)
            .collect();
        let head = match heads.len() {
            0 => "no head".to_string(),
            1 => format!("{} head", heads[0]),
            _ => format!("{} heads", list_names(&heads)),
        };
        let backbone = match self.model_config.backbone_config.all().as_slice() {
            [] => "no backbone".to_string(),
            [b] => {
                let detail = match b {
                    Backbone::Unet(u) => format!("filters {}", u.filters),
                    Backbone::ConvNext(c) => match c.arch {
                        Some(_) => "custom arch".to_string(),
                        None => c.model_type.to_string(),
                    },
                    Backbone::SwinT(s) => match s.arch {
                        Some(_) => "custom arch".to_string(),
                        None => s.model_type.to_string(),
                    },
                    Backbone::Pretrained(p) => p.model_name.clone(),
                };
                format!(
                    "{} backbone ({detail}, max stride {})",
                    b.name(),
                    b.max_stride()
                )
            }
            many => {
                let names: Vec<&str> = many.iter().map(Backbone::name).collect();
                format!("{} backbones", list_names(&names))
            }
        };
        let files = match self.data_config.train_labels_path.as_deref() {
            None | Some([]) => "training labels from the command line".to_string(),
            Some([_]) => "1 training file".to_string(),
            Some(many) => format!("{} training files", many.len()),
        };
        let t = &self.trainer_config;
        format!(
            "{head} on {backbone}, {files}, batch {} x {} epochs",
            t.train_data_loader.batch_size, t.max_epochs
        )
    }
}

/// Backbone strides: both powers of two, output_stride <= max_stride.
fn check_backbone_strides(cx: &mut Ctx, path: &str, output_stride: usize, max_stride: usize) {
    power_of_two(cx, &format!("{path}.output_stride"), output_stride);
    power_of_two(cx, &format!("{path}.max_stride"), max_stride);
    cx.check(
        output_stride <= max_stride,
        &format!("{path}.output_stride"),
        || {
            format!(
                "output_stride {output_stride} is greater than max_stride {max_stride}; the \
                 decoder cannot output coarser than the encoder's deepest level"
            )
        },
    );
}

/// Stage lists of an explicit architecture: non-empty, equal lengths, positive entries.
/// Returns whether they are usable for further checks.
fn check_stages(
    cx: &mut Ctx,
    path: &str,
    depths: &[usize],
    other_key: &str,
    other: &[usize],
) -> bool {
    let mut ok = true;
    if depths.is_empty() {
        cx.error(&format!("{path}.depths"), "needs at least one stage");
        ok = false;
    }
    if depths.len() != other.len() {
        cx.error(
            &format!("{path}.{other_key}"),
            format!(
                "has {} entries but depths has {}; give one per stage",
                other.len(),
                depths.len()
            ),
        );
        ok = false;
    }
    for (key, list) in [("depths", depths), (other_key, other)] {
        if list.contains(&0) {
            cx.error(&format!("{path}.{key}"), "entries must be at least 1");
            ok = false;
        }
    }
    ok
}
