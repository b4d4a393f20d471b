"""Optimizers: SGD, Adam, AdamW with torch.optim's update rules (``optimizer``),
and learning-rate schedules (``lr_scheduler``).

Each ``step()`` is one fused kernel pass over every trainable parameter
(csrc/optim.c); frozen layers (``trainable=False``) are skipped. An optimizer
takes the model (a ``Sequential`` or a single layer), reads the gradients its
``backward`` wrote and updates the parameters in place."""
from pynn.optim import lr_scheduler
from pynn.optim.optimizer import SGD, Adam, AdamW, Optimizer, parameter_owners

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]
