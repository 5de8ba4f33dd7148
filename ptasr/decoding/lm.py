"""CTC beam search with a KenLM n-gram language model, the search for its weights, and the LM's files in an
exported model.

The beam search is flashlight-text's lexicon-free decoder, called directly: torchaudio's ``ctc_decoder`` is a
thin wrapper around the same classes, and torchaudio is in maintenance mode.

Decoding is lexicon-free: any character sequence can come out, the LM only rescores. flashlight's own
lexicon-free decoder asks its LM about every emitted *token*, so a KenLM model plugged into it directly must
be a token-level (character) model. Most n-gram models for ASR are word-level (``lmplz`` on sentences, the
robust-speech-event's ``5gram.bin``), so for those (``unit="word"``, the default) ptasr puts a small adapter
between flashlight and KenLM: it spells words out of the emitted characters and scores each word with KenLM
when the word delimiter ``|`` (or the end of the utterance) closes it, as pyctcdecode does. A partial word
that can no longer become an LM word is charged KenLM's ``<unk>`` score plus ``unk_score`` at once, so the beam
drops it early.

Scores follow flashlight's convention: acoustic log-probabilities (natural log) plus ``lm_weight`` times the
LM's log10 probability plus ``word_score`` per word boundary.

flashlight-text is an optional dependency (``pip install 'ptasr[lm]'``); it is imported only when a
:class:`BeamSearchDecoder` is built.
"""

from __future__ import annotations

import bisect
import copy
import importlib
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ptasr.data.text import Vocabulary
from ptasr.errors import DataError, MissingPathError, SettingError, UserError

LMUnit = Literal["word", "token"]

_ARPA_MAGIC = "\\data\\"
_KENLM_BINARY_MAGIC = b"mmap lm http://kheafield.com/code"
_SENTENCE_MARKERS = ("<s>", "</s>", "<unk>")


class LMUnavailableError(UserError, ImportError):
    """flashlight-text (the beam search decoder and its KenLM binding) is not installed."""


@dataclass
class Hypothesis:
    """The best beam of one utterance.

    Attributes:
        tokens: collapsed token ids, blanks removed (the word delimiter included where it was emitted).
        timesteps: the frame at which each token was emitted, one per entry of ``tokens``.
        score: total beam score (acoustic + weighted LM + word bonuses).
        spans: ``(token, first frame, end frame)`` of each entry of ``tokens``: the frames of the beam's path
            that emit it, its repeats included (what word confidence is read from, as for greedy decoding).
    """

    tokens: list[int]
    timesteps: list[int]
    score: float
    spans: list[tuple[int, int, int]] = field(default_factory=list)


def _flashlight() -> Any:
    """flashlight-text's decoder module (the beam search behind torchaudio's ``ctc_decoder``, used here
    directly), or a one-line way out if it is missing."""
    try:
        # import_module consults sys.modules, so an absent flashlight fails here even after a first import
        return importlib.import_module("flashlight.lib.text.decoder")
    except ImportError as error:
        raise LMUnavailableError(
            f"beam search decoding needs flashlight-text ({error}); install it with: pip install 'ptasr[lm]'"
        ) from error


# --- reading the LM's word list --------------------------------------------------------------------------------


