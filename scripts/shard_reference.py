"""A shard directory written by scModelForge itself, for coordinator/tests/shard.rs: the first
40 cells and 200 genes of the bundled PBMC file as an .h5ad, and scModelForge's
`convert_to_shards` of it (vocabulary from that file, as `scmodelforge shard` builds it without
--gene-vocab; 16 cells per shard), with the vocabulary saved by `GeneVocab.save`.

    python scripts/shard_reference.py data/pbmc68k_counts.h5ad coordinator/tests/fixtures/shards

Run with scModelForge 0.1.0 (its source at github.com/EhsanRS/scModelForge), anndata 0.11.4,
pyarrow (for its obs.parquet)."""

import shutil
import sys
from pathlib import Path

import anndata as ad
from scmodelforge.data.gene_vocab import GeneVocab
from scmodelforge.data.sharding import convert_to_shards


def main(src, out):
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    small = ad.read_h5ad(src)[:40, :200].copy()
    small.obs = small.obs[["cell_type"]]
    small.write_h5ad(out / "cells.h5ad")
    vocab = GeneVocab.from_adata(small)
    vocab.save(out / "vocab.json")
    convert_to_shards([str(out / "cells.h5ad")], vocab, out / "scmodelforge", shard_size=16)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
