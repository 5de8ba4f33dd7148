"""The model's CUDA path, run on a fake CUDA device: no GPU, no memory, the real configurations.

Inside ``FakeTensorMode`` with a ``ShapeEnv`` and ``torch.device("cuda")``, every tensor is a fake CUDA tensor
(shapes, dtypes and devices, no data), so the forward pass of XLS-R 1B traces in seconds on a CPU. What it
proves: no tensor lands on the wrong device (a mismatch raises ``FakeTensorDeviceMismatchError``), autocast
on CUDA gives the dtypes we intend (CUDA's autocast treats LayerNorm unlike CPU's), the shapes are right, no
Python branch reads a data-dependent size (it raises ``GuardOnDataDependentSymNode``), and the host waits for
the device only where :data:`HOST_SYNCS` says.

What cannot run on a fake device, and what covers it instead:
- autograd's backward pass: its engine wants a real CUDA context;
- ``F.ctc_loss``: it asks cuDNN whether it may take the batch (``aten::_use_cudnn_ctc_loss`` has no fake
  kernel), so the loss and its own host syncs (listed in benchmarks/README.md) are not traced here;
- speed, memory and the numbers themselves.
``tests/test_train_gpu.py`` covers those on a real GPU (a fit in bf16 and fp16, the fused optimiser, skipping
non-finite updates on the device) and skips where none is at hand; ``benchmarks/gpu_check.py`` measures.

LayerDrop is drawn on the host from a CPU generator (``Wav2Vec2CTC.draw_layers``, as the training module does):
it never waits for the device, so the tests draw it before entering the fake mode. The lengths stay on the
host too, as the training module keeps them (``transfer_batch_to_device``): the model plans its packed frames
from them there, so they are a real CPU tensor made outside the fake mode.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._sympy.symbol import SymT, symbol_is_type

from ptasr import Wav2Vec2Config, Wav2Vec2CTC
from ptasr.lengths import conv_output_lengths
from ptasr.model.kernels import InputDtypeLayerNorm

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "hf_configs"

# Every place in the training forward pass where the host waits for the device, with the reason it must:
# none, since the packing is planned from the lengths on the host. benchmarks/README.md explains why; a new one
# fails test_host_syncs_are_the_listed_ones.
HOST_SYNCS: dict[str, str] = {}

# The real configurations, with the fine-tuning recipe's masking (the reference: time 0.75 x 10, feature 0.25 x 64)
# and no attention dropout (configs/xls-r-300m_pt_improved.yaml), which lets attention take the packed frames.
FINE_TUNING = dict(vocab_size=40, pad_token_id=39, mask_time_prob=0.75, mask_time_length=10,
                   mask_feature_prob=0.25, mask_feature_length=64, attention_dropout=0.0)
CONFIGS = {
    "tiny": lambda: Wav2Vec2Config.preset("tiny", **{**FINE_TUNING, "mask_feature_length": 16}),
    "xls-r-300m": lambda: Wav2Vec2Config.from_json(FIXTURES / "wav2vec2-xls-r-300m.json").replace(**FINE_TUNING),
    "xls-r-1b": lambda: Wav2Vec2Config.from_json(FIXTURES / "wav2vec2-xls-r-1b.json").replace(**FINE_TUNING),
    "wav2vec2-base": lambda: Wav2Vec2Config.from_json(FIXTURES / "wav2vec2-base-960h.json").replace(**FINE_TUNING),
}
LENGTHS = [51_200, 32_000, 17_000]  # samples: a padded batch of different lengths
HOST_LENGTHS = torch.tensor(LENGTHS)  # a real CPU tensor, made outside the fake mode
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextmanager
def fake_cuda() -> Iterator[ShapeEnv]:
    """A fake CUDA device, with autocast on it allowed (autocast checks for a real GPU and turns itself off)."""
    shape_env = ShapeEnv(allow_dynamic_output_shape_ops=True, allow_scalar_outputs=True)
    with (
        mock.patch("torch.cuda.amp.common.amp_definitely_not_available", return_value=False),
        mock.patch("torch.cuda.is_bf16_supported", return_value=True),
        FakeTensorMode(allow_non_fake_inputs=True, shape_env=shape_env),
        torch.device("cuda"),
    ):
        yield shape_env


class HostSyncs(TorchDispatchMode):
    """Records each operator call that would make the host wait for a CUDA device, and where ptasr made it.

    On a fake device such a call shows in one of two ways: its result has a size or value that only the data
    decides (a fresh unbacked symbol: ``nonzero``, ``item``, ``masked_select``, ...) from a CUDA input, or it
    copies between host and device with a wait (device to host always; host to device unless non-blocking).
    """

    def __init__(self, shape_env: ShapeEnv) -> None:
        super().__init__()
        self.shape_env = shape_env
        self.calls: list[tuple[str, str]] = []  # (operator, file:function)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        kwargs = kwargs or {}
        before = set(self.shape_env.var_to_range)
        out = func(*args, **kwargs)
        fresh = [s for s in set(self.shape_env.var_to_range) - before
                 if symbol_is_type(s, (SymT.UNBACKED_INT, SymT.UNBACKED_FLOAT))]
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        on_device = any(t.device.type == "cuda" for t in tensors)
        if (fresh and on_device) or _waiting_copy(func, args, kwargs, out):
            self.calls.append((str(func.overloadpacket), _caller()))
        return out


def _waiting_copy(func: object, args: tuple, kwargs: dict, out: object) -> bool:
    if func is torch.ops.aten._to_copy.default:
        source, target, non_blocking = args[0].device, out.device, kwargs.get("non_blocking", False)
    elif func is torch.ops.aten.copy_.default:
        target, source = args[0].device, args[1].device
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    else:
        return False
    if source.type == "cuda" and target.type == "cpu":
        return True
    return source.type == "cpu" and target.type == "cuda" and not non_blocking


def _caller() -> str:
    """file:function of the innermost frame outside torch, contextlib and this detector."""
    torch_dir = Path(torch.__file__).parent
    frame = sys._getframe(1)
    while frame is not None:
        path = Path(frame.f_code.co_filename).resolve()
        if not path.is_relative_to(torch_dir) and path.name != "contextlib.py" and frame.f_code.co_qualname not in _DETECTOR:
            where = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
            return f"{where}:{frame.f_code.co_qualname}"
        frame = frame.f_back
    return "?"


_DETECTOR = {"HostSyncs.__torch_dispatch__", "_caller"}


def fake_model(name: str) -> Wav2Vec2CTC:
    """The model of a configuration, built on the fake device (no memory)."""
    with fake_cuda():
        model = Wav2Vec2CTC(CONFIGS[name]())
    assert next(model.parameters()).is_cuda
    return model


def fake_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) waveforms on the fake device and (B,) lengths on the host."""
    waveforms = torch.randn(len(LENGTHS), max(LENGTHS))
    return waveforms, HOST_LENGTHS