def lm_format(path: Path) -> Literal["arpa", "binary"]:
    """Tell an ARPA text model from a KenLM binary one by their first bytes."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(_KENLM_BINARY_MAGIC):
        return "binary"
    if head.lstrip().startswith(_ARPA_MAGIC.encode()):
        return "arpa"
    raise SettingError(f"{path} is neither an ARPA n-gram model (starts with \\data\\) nor a KenLM binary model")


def arpa_words(path: str | Path) -> list[str]:
    """The unigrams of an ARPA file, sentence markers and ``<unk>`` left out."""
    words, in_unigrams = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if in_unigrams:
                    break  # the next section ("\2-grams:" or "\end\") ends the unigrams
                in_unigrams = line == "\\1-grams:"
            elif in_unigrams and line:
                word = line.split()[1]
                if word not in _SENTENCE_MARKERS:
                    words.append(word)
    return words


def lm_words(lm_path: Path, words_path: str | Path | None = None) -> list[str]:
    """The vocabulary of a word-level KenLM model.

    ARPA files list it themselves. A binary model cannot be read without the kenlm module, so its words come
    from ``words_path`` or from the ``unigrams.txt`` (one word per line) that pyctcdecode-style LM folders keep
    beside the model.
    """
    if words_path is not None:
        return _read_word_list(Path(words_path))
    if lm_format(lm_path) == "arpa":
        return arpa_words(lm_path)
    beside = lm_path.parent / "unigrams.txt"
    if beside.is_file():
        return _read_word_list(beside)
    raise MissingPathError(
        f"cannot list the words of the binary KenLM model {lm_path}: put its word list (one per line) in "
        f"{beside}, pass it with --lm-words, or use the ARPA file"
    )


def _read_word_list(path: Path) -> list[str]:
    words = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [word for word in words if word and word not in _SENTENCE_MARKERS]


# --- the word-level adapter -------------------------------------------------------------------------------------


def _word_lm_class(flashlight: Any) -> type:
    """Define the adapter against the (lazily imported) flashlight base classes."""

    class WordLM(flashlight.LM):
        """Scores whole words with KenLM while flashlight emits characters (see the module docstring).

        Each decoder state is a node of flashlight's state tree (one child per emitted token); ``_info`` maps it
        to ``(KenLM state, partial word, whether the partial word was already charged as <unk>)``.
        """

        def __init__(self, kenlm: Any, word_ids: dict[str, int], unk_id: int, tokens: list[str], delimiter: int,
                     sorted_words: list[str], unk_penalty: float):
            flashlight.LM.__init__(self)
            self.kenlm, self.word_ids, self.unk_id = kenlm, word_ids, unk_id
            self.tokens, self.delimiter = tokens, delimiter
            self.sorted_words, self.unk_penalty = sorted_words, unk_penalty
            self._info: dict[Any, tuple[Any, str, bool]] = {}

        def start(self, start_with_nothing: bool) -> Any:
            self._info.clear()  # called once per utterance: states of the previous one are dead
            state = flashlight.LMState()
            self._info[state] = (self.kenlm.start(start_with_nothing), "", False)
            return state

        def score(self, state: Any, token: int) -> tuple[Any, float]:
            child = state.child(token)
            kenlm_state, partial, charged = self._info[state]
            if token == self.delimiter:
                kenlm_state, value = self._close_word(kenlm_state, partial, charged)
                self._info[child] = (kenlm_state, "", False)
                return child, value
            partial += self.tokens[token]
            value = 0.0
            if not charged and not self._is_prefix(partial):
                value, charged = self.kenlm.score(kenlm_state, self.unk_id)[1] + self.unk_penalty, True
            self._info[child] = (kenlm_state, partial, charged)
            return child, value

        def finish(self, state: Any) -> tuple[Any, float]:
            kenlm_state, partial, charged = self._info[state]
            kenlm_state, value = self._close_word(kenlm_state, partial, charged)
            return state, value + self.kenlm.finish(kenlm_state)[1]

        def _close_word(self, kenlm_state: Any, partial: str, charged: bool) -> tuple[Any, float]:
            if not partial:
                return kenlm_state, 0.0  # a leading or doubled delimiter closes no word
            word_id = self.word_ids.get(partial)
            new_state, value = self.kenlm.score(kenlm_state, self.unk_id if word_id is None else word_id)
            if charged:
                return new_state, 0.0
            # a prefix of LM words that ends here is no LM word either: it pays the <unk> penalty now
            return new_state, value + (self.unk_penalty if word_id is None else 0.0)

        def _is_prefix(self, partial: str) -> bool:
            i = bisect.bisect_left(self.sorted_words, partial)
            return i < len(self.sorted_words) and self.sorted_words[i].startswith(partial)

    return WordLM


def _kenlm(path: Path, entries: list[str]) -> tuple[Any, dict[str, int]]:
    """flashlight's KenLM wrapper whose user ids are the positions of ``entries`` (duplicates dropped)."""
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    entries = list(dict.fromkeys(entries))
    try:
        model = KenLM(str(path), Dictionary(entries))
    except RuntimeError as error:  # KenLM's C++ exceptions arrive as RuntimeError "<source line> threw <what>"
        reason = " ".join(str(error).split(" threw ", 1)[-1].split())
        raise DataError(f"KenLM cannot load {path}: {reason}. Rebuild the model (ptasr lm build, or KenLM's "
                        f"lmplz) or pass another --lm") from error
    return model, {entry: i for i, entry in enumerate(entries)}


