//! Single-cell data for anvil: everything between a user's AnnData files and a batch of token
//! tensors.
//!
//! - [`anndata`]: readers for .h5ad (HDF5) files behind one trait.
//! - [`vocab`]: gene vocabulary with special tokens pad=0, unk=1, mask=2, cls=3.
//! - [`dataset`]: several files as one dataset, genes mapped to the vocabulary.
//! - [`preprocess`]: library-size normalization, log1p, highly-variable-gene selection.
//! - [`preprocess_h5ad`]: that preprocessing applied to a whole .h5ad file, written to a new one.
//! - [`shards`]: scModelForge's memory-mapped shard directories, written and read.
//! - [`tokenize`]: rank_value, binned_expression, continuous_projection, gene_embedding.
//! - [`masking`]: BERT-style masking, keyed by (seed, epoch, cell).
//! - [`plan`]: train/val split and the world-size-invariant shard plan.
//! - [`loader`]: batches with background prefetch and a resumable position.
//! - [`synth`]: deterministic synthetic AnnData files.
//! - [`pose`]: SLEAP labels in memory and in `.slp` files (`pose::slp`), their frames as images.

pub mod anndata;
pub mod error;
mod h5util;
pub mod rng;

pub use error::{DataError, Result};
pub mod dataset;
pub mod embedding;
pub mod loader;
pub mod masking;
pub mod pipeline;
pub mod plan;
pub mod pose;
pub mod preprocess;
pub mod preprocess_h5ad;
pub mod shards;
pub mod tokenize;
pub mod vocab;

pub use loader::{Loader, LoaderOptions, Position};
pub use pipeline::{Batch, Pipeline};
pub use plan::{ShardPlan, Split};
pub mod synth;
pub mod write;