@contextmanager
def counted_varlen_attn() -> Iterator[list[tuple[int, ...]]]:
    """Counts the model's calls of ``varlen_attn`` (the query's shape each), still calling it."""
    import ptasr.model.wav2vec2 as wav2vec2

    calls: list[tuple[int, ...]] = []

    def counted(query: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(tuple(query.shape))
        return real(query, *args, **kwargs)

    real = wav2vec2.varlen_attn
    with mock.patch.object(wav2vec2, "varlen_attn", counted):
        yield calls


def _outputs_of(model: Wav2Vec2CTC) -> Callable[[], dict[str, tuple[torch.device, torch.dtype]]]:
    """Hooks that record every module's output device and dtype, keyed by module name."""
    seen: dict[str, tuple[torch.device, torch.dtype]] = {}

    def hook(name: str) -> Callable:
        def record(module: torch.nn.Module, args: tuple, out: object) -> None:
            if isinstance(out, torch.Tensor):
                seen[name] = (out.device, out.dtype)
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules() if name]
    return lambda: ([h.remove() for h in handles], seen)[1]


@pytest.fixture(scope="module", params=list(CONFIGS))
def config_model(request: pytest.FixtureRequest) -> tuple[str, Wav2Vec2CTC]:
    return request.param, fake_model(request.param)


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_on_a_fake_cuda_device(config_model: tuple[str, Wav2Vec2CTC], precision: str, training: bool
                                       ) -> None:
    name, model = config_model
    config, dtype = model.config, PRECISIONS[precision]
    model.train(training)
    generator = torch.Generator().manual_seed(0)
    layers = model.draw_layers(generator)  # on the host, before the fake mode (as the training module does)
    with fake_cuda(), counted_varlen_attn() as varlen_calls:
        waveforms, lengths = fake_batch()
        finish = _outputs_of(model)
        with torch.autocast("cuda", dtype=dtype), torch.set_grad_enabled(training):
            logits, frame_lengths = model(waveforms, lengths, generator, layers=layers)
        outputs = finish()
    # Attention took the packed frames, (N, H, Dh), in every layer that ran.
    valid = sum(conv_output_lengths(n, config.conv_kernel, config.conv_stride) for n in LENGTHS)
    head = config.hidden_size // config.num_attention_heads
    assert varlen_calls == [(valid, config.num_attention_heads, head)] * sum(layers)
    frames = conv_output_lengths(max(LENGTHS), config.conv_kernel, config.conv_stride)
    assert logits.shape == (len(LENGTHS), frames, config.vocab_size)
    assert logits.device.type == "cuda" and frame_lengths.device.type == "cuda"
    assert logits.dtype == dtype and frame_lengths.dtype == torch.int64
    assert logits.requires_grad == training
    assert all(device.type == "cuda" for device, _ in outputs.values()), outputs
    # The dtype-keeping norms return half precision; plain LayerNorms (post-norm's residual stream) float32, as
    # CUDA's autocast makes them; the CTC head's matrix product runs in half precision.
    modules = dict(model.named_modules())
    for module_name, (_, out_dtype) in outputs.items():
        module = modules[module_name]
        if isinstance(module, InputDtypeLayerNorm):
            assert out_dtype == dtype, module_name
        elif type(module) is torch.nn.LayerNorm:
            assert out_dtype == torch.float32, module_name
    assert outputs["lm_head"][1] == dtype
    plain_norms = [m for m in modules.values() if type(m) is torch.nn.LayerNorm]
    assert bool(plain_norms) == (not config.pre_norm)  # both kinds of norm were checked across the configs