# --- the decoder ------------------------------------------------------------------------------------------------


class BeamSearchDecoder:
    """Lexicon-free CTC beam search, optionally with a KenLM n-gram model (ARPA or binary).

    Args:
        vocab: the model's vocabulary; its pad token is the CTC blank and ``|`` the word delimiter.
        lm: path of a KenLM model, or ``None`` for a beam search without LM.
        unit: "word" for a word-level LM (the usual kind), "token" for a model over the vocabulary's tokens
            (characters, with ``|`` between words).
        words: a word list for a binary word-level model (default: ``unigrams.txt`` beside it).
        beam_size: hypotheses kept after each frame.
        beam_size_token: tokens tried per frame, the most probable ones (``None``: all). Each try calls the
            word-LM adapter in Python, so this bounds the cost: 10 decodes 5x faster than all ~40 characters of
            a Latin-script vocabulary, with the same transcripts in our measurements.
        beam_threshold: drop hypotheses this far below the best.
        lm_weight: weight of the LM's log10 probability.
        word_score: bonus added at every word boundary (negative values favour fewer, longer words).
        unk_score: added (unweighted, natural log) to a word-level LM's ``<unk>`` score for every word outside
            the LM's vocabulary, as pyctcdecode's ``unk_score_offset``: a small corpus's KN model gives ``<unk>``
            about a rare word's probability, so without it misspellings cost no more than rare words. flashlight
            multiplies every LM score by ``lm_weight``, so the adapter adds ``unk_score / lm_weight``; with an LM
            weight of 0 there is no penalty (pyctcdecode still charges it).
        log_add: merge hypotheses that reach the same state by adding their probabilities (a prefix beam
            search over all alignments, as pyctcdecode does) rather than keeping the best alignment's. An
            uncertain model spreads a word's letters over many alignments, each less likely than the all-blank
            one: with the maximum, the beam deletes words.
    """

    def __init__(
        self,
        vocab: Vocabulary,
        lm: str | Path | None = None,
        unit: LMUnit = "word",
        words: str | Path | None = None,
        beam_size: int = 50,
        beam_size_token: int | None = 10,
        beam_threshold: float = 50.0,
        lm_weight: float = 2.0,
        word_score: float = 0.0,
        unk_score: float = -10.0,
        log_add: bool = True,
    ) -> None:
        self._flashlight = _flashlight()
        self.vocab = vocab
        self.lm_path = None if lm is None else str(lm)  # as given: the results files name the LM by it
        self.settings = {"beam_size": beam_size, "beam_size_token": beam_size_token, "beam_threshold": beam_threshold,
                         "log_add": log_add}
        self.unk_score = unk_score
        self._kenlm = self._language_model(Path(lm) if lm is not None else None, unit, words)
        self._decoder = self._build(lm_weight, word_score)

    def _build(self, lm_weight: float, word_score: float) -> Any:
        self.lm_weight, self.word_score = lm_weight, word_score
        self._lm = self._kenlm
        if isinstance(self._kenlm, tuple):  # a word-level LM: a fresh adapter, its <unk> penalty in LM units
            kenlm, word_ids, unk_id, sorted_words = self._kenlm
            penalty = self.unk_score / lm_weight if lm_weight > 0 else 0.0
            self._lm = _word_lm_class(self._flashlight)(kenlm, word_ids, unk_id, self.vocab.tokens,
                                                        self.vocab.word_delimiter_id, sorted_words, penalty)
        fl, settings = self._flashlight, self.settings
        # Lexicon-free decoding has no word score of its own: its "silence score", added whenever the
        # delimiter is emitted, is the per-word bonus.
        options = fl.LexiconFreeDecoderOptions(
            beam_size=settings["beam_size"], beam_size_token=settings["beam_size_token"] or len(self.vocab),
            beam_threshold=settings["beam_threshold"], lm_weight=lm_weight, sil_score=word_score,
            log_add=settings["log_add"],
            criterion_type=fl.CriterionType.CTC,
        )
        if self._lm is None:
            self._lm = fl.ZeroLM()
        # The decoder keeps a C++ reference only: self._lm keeps the Python LM object alive beside it.
        return fl.LexiconFreeDecoder(options, self._lm, self.vocab.word_delimiter_id, self.vocab.pad_id, [])

    def with_weights(self, lm_weight: float, word_score: float) -> BeamSearchDecoder:
        """The same decoder and LM (loaded once) with another LM weight and word score, for weight search."""
        other = copy.copy(self)
        other._decoder = other._build(lm_weight, word_score)
        return other

    def _language_model(self, path: Path | None, unit: LMUnit, words: str | Path | None) -> Any:
        """The KenLM model of a token-level LM; (KenLM, word ids, <unk> id, sorted words) of a word-level one."""
        if path is None:
            return None
        if not path.is_file():
            raise MissingPathError(f"no language model at {path}")
        lm_format(path)  # a clear error for a file that is not an n-gram model, before KenLM aborts on it
        if unit == "token":
            # The decoder scores token id n as LM entry n, so the LM's dictionary must list the tokens in id
            # order (torchaudio's ctc_decoder, given a path, built it from an unordered map: ids came out shuffled).
            return _kenlm(path, [*self.vocab.tokens, "<unk>"])[0]
        if unit != "word":
            raise SettingError(f"unit must be 'word' or 'token', got {unit!r}")
        words = lm_words(path, words)
        if not words:
            raise SettingError(f"{path} lists no words")
        kenlm, ids = _kenlm(path, ["<unk>", *words])
        word_ids = {word: ids[word] for word in words}
        # A sorted word list answers "is this the start of some LM word?" in O(log n) without a trie.
        return kenlm, word_ids, ids["<unk>"], sorted(word_ids)

    def __call__(self, log_probs: torch.Tensor, frame_lengths: torch.Tensor) -> list[Hypothesis]:
        """Best hypothesis per utterance.

        Args:
            log_probs: (B, T, V) log-softmax scores (any device or dtype; decoded as float32 on CPU).
            frame_lengths: int64 (B,) valid frames per utterance.
        """
        emissions = log_probs.detach().to("cpu", torch.float32).contiguous()  # (B, T, V)
        tokens = emissions.shape[2]
        hypotheses = []
        for b, frames in enumerate(frame_lengths.tolist()):
            pointer = emissions.data_ptr() + emissions.element_size() * b * emissions.stride(0)
            results = self._decoder.decode(pointer, int(frames), tokens) if frames > 0 else []
            hypotheses.append(self._best(results, int(frames)))
        return hypotheses

    def _best(self, results: list[Any], frames: int) -> Hypothesis:
        if not results:  # an utterance with no frames
            return Hypothesis([], [], -math.inf)
        path = list(results[0].tokens)  # one token per frame, with a start state before and an end state after
        blank = self.vocab.pad_id
        # CTC collapse: the first frame of each run of one token, blanks dropped. Path index i is frame i - 1;
        # the delimiters flashlight puts in the start and end states were never emitted.
        spans: list[tuple[int, int, int]] = []
        for i in range(1, frames + 1):
            token = path[i]
            if token != blank and token != path[i - 1]:
                spans.append((token, i - 1, i))
            elif token != blank and spans and spans[-1][2] == i - 1:  # a repeat extends the token it repeats
                spans[-1] = (token, spans[-1][1], i)
        return Hypothesis([token for token, _, _ in spans], [first for _, first, _ in spans], float(results[0].score),
                          spans)

    def decode(self, log_probs: torch.Tensor, frame_lengths: torch.Tensor) -> list[str]:
        """Transcripts of a batch: (B, T, V) log-probabilities, (B,) frames -> B strings."""
        return [self.vocab.decode(h.tokens) for h in self(log_probs, frame_lengths)]


