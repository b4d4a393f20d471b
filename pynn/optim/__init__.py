"""Optimizers: SGD, Adam, AdamW, RMSprop, Adagrad with torch.optim's update
rules (``optimizer``), gradient clipping (``clip``) and learning-rate
schedules (``lr_scheduler``).

Each ``step()`` is one fused kernel pass over every trainable parameter
(csrc/optim.c); frozen layers (``trainable=False``) are skipped. An optimizer
takes the model (a ``Sequential`` or a single layer), reads the gradients its
``backward`` wrote and updates the parameters in place."""
from pynn.optim import lr_scheduler
from pynn.optim.clip import clip_grad_norm_
from pynn.optim.optimizer import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop, parameter_owners

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "clip_grad_norm_", "lr_scheduler"]
