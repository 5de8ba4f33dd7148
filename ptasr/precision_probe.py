"""Low precision on a CPU only where it is right: every convolution and linear call a model makes is probed in
bf16/fp16 against float32 on this machine, and the calls that fail run in float32.

Why: CPU kernels for bf16 are not the same on every CPU. On Intel Xeons with AMX, torch 2.14.1's oneDNN computes
a grouped convolution with 4 channels per group wrongly (relative error ~1.05 against float32 for 64
channels in 16 groups, kernel 128 or 16, the shape of a small model's positional conv), while the same call is right on AMD's AVX512-BF16 and for other
shapes. A model trained or run in bf16 there learns nothing or transcribes garbage, silently.

How: one forward pass of the model on a second of random audio, in eval mode and with the random streams left as
they were, records each distinct call configuration of ``conv1d/2d/3d`` and ``linear`` (weight shape and memory
layout, bias, stride, padding, dilation, groups, input shape and layout: what decides the kernel), whatever path
the model takes to them (the encoder calls ``conv2d`` on channels-last views of its Conv1d weights). Each is run
once per process on random tensors of the recorded shapes in the low precision and in float32, with inputs and
weights rounded to the low precision first, so that a right kernel differs by its output rounding only
(~0.003); for training, the gradients are compared too. If any fails, a function mode entered around the model's
``forward`` (hooks on the model: nothing in its files, parameters or ``state_dict`` changes) computes exactly
those calls in float32 (inputs and weights cast up, autocast off, output cast back to the low precision), and
one line says which and why.

    >>> model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.Flatten(1), torch.nn.LazyLinear(2))
    >>> guard_low_precision(model, torch.bfloat16, example=(torch.randn(1, 1, 16),))  # right here: no change
    []
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# A right kernel differs from float32 by the low precision's output rounding (bf16: 2^-8 relative at most,
# ~0.003 measured over whole outputs); the wrong AMX conv by ~1. Well above one, far below the other.
TOLERANCE = {torch.bfloat16: 0.03, torch.float16: 0.01}
# The probed functions and their argument names after the tensors (torch's own order).
PROBED: dict[Any, tuple[str, ...]] = {
    torch.conv1d: ("stride", "padding", "dilation", "groups"),
    torch.conv2d: ("stride", "padding", "dilation", "groups"),
    torch.conv3d: ("stride", "padding", "dilation", "groups"),
    F.linear: (),
}
DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}


@dataclass(frozen=True)
class Call:
    """One call configuration: what decides the kernel, and what the probe needs to rebuild the call."""

    function: str
    input_shape: tuple[int, ...]
    input_stride: tuple[int, ...]
    weight_shape: tuple[int, ...]
    weight_stride: tuple[int, ...]
    bias: bool
    options: tuple[tuple[str, Any], ...]  # stride, padding, dilation, groups as given
    layout: str  # the input's: "channels_last" (N, C, H, W) stored channels-last, oneDNN's preferred, or "strided"

    @property
    def kernel(self) -> tuple:
        """The configuration without the input's length and batch: what the float32 fallback matches on."""
        return (self.function, len(self.input_shape), self.layout, self.weight_shape, self.weight_stride, self.bias, self.options)

    def describe(self) -> str:
        """``conv2d(weight 64x4x1x128, groups 16)``: as a person reads it."""
        options = ", ".join(f"{k} {v}" for k, v in self.options if set(v if isinstance(v, tuple) else [v]) != {DEFAULTS[k]})
        return f"{self.function}(weight {'x'.join(map(str, self.weight_shape))}{', ' if options else ''}{options})"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one probe: relative error against float32 (the largest of output and gradients)."""

    error: float
    ok: bool


_VERDICTS: dict[tuple[Call, torch.dtype, bool], Verdict] = {}  # per process: a configuration is probed once
_FUNCTIONS = {function: getattr(function, "__name__", str(function)) for function in PROBED}


def _call_of(function: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[Call, torch.Tensor,
                                                                                    torch.Tensor, Any]:
    """The configuration of ``function(*args, **kwargs)``, its input, weight and bias."""
    x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    names = PROBED[function]
    options = tuple((name, args[3 + i] if len(args) > 3 + i else kwargs.get(name, DEFAULTS[name]))
                    for i, name in enumerate(names))
    options = tuple((name, tuple(value) if isinstance(value, list) else value) for name, value in options)
    layout = "channels_last" if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else "strided"
    call = Call(_FUNCTIONS[function], tuple(x.shape), x.stride(), tuple(weight.shape), weight.stride(),
                bias is not None, options, layout)
    return call, x, weight, bias


def _run(call: Call, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    function = next(f for f, name in _FUNCTIONS.items() if name == call.function)
    return function(x, weight, bias, **dict(call.options))


def _random(shape: tuple[int, ...], stride: tuple[int, ...], generator: torch.Generator, scale: float = 1.0
            ) -> torch.Tensor:
    """A random tensor with the recorded shape and memory layout (channels-last stays channels-last)."""
    values = torch.randn(shape, generator=generator) * scale
    return torch.empty_strided(shape, stride).copy_(values) if values.numel() else values


def probe(call: Call, dtype: torch.dtype, gradients: bool = False) -> Verdict:
    """Whether ``call`` computes right in ``dtype`` on the CPU (and its gradients, if asked); cached per process."""
    key = (call, dtype, gradients)
    if key not in _VERDICTS:
        generator = torch.Generator().manual_seed(0)
        fan_in = max(1, torch.Size(call.weight_shape)[1:].numel())
        tensors = [_random(call.input_shape, call.input_stride, generator),
                   _random(call.weight_shape, call.weight_stride, generator, fan_in ** -0.5)]
        if call.bias:
            tensors.append(torch.randn(call.weight_shape[0], generator=generator))
        tensors = [t.to(dtype) for t in tensors]  # rounded once: both sides compute on the same numbers
        errors = []
        with torch.autocast("cpu", enabled=False), torch.enable_grad():
            outputs = {}
            for side in (dtype, torch.float32):
                inputs = [t.to(side).requires_grad_(gradients) for t in tensors]
                out = _run(call, inputs[0], inputs[1], inputs[2] if call.bias else None)
                grads = torch.autograd.grad(out, inputs, torch.ones_like(out)) if gradients else ()
                outputs[side] = [out.detach(), *grads]
            for low, reference in zip(outputs[dtype], outputs[torch.float32], strict=True):
                errors.append(((low.float() - reference).norm() / reference.norm().clamp_min(1e-12)).item())
        error = max(errors)
        _VERDICTS[key] = Verdict(error, error <= TOLERANCE[dtype])  # NaN fails: the comparison is False
    return _VERDICTS[key]


class _Record(TorchFunctionMode):
    """Collects the probed calls of one forward pass, each with the module that made it."""

    def __init__(self, where: list[str]) -> None:
        super().__init__()
        self.where = where
        self.calls: dict[Call, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PROBED:
            self.calls.setdefault(_call_of(func, args, kwargs)[0], self.where[-1])
        return func(*args, **kwargs)


class _Float32Calls(TorchFunctionMode):
    """Computes the listed call configurations in float32, everything else as it was asked."""

    def __init__(self, failing: set[Call]) -> None:
        super().__init__()
        self.failing = {call.kernel for call in failing}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PROBED:
            call, x, weight, bias = _call_of(func, args, kwargs)
            if call.kernel in self.failing:
                low = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
                with torch.autocast("cpu", enabled=False):
                    out = func(x.float(), weight.float(), None if bias is None else bias.float(),
                               **dict(call.options))
                return out.to(low)
        return func(*args, **kwargs)


def record_calls(model: nn.Module, dtype: torch.dtype, example: Sequence[Any]) -> dict[Call, str]:
    """The probed call configurations of ``model(*example)`` in ``dtype`` (autocast for float32 weights), each
    with the name of the module that made it. Eval mode and the random streams are restored afterwards."""
    where = [type(model).__name__]

    def enter(module: nn.Module, args: Any, name: str) -> None:
        where.append(name or type(model).__name__)

    def leave(module: nn.Module, args: Any, output: Any) -> None:  # None: the output stays the module's
        where.pop()

    hooks = []
    for name, module in model.named_modules():
        hooks.append(module.register_forward_pre_hook(functools.partial(enter, name=name)))
        hooks.append(module.register_forward_hook(leave, always_call=True))
    modes = {module: module.training for module in model.modules()}  # some may be in eval on purpose (frozen)
    weights_dtype = next(model.parameters()).dtype
    example = [e.to(weights_dtype) if torch.is_tensor(e) and e.is_floating_point() else e for e in example]
    recorder = _Record(where)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), recorder, \
                torch.autocast("cpu", dtype=dtype, enabled=weights_dtype == torch.float32):
            model.eval()
            model(*example)
    finally:
        for module, training in modes.items():
            module.training = training
        for hook in hooks:
            hook.remove()
    return recorder.calls


def _enter_mode(module: nn.Module, args: Any, mode: TorchFunctionMode) -> None:
    mode.__enter__()


def _leave_mode(module: nn.Module, args: Any, output: Any, mode: TorchFunctionMode) -> None:
    mode.__exit__(None, None, None)  # None: the output stays the model's


def guard_low_precision(model: nn.Module, dtype: torch.dtype, device: torch.device | str = "cpu",
                        gradients: bool = False, example: Sequence[Any] | None = None) -> list[str]:
    """Probe every conv/linear call of ``model`` in ``dtype`` on a CPU; those that fail run in float32.

    ``example`` are the arguments of one forward pass (default: a second of audio, ``(waveforms (1, 16000),
    lengths (1,))``, what a wav2vec2 takes); ``gradients`` probes the backward pass too (training). Returns the
    failing calls, described, after one line on stderr that names them, their modules and the error. On a GPU,
    or in float32, nothing is probed. A model guarded before is not guarded twice.
    """
    if torch.device(device).type != "cpu" or dtype not in TOLERANCE or getattr(model, "_ptasr_float32_calls", None):
        return []
    if example is None:
        example = (torch.randn(1, 16000, generator=torch.Generator().manual_seed(0)), torch.tensor([16000]))
    failing = {call: (where, verdict) for call, where in record_calls(model, dtype, example).items()
               if not (verdict := probe(call, dtype, gradients)).ok}
    if not failing:
        return []
    mode = _Float32Calls(set(failing))
    model._ptasr_float32_calls = mode  # an attribute, not a buffer: state_dict and the files stay the same
    model.register_forward_pre_hook(functools.partial(_enter_mode, mode=mode))
    model.register_forward_hook(functools.partial(_leave_mode, mode=mode), always_call=True)
    described = [f"{call.describe()} in {where} (relative error {verdict.error:.2g})"
                 for call, (where, verdict) in failing.items()]
    print(f"ptasr: this CPU computes {'; '.join(described)} wrongly in {str(dtype).removeprefix('torch.')}, "
          f"so these run in float32", file=sys.stderr, flush=True)
    return described


def probe_seconds(model: nn.Module, dtype: torch.dtype, gradients: bool = False) -> float:
    """Wall time of guarding ``model`` from an empty cache (the set-up cost; for benchmarks)."""
    _VERDICTS.clear()
    start = time.perf_counter()
    calls = record_calls(model, dtype, (torch.randn(1, 16000), torch.tensor([16000])))
    for call in calls:
        probe(call, dtype, gradients)
    return time.perf_counter() - start
