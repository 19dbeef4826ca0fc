//! Activation checkpointing ([C-CHECKPOINTING]): a forward pass that keeps
//! only each layer's input, and the backward that recomputes every layer
//! from its input, last to first, and backpropagates through it. libtorch's
//! C++ API has no checkpoint function, so the backward is chained by hand:
//! the loss's backward stops at the last layer's output (a leaf), and
//! [`LayerInputs::backward`] carries its gradient down through the layers
//! and into the embeddings.

use tch::{Kind, Tensor};

use super::Result;
use super::model::LanguageModel;
use super::nn::Frame;

/// What a checkpointed pass kept: the embeddings (in the graph, for their
/// gradient), every layer's input (out of it), the pass's frame, and the
/// leaf where the loss's backward stops.
pub struct LayerInputs {
    embedded: Tensor,
    inputs: Vec<Tensor>,
    frame: Frame,
    cut: Tensor,
}

impl LanguageModel {
    /// [`LanguageModel::hidden`] without a cache, keeping only each layer's
    /// input: the layers run without a graph, the final norm with one on a
    /// leaf that stands for the last layer's output. The loss's backward
    /// ends there; [`LayerInputs::backward`] must follow it.
    pub fn hidden_checkpointed(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
    ) -> Result<(Tensor, LayerInputs)> {
        let body = self.body();
        let (embedded, frame) = body.embed(ids, positions, key_valid)?;
        let mut inputs = Vec::with_capacity(body.num_layers());
        let mut x = embedded.detach();
        tch::no_grad(|| -> Result<()> {
            for i in 0..body.num_layers() {
                let next = body.layer(i, &x, &frame, None)?;
                inputs.push(std::mem::replace(&mut x, next));
            }
            Ok(())
        })?;
        let cut = x.set_requires_grad(true);
        let hidden = body.finish(&cut)?;
        Ok((
            hidden,
            LayerInputs {
                embedded,
                inputs,
                frame,
                cut,
            },
        ))
    }
}

impl LayerInputs {
    /// After the loss's backward: recomputes layer `i` from its input, from
    /// the last layer to the first, backpropagates the gradient of its
    /// output through it (accumulating the layer's parameter gradients),
    /// and hands the gradient of its input to the layer below; last, the
    /// embeddings'. Nothing to do when the loss did not reach the layers.
    pub fn backward(self, model: &LanguageModel) -> Result<()> {
        let mut grad = self.cut.grad();
        if !grad.defined() {
            return Ok(());
        }
        let body = model.body();
        for (i, input) in self.inputs.iter().enumerate().rev() {
            let x = input.detach().set_requires_grad(true);
            let y = body.layer(i, &x, &self.frame, None)?;
            // d/dy of sum(y * g) is g: the layer's backward with that grad.
            (y * &grad).sum(Kind::Float).f_backward()?;
            grad = x.grad();
            if !grad.defined() {
                return Ok(());
            }
        }
        if self.embedded.requires_grad() {
            (&self.embedded * &grad).sum(Kind::Float).f_backward()?;
        }
        Ok(())
    }
}