# --- the weight search --------------------------------------------------------------------------------------

# Grids of ``ptasr evaluate --tune``: LM weights in flashlight's scale (times the LM's log10 probability; 2.3 is
# pyctcdecode's alpha 1) and per-word scores (natural-log units, as the acoustic scores).
DEFAULT_LM_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
DEFAULT_WORD_SCORES = (-1.0, 0.0, 1.0, 2.0)


@dataclass
class Trial:
    """One (LM weight, word score) pair of a weight search, with its corpus error rates and transcripts."""

    lm_weight: float
    word_score: float
    wer: float
    cer: float
    predictions: list[str]


def search_weights(
    decoder: BeamSearchDecoder, emissions: list[torch.Tensor], score: Callable[[list[str]], dict[str, Any]],
    lm_weights: Sequence[float] = DEFAULT_LM_WEIGHTS, word_scores: Sequence[float] = DEFAULT_WORD_SCORES,
    on_trial: Callable[[Trial], None] | None = None,
) -> list[Trial]:
    """Decode the same emissions with every pair of the grid.

    Args:
        decoder: the beam search decoder with its LM (loaded once, re-weighted per trial).
        emissions: one (T_i, V) log-probability tensor per utterance.
        score: transcripts -> a dict with the corpus ``wer`` and ``cer`` (``ptasr``'s one scorer).
        on_trial: called with each trial as it finishes (to print the table as it grows).
    """
    log_probs = torch.nn.utils.rnn.pad_sequence(emissions, batch_first=True)  # (B, T, V); padding is never read
    frames = torch.tensor([e.shape[0] for e in emissions], dtype=torch.long)
    trials = []
    for lm_weight in lm_weights:
        for word_score in word_scores:
            predictions = decoder.with_weights(lm_weight, word_score).decode(log_probs, frames)
            rates = score(predictions)
            trials.append(Trial(lm_weight, word_score, rates["wer"], rates["cer"], predictions))
            if on_trial is not None:
                on_trial(trials[-1])
    return trials


