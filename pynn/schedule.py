"""Inference schedules: a model's calls for one input shape, as the steps an
inference plan runs (pynn/_kernels/plan.pxi) and the buffers they write.

A model hands over its calls in a topological order, each reading and
writing value slots. The schedule then
- turns views (Flatten, Dropout and Identity at inference, Reshape) into
  aliases of the slot they view: no step, no copy;
- folds a BatchNorm2d that is a convolution's only reader into that
  convolution (its weights and bias, refolded from the live arrays at every
  run, so training or loading weights never leaves the plan stale);
- fuses a ReLU that is the only reader of a GEMM, convolution or residual
  sum into that step's epilogue;
- assigns buffers by liveness: a slot's buffer returns to a pool after the
  last step that reads it, and a later slot takes the smallest free buffer
  that fits (growing one if none does); an element-wise step writes over an
  input it reads for the last time. Peak memory then stays near the two or
  three largest tensors alive at once, not the sum of all.
Model inputs and outputs are the caller's arrays, never the plan's."""
import math

from pynn.layers import BatchNorm2d, ReLU

# Step kinds whose epilogue can apply a ReLU.
_TAKES_RELU = ("gemm", "conv", "add")
# Element-wise step kinds, which may write over an input of the same size.
_IN_PLACE = ("add", "map")


class Step:
    """One step: ``kind`` is a kernel kind of ``Layer.kernel_step`` or
    "python" (the plan calls ``layer.infer``); ``sources`` and ``target``
    are slots; ``input_shapes`` the shapes the layer reads."""
    __slots__ = ("kind", "layer", "sources", "target", "input_shapes", "arguments", "watched",
                 "relu", "batchnorm", "takes_list")

    def __init__(self, kind, layer, sources, target, input_shapes, arguments, watched, takes_list):
        self.kind, self.layer, self.sources, self.target = kind, layer, sources, target
        self.input_shapes, self.arguments, self.watched = input_shapes, arguments, list(watched)
        self.relu, self.batchnorm, self.takes_list = False, None, takes_list


class Schedule:
    """``steps`` in order; per slot its shape and its buffer (an index into
    ``buffer_sizes``, or None for the caller's arrays); the slots holding the
    model's inputs and outputs."""

    def __init__(self, steps, slot_shapes, slot_buffers, buffer_sizes, input_slots, output_slots):
        self.steps, self.slot_shapes, self.slot_buffers = steps, slot_shapes, slot_buffers
        self.buffer_sizes, self.input_slots, self.output_slots = buffer_sizes, input_slots, output_slots

    @property
    def peak_floats(self):
        """Floats of intermediate buffers the plan holds."""
        return sum(self.buffer_sizes)


def build(calls, slot_shapes, input_slots, output_slots):
    """The schedule of ``calls``: ``(layer, source slots, target slots,
    takes_list)`` in a topological order, with ``slot_shapes`` for this input."""
    alias = list(range(len(slot_shapes)))

    def canonical(slot):
        while alias[slot] != slot:
            slot = alias[slot]
        return slot

    readers = [0] * len(slot_shapes)
    for _, sources, _, _ in calls:
        for source in sources:
            readers[source] += 1
    outputs = set(output_slots)
    # a slot's value is seen only through it: what a fusion into its producer needs
    private = [True] * len(slot_shapes)

    def sole_reader(slot):
        return private[slot] and readers[slot] == 1 and slot not in outputs

    def view(target, source):
        alias[target] = canonical(source)
        private[target] = sole_reader(source)

    steps, producer = [], {}
    for layer, sources, targets, takes_list in calls:
        shapes = [slot_shapes[source] for source in sources]
        source = sources[0]
        if len(targets) == 1:
            target = targets[0]
            before = producer.get(canonical(source))
            if before is not None and not takes_list and sole_reader(source):
                # a convolution with its own ReLU (Conv2d, ReLU, BatchNorm2d) normalises after it: no fold
                if (type(layer) is BatchNorm2d and before.kind == "conv" and before.batchnorm is None
                        and not before.relu and not before.arguments[2]):
                    before.batchnorm = layer
                    before.relu = layer.activation == "relu"  # a ReLU the model fused into it
                    before.watched += [(layer.params, "weight"), (layer.params, "bias"),
                                       (layer.buffers, "running_mean"), (layer.buffers, "running_var"),
                                       (vars(layer), "eps"), (vars(layer), "activation")]
                    view(target, source)
                    continue
                if type(layer) is ReLU and before.kind in _TAKES_RELU and not before.relu:
                    before.relu = True
                    view(target, source)
                    continue
            kernel_step = getattr(layer, "kernel_step", None)  # nested models have none
            described = kernel_step(shapes if takes_list else shapes[0]) if kernel_step else None
            if described is not None and described[0] == "view":
                view(target, source)
                continue
        else:
            described = None
        kind, arguments, watched = described if described is not None else ("python", (), ())
        step = Step(kind, layer, [canonical(slot) for slot in sources],
                    targets[0] if len(targets) == 1 else tuple(targets), shapes, arguments, watched,
                    takes_list)
        if len(targets) == 1:
            producer[targets[0]] = step
        steps.append(step)
    inputs = [canonical(slot) for slot in input_slots]
    outs = [canonical(slot) for slot in output_slots]
    slot_buffers, sizes = _assign_buffers(steps, slot_shapes, set(inputs) | set(outs))
    return Schedule(steps, slot_shapes, slot_buffers, sizes, inputs, outs), alias


def _assign_buffers(steps, slot_shapes, callers):
    """A buffer per written slot, by liveness (see the module's docstring)."""
    last_read = {}
    for index, step in enumerate(steps):
        for source in step.sources:
            last_read[source] = index
    slot_buffers = [None] * len(slot_shapes)
    sizes, free = [], []
    for index, step in enumerate(steps):
        targets = step.target if isinstance(step.target, tuple) else (step.target,)
        dying = [source for source in dict.fromkeys(step.sources)
                 if last_read.get(source) == index and slot_buffers[source] is not None]
        if step.kind in _IN_PLACE and dying and targets[0] not in callers:
            # an element-wise step writes over an input it reads for the last time
            slot_buffers[targets[0]] = slot_buffers[dying.pop(0)]
        else:
            for target in targets:
                if target not in callers:
                    slot_buffers[target] = _take(free, sizes, max(math.prod(slot_shapes[target]), 1))
        dead = [target for target in targets if target not in callers and target not in last_read]
        dead += dying
        free.extend(slot_buffers[slot] for slot in dead if slot_buffers[slot] is not None)
    return slot_buffers, sizes


def _take(free, sizes, need):
    """The smallest free buffer of at least ``need`` floats, else the largest
    free one grown to ``need``, else a new one."""
    fitting = [buffer for buffer in free if sizes[buffer] >= need]
    if fitting:
        buffer = min(fitting, key=lambda b: sizes[b])
    elif free:
        buffer = max(free, key=lambda b: sizes[b])
        sizes[buffer] = need
    else:
        sizes.append(need)
        return len(sizes) - 1
    free.remove(buffer)
    return buffer