@pytest.mark.parametrize("name", ["tiny", "wav2vec2-base"])
def test_host_syncs_are_the_listed_ones(name: str) -> None:
    model = fake_model(name).train()
    model.freeze_feature_encoder()
    generator = torch.Generator().manual_seed(0)
    layers = model.draw_layers(generator)
    with fake_cuda() as shape_env:
        waveforms, lengths = fake_batch()
        with HostSyncs(shape_env) as syncs, torch.autocast("cuda", dtype=torch.bfloat16):
            model(waveforms, lengths, generator, layers=layers)
    assert sorted({where for _, where in syncs.calls}) == sorted(HOST_SYNCS)
    assert len(syncs.calls) == len(HOST_SYNCS)  # each of them once per forward pass
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    assert all(where in readme for where in HOST_SYNCS), "benchmarks/README.md must explain every host sync"


def test_lengths_on_the_device_are_read_back_once() -> None:
    # Where the lengths are on the device only (inference), the packing's plan reads them back: one wait, the
    # one that 76ea759 had in the training forward too (there a nonzero, on the frames' validity). The values
    # read back are unknown on a fake device, so the trace stops right there.
    model = fake_model("tiny").train()
    lengths = torch.tensor(LENGTHS)
    generator = torch.Generator().manual_seed(0)
    layers = model.draw_layers(generator)
    with fake_cuda() as shape_env:
        waveforms, lengths = fake_batch()[0], lengths.to("cuda")
        with HostSyncs(shape_env) as syncs, torch.autocast("cuda", dtype=torch.bfloat16):
            with pytest.raises(Exception, match="data-dependent|Could not guard|[Uu]nbacked"):
                model(waveforms, lengths, generator, layers=layers)
    assert syncs.calls[0][0] == "aten._local_scalar_dense"  # the first wait: reading the lengths back


def test_the_sync_detector_sees_every_kind_of_wait() -> None:
    # The detector must be able to fail: each of these makes the host wait for a real GPU.
    def item(x: torch.Tensor) -> object:
        return x.sum().item()

    def to_host(x: torch.Tensor) -> object:
        return x.cpu()

    def blocking_upload(x: torch.Tensor) -> object:
        return torch.ones(3, device="cpu").to("cuda")

    def boolean_index(x: torch.Tensor) -> object:
        return x[x > 0]

    def quiet(x: torch.Tensor) -> object:  # device-side work and a non-blocking upload only
        return (x * 2).cumsum(0) + torch.ones(len(x), device="cpu").to("cuda", non_blocking=True)

    expected = {item: "aten._local_scalar_dense", to_host: "aten._to_copy", blocking_upload: "aten._to_copy",
                boolean_index: "aten.index", quiet: None}
    for function, operator in expected.items():
        with fake_cuda() as shape_env:
            x = torch.randn(5)
            with HostSyncs(shape_env) as syncs:
                function(x)
        if operator is None:
            assert syncs.calls == [], syncs.calls
        else:
            assert syncs.calls == [(operator, f"tests/test_fake_cuda.py:{function.__qualname__}")], syncs.calls


def test_a_python_branch_on_a_data_dependent_size_fails_here() -> None:
    # What the forward pass must not contain, and what this module would catch.
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    with fake_cuda(), pytest.raises(GuardOnDataDependentSymNode):
        index = torch.randn(6).nonzero()
        if index.shape[0] == 6:
            pass