def can_choose(trials: Sequence[Trial]) -> bool:
    """Whether the trials tell the pairs apart. When every pair scores the same WER and CER (on clips the model
    trained on, say, which it transcribes perfectly), the "best" pair is only the tie-break's choice.

    >>> can_choose([Trial(0.0, 0.0, 0.0, 0.0, []), Trial(2.0, 0.0, 0.0, 0.0, [])])
    False
    >>> can_choose([Trial(0.0, 0.0, 0.2, 0.1, []), Trial(2.0, 0.0, 0.1, 0.1, [])])
    True
    >>> can_choose([Trial(2.0, 0.0, 0.2, 0.1, [])])  # a grid of one pair: the user's choice
    True
    """
    return len(trials) == 1 or len({(t.wer, t.cer) for t in trials}) > 1


def best_trial(trials: Sequence[Trial]) -> Trial:
    """The lowest WER, ties to the lowest CER, then to the smaller LM weight (the least change)."""
    return min(trials, key=lambda t: (t.wer, t.cer, t.lm_weight, abs(t.word_score)))


def weights_path(lm: str | Path) -> Path:
    """Where tuned weights live: beside the LM, ``lm.arpa`` -> ``lm.arpa.json``."""
    return Path(f"{lm}.json")


def save_weights(lm: str | Path, trial: Trial, **provenance: Any) -> Path:
    """Write the tuned pair (and what it was tuned on) where ``transcribe``, ``evaluate`` and ``export`` read it."""
    path = weights_path(lm)
    record = {"lm_weight": trial.lm_weight, "word_score": trial.word_score, "wer": trial.wer, "cer": trial.cer,
              **provenance}
    path.write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def load_weights(lm: str | Path) -> dict[str, Any] | None:
    """The tuned weights saved beside ``lm``, or None if it was never tuned."""
    path = weights_path(lm)
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if not {"lm_weight", "word_score"} <= set(record):
        raise DataError(f"{path} lacks lm_weight or word_score; delete it or run: ptasr evaluate ... --tune")
    return record


