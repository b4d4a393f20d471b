"""Gradient clipping by the norm of every gradient together, as
torch.nn.utils.clip_grad_norm_: one kernel pass computes the norm, and a
second scales the gradients when it exceeds ``max_norm`` (csrc/optim.c)."""
import weakref

from pynn._checks import as_real
from pynn._kernels.core import GradientTable
from pynn.optim.optimizer import parameter_owners

# Each model's gradient table, kept as long as the model lives and rebuilt
# only when freezing changed or a gradient array was replaced.
_TABLES = weakref.WeakKeyDictionary()


class _Gradients:
    def __init__(self, owners):
        self.trainable = [owner.trainable for _, owner in owners]
        self.bound = [(owner, key, grad) for _, owner in owners if owner.trainable
                      for key, grad in owner.grads.items()]
        self.row_sources = [(getattr(owner, "touched_rows", None), key) for owner, key, _ in self.bound]
        self.table = GradientTable([grad for _, _, grad in self.bound])

    def current(self, owners):
        return ([owner.trainable for _, owner in owners] == self.trainable
                and all(owner.grads[key] is grad for owner, key, grad in self.bound))

    def touched_rows(self):
        """As ``Optimizer._touched_rows``: per gradient, the only rows that may
        be non-zero (None: every row), or None when none is row-sparse."""
        rows = [touched(key) if touched is not None else None for touched, key in self.row_sources]
        return rows if any(entry is not None for entry in rows) else None


def clip_grad_norm_(model, max_norm, norm_type=2.0):
    """Scale the trainable gradients of ``model`` in place so that their joint
    ``norm_type``-norm (> 0, or ``math.inf`` for the largest magnitude) is at
    most ``max_norm``, and return that norm as it was before, as a float.

    As PyTorch: the factor is ``max_norm / (total_norm + 1e-6)``, applied
    when below 1; a NaN or infinite norm is returned and spreads into the
    gradients. The norm is accumulated in double precision, so it may differ
    from PyTorch's float32 one in the last digits."""
    where = "clip_grad_norm_"
    max_norm = as_real(max_norm, where, "max_norm")
    if not max_norm >= 0.0:
        raise ValueError(f"{where}: max_norm must be >= 0, got {max_norm}")
    norm_type = as_real(norm_type, where, "norm_type")
    if not norm_type > 0.0:
        raise ValueError(f"{where}: norm_type must be > 0 or math.inf, got {norm_type}")
    owners = parameter_owners(model, where)
    gradients = _TABLES.get(model)
    if gradients is None or not gradients.current(owners):
        gradients = _TABLES[model] = _Gradients(owners)
    rows = gradients.touched_rows()
    total = gradients.table.norm(norm_type, rows)
    factor = max_norm / (total + 1e-6)
    if not factor >= 1.0:  # NaN included
        gradients.table.scale(factor, rows)
    return total
