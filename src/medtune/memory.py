"""Estimated peak memory of a backbone at a batch size, said once when a job starts, and the batch
size that fits when a GPU runs out.

The estimate needs no memory itself: the backbone's forward runs on the meta device (its
parameters swapped for meta tensors by ``torch.func.functional_call``), and a dispatch mode
follows every tensor an operation creates until it is freed, so the peak of live bytes is the
activation memory the real forward would hold, tensor by tensor (no allocator fragmentation,
no kernel workspace). Run at batch sizes 1 and 2, it gives a cost per image and a fixed part;
the weights (and, when training, their gradients and Adam's two moments) are counted exactly.
Under autocast (a GPU's fp16) most activations are half as large, which the estimate halves.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GB = 1024**3
# of a GPU's memory, what a batch may plan to use: the CUDA context, the allocator's cache and
# fragmentation take the rest
BUDGET = 0.85

_announced: "MemoryEstimate | None" = None  # the estimate this job stated at its start (read by jobs.oom_message)


@dataclass(frozen=True)
class MemoryEstimate:
    backbone: str
    batch_size: int
    training: bool
    half_activations: bool
    weight_bytes: int  # parameters and buffers, plus gradients and optimiser state when training
    fixed_bytes: int  # activations that do not grow with the batch
    per_image_bytes: int

    def peak_bytes(self, batch_size: int | None = None) -> int:
        n = self.batch_size if batch_size is None else batch_size
        return self.weight_bytes + self.fixed_bytes + n * self.per_image_bytes

    def batch_that_fits(self, device_bytes: int) -> int:
        """The largest power of two whose estimate stays within :data:`BUDGET` of ``device_bytes``; 0 if not even 1."""
        n = 0
        while self.peak_bytes(2 ** n) <= BUDGET * device_bytes and 2**n <= max(self.batch_size, 1):
            n += 1
        return 0 if n == 0 else 2 ** (n - 1)

    def line(self) -> str:
        what = "training" if self.training else "encoding"
        precision = "fp16 autocast" if self.half_activations else "fp32"
        return (
            f"estimated peak memory of backbone {self.backbone} at batch size {self.batch_size} ({what}, {precision}): "
            f"{_gb(self.weight_bytes)} weights{' with gradients and optimiser state' if self.training else ''} + "
            f"{_gb(self.fixed_bytes + self.batch_size * self.per_image_bytes)} activations "
            f"({_mb(self.per_image_bytes)} per image) = {_gb(self.peak_bytes())}"
        )


def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= GB / 10 else _mb(n)


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 / 10 else f"{n / 1024:.1f} kB"


class _LiveBytes(TorchDispatchMode):
    """The peak of bytes held by tensors that operations create (views and in-place results excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or func._schema.is_mutable:
            return out
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                nbytes = tensor.numel() * tensor.element_size()
                self.live += nbytes
                weakref.finalize(tensor, self._free, nbytes)
        self.peak = max(self.peak, self.live)
        return out


class _EncodeImage(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)


def _activation_peak(model: nn.Module, image_size: int, batch_size: int, training: bool) -> int:
    wrapper = _EncodeImage(model)
    meta = {name: torch.empty_like(t, device="meta").requires_grad_(training and t.requires_grad)
            for name, t in [*wrapper.named_parameters(), *wrapper.named_buffers()]}
    x = torch.zeros(batch_size, 3, image_size, image_size, device="meta")
    counter = _LiveBytes()
    # training: autograd keeps what the backward needs alive through the forward; the backward frees it
    # as it makes the gradients (counted with the weights), so the forward's peak stands for the step's
    with torch.inference_mode(not training), counter:
        out = torch.func.functional_call(wrapper, meta, (x,))
    del out
    return counter.peak + x.numel() * x.element_size()


def estimate(backbone, batch_size: int, training: bool = False, half_activations: bool = False) -> MemoryEstimate:
    """Estimated peak memory of ``backbone`` (a :class:`medtune.models.Backbone`) encoding (or training
    its image tower on) ``batch_size`` images at its input size."""
    model = backbone.model
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if training:  # a gradient and Adam's two moments per trainable parameter
        weights += 3 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    one, two = (_activation_peak(model, backbone.image_size, n, training) for n in (1, 2))
    scale = 0.5 if half_activations else 1.0
    per_image = max(two - one, 0)
    return MemoryEstimate(backbone.name, int(batch_size), training, half_activations, int(weights),
                          int(scale * (one - per_image)), int(scale * per_image))


def announce(backbone, batch_size: int, device, training: bool = False) -> MemoryEstimate | None:
    """Estimate, say it in one log line, and keep it for the out-of-memory message; None (and a line
    saying so) when the backbone's forward cannot run on the meta device."""
    from medtune.jobs import report

    global _announced
    try:
        found = estimate(backbone, batch_size, training, half_activations=torch.device(device).type == "cuda")
    except Exception as err:  # a diagnostic: a model whose forward the meta device cannot run still trains
        report(f"no memory estimate for backbone {backbone.name} ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
        _announced = None
        return None
    report(found.line())
    _announced = found
    return found


def gpu_bytes() -> int:
    """Memory of the GPU this process computes on."""
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory


def announced() -> MemoryEstimate | None:
    return _announced


def forget() -> None:
    """A new job: no estimate stated yet."""
    global _announced
    _announced = None


def out_of_memory_advice(device_bytes: int | None = None) -> str | None:
    """What to set after running out of GPU memory, from the estimate this job announced; None without one."""
    found = _announced
    if found is None:
        return None
    if device_bytes is None:
        try:
            device_bytes = gpu_bytes()
        except (RuntimeError, AssertionError):  # no CUDA device to ask after all: say the setting alone
            return None
    fits = found.batch_that_fits(device_bytes)
    head = f"backbone {found.backbone} at batch size {found.batch_size} needs about {_gb(found.peak_bytes())} (estimate); the GPU has {_gb(device_bytes)}"
    if fits == 0:
        return f"{head}, too little even for one image: use a GPU with more memory, or device: cpu"
    return f"{head}; batch size {fits} fits (about {_gb(found.peak_bytes(fits))})"


def preset_table(batch_size: int = 256) -> str:
    """A Markdown table of every published preset's estimate at ``batch_size``, built on the meta device:
    ``python -m medtune.memory [batch_size]``."""
    from medtune.backbones import registered
    from medtune.models import Backbone

    rows = ["| family | model | weights (GB) | activations per image, fp16 (MB) | peak, fp16 autocast (GB) | peak, fp32 (GB) |",
            "|---|---|---|---|---|---|"]
    for family in registered().values():
        for name, preset in family.presets.items():
            if name.startswith("medtune-"):
                continue
            with torch.device("meta"):
                model = family.load().encoder({"family": family.name, "model": name})
            backbone = Backbone(name, model, None, int(preset["image_size"]), (0.0,) * 3, (1.0,) * 3)
            half, full = estimate(backbone, batch_size, half_activations=True), estimate(backbone, batch_size)
            rows.append(f"| {family.name} | {name} | {half.weight_bytes / GB:.2f} | {half.per_image_bytes / 2**20:.1f} | "
                        f"{half.peak_bytes() / GB:.1f} | {full.peak_bytes() / GB:.1f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    print(preset_table(int(sys.argv[1]) if len(sys.argv) > 1 else 256))
