//! Single-cell data: AnnData readers, preprocessing, vocabulary, tokenizers, masking and sharded loading.
