"""The data module's settings by concern, as ``train.py fit --print_config`` shows them: ``data.text``
(:class:`TextSettings`), ``data.batching`` (:class:`BatchSettings`), ``data.filters``
(:class:`~ptasr.data.filters.FilterSettings`) and ``data.loading`` (:class:`LoadingSettings`).

Defaults follow the reference (``lgris/wav2vec2-xls-r-pt-cv7`` with HF's ``run_speech_recognition_ctc.py``):
16 clips per batch, 8 per evaluation batch, clips up to 20 s, lower-case; the characters it deletes are
``configs/``'s to set (see ``TextSettings.chars_to_ignore``). Frozen: the data module's default instances are
shared by every data module, so none may change in place.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptasr.data.filters import FilterSettings
from ptasr.data.text import TextNormalizer

__all__ = ["BatchSettings", "FilterSettings", "LoadingSettings", "TextSettings"]


@dataclass(frozen=True)
class TextSettings:
    """How transcripts are normalised, and the vocabulary (``data.text``).

    Args:
        chars_to_ignore: characters the normaliser deletes (before ``strip_punctuation``). Default none: the
            reference's list (:data:`~ptasr.data.text.DEFAULT_CHARS_TO_IGNORE`, which configs/xls-r-300m_pt_cv7.yaml
            and the demo set) deletes hyphens, dots and ’, which joins words: "primeiro-ministro" ->
            "primeiroministro", "a.C." -> "ac", "l’eau" -> "leau".
        lowercase: lower-case transcripts.
        strip_accents: remove diacritics (``"ação"`` -> ``"acao"``).
        strip_punctuation: replace every Unicode punctuation character by a space; an apostrophe, a hyphen or
            a Catalan middle dot between two word characters stays. The default, because it keeps words whole in
            every language checked (pt "primeiro-ministro", "d'água"; es "¿Qué?", "EE.UU." -> "ee uu"; fr
            "aujourd'hui", "l’eau", "peut-être"; en "don't", "U.S." -> "u s"; de "z.B." -> "z b",
            "Baden-Württemberg"; ca "col·legi", "l'home"), as the vocabularies of the most used XLSR fine-tunes
            on the hub (which keep ' and -) and Whisper's normaliser (punctuation becomes a space, not nothing) do.
        rare_symbol_count: the alphabet table printed at setup flags symbols seen fewer times than this.
        vocab_path: an existing ``vocab.json`` (e.g. of a checkpoint being fine-tuned further) instead of
            building one; characters it lacks map to ``[UNK]`` and are counted at setup.
        vocabulary: the vocabulary itself, its tokens in id order, instead of building one (train.py sets it,
            and the text settings above, from the model that validate/test/predict evaluate); characters it
            lacks map to ``[UNK]`` and are counted at setup.
    """

    chars_to_ignore: str = ""
    lowercase: bool = True
    strip_accents: bool = False
    strip_punctuation: bool = True
    rare_symbol_count: int = 10
    vocab_path: str | None = None
    vocabulary: list[str] | None = None

    def normalizer(self) -> TextNormalizer:
        return TextNormalizer(self.chars_to_ignore, lowercase=self.lowercase, strip_accents=self.strip_accents,
                              strip_punctuation=self.strip_punctuation)


@dataclass(frozen=True)
class BatchSettings:
    """How clips are grouped into batches, and in which order (``data.batching``).

    Args:
        batch_size: clips per training batch (``None``: only ``max_batch_seconds`` limits batches).
        max_batch_seconds: padded audio seconds per batch (clips x longest clip), for training and evaluation.
        pad_to_multiple_seconds: pad every batch's waveforms up to a multiple of this duration (e.g. 0.5), so
            that batches come in few shapes (at most ``max_duration`` / this), for code that specialises on
            shapes: torch.compile with static shapes, CUDA graphs, cuDNN's benchmark mode. It costs compute:
            half the multiple per clip on average, not counted in ``max_batch_seconds``. ``None``: pad to the
            longest clip only.
        eval_batch_size: clips per validation/test batch.
        num_buckets: duration buckets the sampler draws batches from.
        seed: seeds the per-epoch batch order (with the epoch number).
    """

    batch_size: int | None = 16
    max_batch_seconds: float | None = None
    pad_to_multiple_seconds: float | None = None
    eval_batch_size: int = 8
    num_buckets: int = 10
    seed: int = 42


@dataclass(frozen=True)
class LoadingSettings:
    """Worker processes and files on disk (``data.loading``).

    Args:
        num_workers: DataLoader worker processes (decoding and resampling happen there); ``None`` (default):
            :func:`ptasr.threads.dataloader_workers` chooses (1 when training on the CPU).
        pin_memory: pin batches for faster host-to-GPU copies.
        cache_dir: where release archives are extracted and header durations cached (default
            ``$PTASR_CACHE`` or ``~/.cache/ptasr``).
    """

    num_workers: int | None = None
    pin_memory: bool = False
    cache_dir: str | None = None
