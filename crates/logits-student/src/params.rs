//! Named parameter tensors: the one view of a model that optimizers, checkpoints and exports
//! share. A model's gradient is a model of the same shape (`zeros_like`), so parameters and
//! gradients line up tensor by tensor.

/// A model whose parameters can be listed by name, in a fixed order.
pub trait Params {
    /// (name, shape, values) of every parameter tensor, in a fixed order.
    fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])>;
    /// The same tensors, mutable, in the same order.
    fn tensors_mut(&mut self) -> Vec<&mut [f32]>;
    /// Number of scalar parameters.
    fn parameter_count(&self) -> usize {
        self.tensors().iter().map(|(_, _, v)| v.len()).sum()
    }
    /// Sets every parameter to zero (to reuse a gradient accumulator).
    fn zero(&mut self) {
        for t in self.tensors_mut() {
            t.fill(0.0);
        }
    }
}
