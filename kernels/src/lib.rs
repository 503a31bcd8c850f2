//! Compute: explicit forward/backward ops on a Device (CPU always; CUDA behind the `cuda` feature).