def resolve_weights(
    lm: str | Path | None, lm_weight: float | None = None, word_score: float | None = None
) -> tuple[float, float, dict[str, Any] | None]:
    """LM weight and word score: the given values, else the tuned pair saved beside the LM, else 2 and 0.

    Returns the pair and the tuned record it came from (None when none was read).
    """
    tuned = load_weights(lm) if lm is not None and (lm_weight is None or word_score is None) else None
    defaults = tuned or {"lm_weight": 2.0, "word_score": 0.0}
    return (defaults["lm_weight"] if lm_weight is None else lm_weight,
            defaults["word_score"] if word_score is None else word_score, tuned)


# --- shipping the LM inside an exported model ---------------------------------------------------------------

# pyctcdecode scores alpha * ln P(word) + beta per word; flashlight lm_weight * log10 P(word) + word_score per
# word: the same score when alpha = lm_weight / ln 10 and beta = word_score.
PYCTCDECODE_UNK = "⁇"  # pyctcdecode's stand-in for the tokenizer's unknown token


def pyctcdecode_alphabet(vocab: Vocabulary) -> list[str]:
    """The vocabulary as pyctcdecode labels, id for id: ``|`` -> " ", the blank -> "", the unknown token -> ⁇.

    >>> pyctcdecode_alphabet(Vocabulary.build(["ab"]))
    [' ', 'a', 'b', '⁇', '']
    """
    special = {vocab.word_delimiter: " ", vocab.pad_token: "", vocab.unk_token: PYCTCDECODE_UNK}
    return [special.get(token, token) for token in vocab.tokens]


def write_processor_with_lm(
    directory: str | Path, vocab: Vocabulary, lm: str | Path, lm_weight: float, word_score: float,
    words: str | Path | None = None, unk_score: float = -10.0,
) -> dict[str, Any]:
    """Add the files transformers' ``Wav2Vec2ProcessorWithLM`` loads to an exported model folder.

    ``alphabet.json`` (the labels, id for id) and ``language_model/`` with the KenLM file, ``unigrams.txt`` and
    ``attrs.json`` (pyctcdecode's alpha and beta, converted from ptasr's weights); the tokenizer's and feature
    extractor's ``processor_class`` become ``Wav2Vec2ProcessorWithLM`` so ``AutoProcessor`` and ``pipeline``
    decode with it. Returns the attributes written.
    """
    directory, lm = Path(directory), Path(lm)
    if not lm.is_file():
        raise MissingPathError(f"no language model at {lm} (build one with: ptasr lm build)")
    if lm.suffix not in ({".arpa"} if lm_format(lm) == "arpa" else {".bin", ".binary"}):
        raise SettingError(f"{lm}: pyctcdecode finds the LM by its extension: name it .arpa (text) or .bin (binary)")
    folder = directory / "language_model"
    if folder.exists():
        shutil.rmtree(folder)  # pyctcdecode wants exactly three files there
    folder.mkdir(parents=True)
    shutil.copyfile(lm, folder / lm.name)
    (folder / "unigrams.txt").write_text("".join(f"{w}\n" for w in lm_words(lm, words)), encoding="utf-8")
    attrs = {"alpha": lm_weight / math.log(10), "beta": word_score, "unk_score_offset": unk_score,
             "score_boundary": True}
    (folder / "attrs.json").write_text(json.dumps(attrs, indent=2) + "\n", encoding="utf-8")
    alphabet = {"labels": pyctcdecode_alphabet(vocab), "is_bpe": False}
    (directory / "alphabet.json").write_text(json.dumps(alphabet, ensure_ascii=False) + "\n", encoding="utf-8")
    for name in ("tokenizer_config.json", "preprocessor_config.json"):
        path = directory / name
        if path.is_file():
            config = json.loads(path.read_text(encoding="utf-8"))
            config["processor_class"] = "Wav2Vec2ProcessorWithLM"
            path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return attrs
