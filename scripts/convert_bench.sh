#!/usr/bin/env bash
# `coordinator preprocess` and `coordinator shard` against their peers on the same synthetic
# file, in one run: scanpy (normalize_total, log1p, highly_variable_genes, subset, write_h5ad:
# the body of scModelForge's preprocess) and scModelForge's convert_to_shards.
#
#   scripts/convert_bench.sh DIR [CELLS] [GENES]
#
# Needs release binaries (cargo build --release -p coordinator) at $CARGO_TARGET_DIR/release or
# target/release, SCANPY_PYTHON (a Python with scanpy) and SMF_PYTHON (a Python with
# scModelForge and pyarrow). Prints wall seconds and the ratio.
set -euo pipefail
DIR=${1:?usage: convert_bench.sh DIR [CELLS] [GENES]}
CELLS=${2:-20000}
GENES=${3:-5000}
BIN=${CARGO_TARGET_DIR:-target}/release/coordinator
: "${SCANPY_PYTHON:?set SCANPY_PYTHON to a Python with scanpy}"
: "${SMF_PYTHON:?set SMF_PYTHON to a Python with scModelForge}"
mkdir -p "$DIR"
IN="$DIR/synth.h5ad"
[ -f "$IN" ] || "$BIN" data synth --cells "$CELLS" --genes "$GENES" --out "$IN" >/dev/null
echo "input: $CELLS cells x $GENES genes ($(du -h "$IN" | cut -f1)); $(lscpu | grep 'Model name' | sed 's/ \+/ /g'); load $(cut -d' ' -f1-3 /proc/loadavg)"

now() { date +%s.%N; }
rm -rf "$DIR"/anvil-pp.h5ad "$DIR"/scanpy-pp.h5ad "$DIR"/anvil-shards "$DIR"/smf-shards "$DIR"/config.yaml

t0=$(now); "$BIN" preprocess --input "$IN" --output "$DIR/anvil-pp.h5ad" --hvg 2000 >/dev/null 2>&1; t1=$(now)
"$SCANPY_PYTHON" -W ignore - "$IN" "$DIR/scanpy-pp.h5ad" <<'PY'
import sys, time
t = time.time()
import anndata as ad, scanpy as sc
t_import = time.time()
a = ad.read_h5ad(sys.argv[1])
sc.pp.normalize_total(a, target_sum=1e4)
sc.pp.log1p(a)
sc.pp.highly_variable_genes(a, n_top_genes=2000)
a = a[:, a.var["highly_variable"]].copy()
a.write_h5ad(sys.argv[2])
print(f"preprocess (HVG 2000): scanpy {time.time() - t:.3f} s ({time.time() - t_import:.3f} s after its imports)")
PY
anvil_pp=$(echo "$t1 - $t0" | bc)
echo "preprocess (HVG 2000): anvil ${anvil_pp} s"

printf 'data:\n  paths: [%s]\n' "$IN" > "$DIR/config.yaml"
t0=$(now); "$BIN" shard --config "$DIR/config.yaml" --output-dir "$DIR/anvil-shards" >/dev/null 2>&1; t1=$(now)
echo "shard: anvil $(echo "$t1 - $t0" | bc) s"
"$SMF_PYTHON" -W ignore - "$IN" "$DIR/smf-shards" <<'PY'
import sys, time
t = time.time()
import anndata as ad
from scmodelforge.data.gene_vocab import GeneVocab
from scmodelforge.data.sharding import convert_to_shards
vocab = GeneVocab.from_adata(ad.read_h5ad(sys.argv[1]))
convert_to_shards([sys.argv[1]], vocab, sys.argv[2])
print(f"shard: scModelForge {time.time() - t:.3f} s")
PY
for f in manifest.json shard_000/X.npy shard_000/gene_indices.npy shard_000/n_genes.npy; do
  cmp -s "$DIR/anvil-shards/$f" "$DIR/smf-shards/$f" && echo "same bytes: $f" || echo "DIFFERENT: $f"
done
