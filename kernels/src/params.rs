//! Parameter layout: every parameter of a model lives in one contiguous buffer, gradients in a
//! second buffer with the same layout, Adam moments in two more. Modules hold [`ParamView`]s
//! (offset, length); a checkpoint is the list of (PyTorch name, offset, shape).

use crate::rng::RngKey;
use crate::{Float, KernelError, Result};

/// Where one parameter lives in the flat buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamView {
    pub offset: usize,
    pub len: usize,
}

impl ParamView {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// How a parameter starts, following PyTorch's defaults for the module that owns it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// U(−a, a)
    Uniform(f64),
    /// N(0, σ²)
    Normal(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    pub name: String,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl ParamEntry {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn view(&self) -> ParamView {
        ParamView {
            offset: self.offset,
            len: self.len(),
        }
    }
}

/// Builder and index of the flat parameter buffer.
#[derive(Clone, Debug, Default)]
pub struct ParamLayout {
    entries: Vec<ParamEntry>,
    total: usize,
}

/// Each parameter starts on a multiple of this many elements (64 bytes for f32), so vector
/// loads and a later GPU copy stay aligned.
const ALIGN: usize = 16;

impl ParamLayout {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a parameter and returns its view.
    pub fn add(&mut self, name: impl Into<String>, shape: &[usize], init: Init) -> ParamView {
        let offset = self.total.div_ceil(ALIGN) * ALIGN;
        let e = ParamEntry {
            name: name.into(),
            offset,
            shape: shape.to_vec(),
            init,
        };
        let v = e.view();
        self.total = offset + v.len;
        self.entries.push(e);
        v
    }

    /// Total length of the flat buffers (including alignment gaps).
    pub fn total(&self) -> usize {
        self.total
    }

    /// (name, offset, shape) of every parameter in order: the checkpoint index.
    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    /// The entries `keep` selects, at their offsets in this layout (same total): a view of
    /// part of the same buffers, e.g. what a checkpoint of a partly frozen model saves.
    pub fn subset(&self, keep: impl Fn(&ParamEntry) -> bool) -> ParamLayout {
        ParamLayout {
            entries: self.entries.iter().filter(|e| keep(e)).cloned().collect(),
            total: self.total,
        }
    }

    /// The same entries at the offsets `offset` gives, in a buffer of `total`: e.g. the Adam
    /// moments of a partly frozen model, which hold only what trains.
    pub fn remapped(&self, offset: impl Fn(&ParamEntry) -> usize, total: usize) -> ParamLayout {
        let entries: Vec<ParamEntry> = self
            .entries
            .iter()
            .map(|e| ParamEntry {
                offset: offset(e),
                ..e.clone()
            })
            .collect();
        assert!(
            entries.iter().all(|e| e.offset + e.len() <= total),
            "remapped entries must fit in {total}"
        );
        ParamLayout { entries, total }
    }

    pub fn get(&self, name: &str) -> Result<&ParamEntry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| KernelError::UnknownParam(name.to_string()))
    }

    /// A host buffer with every parameter initialized from `seed` (deterministic).
    pub fn init_host<T: Float>(&self, seed: u64) -> Vec<T> {
        let mut buf = vec![T::ZERO; self.total];
        for (pi, e) in self.entries.iter().enumerate() {
            let key = RngKey::new(seed, 0, pi as u64);
            let u = |i: usize| (key.bits(i as u64) as f64 + 0.5) / 4_294_967_296.0;
            for (i, x) in buf[e.view().range()].iter_mut().enumerate() {
                let v = match e.init {
                    Init::Zeros => 0.0,
                    Init::Ones => 1.0,
                    Init::Uniform(a) => (2.0 * u(2 * i) - 1.0) * a,
                    Init::Normal(s) => {
                        // Box–Muller from two counter-based uniforms.
                        let (u1, u2) = (u(2 * i), u(2 * i + 1));
                        s * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
                    }
                };
                *x = T::from_f64(v);
            }
        }
        buf
    }

    /// Copies `values` into parameter `name` of a host buffer (e.g. loading a checkpoint).
    pub fn set_host<T: Float>(&self, buf: &mut [T], name: &str, values: &[T]) -> Result<()> {
        let e = self.get(name)?;
        if values.len() != e.len() {
            return Err(KernelError::Shape {
                op: "set_host",
                detail: format!("{name}: {} values for shape {:?}", values.len(), e.shape),
            });
        }
        buf[e.view().range()].copy_from_slice(values);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_named() {
        let mut l = ParamLayout::new();
        let a = l.add("a.weight", &[3, 5], Init::Uniform(0.1));
        let b = l.add("a.bias", &[3], Init::Zeros);
        assert_eq!(a.offset, 0);
        assert_eq!(b.offset, 16);
        assert_eq!(l.total(), 19);
        assert_eq!(l.get("a.bias").map(|e| e.shape.clone()).ok(), Some(vec![3]));
        assert!(l.get("nope").is_err());
        let h: Vec<f32> = l.init_host(1);
        assert!(h[..15].iter().all(|x| x.abs() <= 0.1) && h[..15].iter().any(|&x| x != 0.0));
        assert!(h[16..].iter().all(|&x| x == 0.0));
        assert_eq!(h, l.init_host::<f32>(1));
        let mut h = h;
        assert!(l.set_host(&mut h, "a.bias", &[1.0, 2.0]).is_err());
        assert!(l.set_host(&mut h, "a.bias", &[1.0, 2.0, 3.0]).is_ok());
        assert_eq!(&h[16..], &[1.0, 2.0, 3.0]);
    }
}
