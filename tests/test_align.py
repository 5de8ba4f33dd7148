"""``ptasr align``: the sentence-by-sentence forced alignment on emissions whose right answer is known (a sentence
missing from the audio, a passage missing from the text), the files it writes from real recordings (Ogg Opus,
FLAC, WAV at 8 and 44.1 kHz), the manifest read back by the data module, and its one-line errors."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_cli import write_checkpoint

from ptasr.cli import main
from ptasr.data import SpeechDataModule
from ptasr.data.settings import BatchSettings, LoadingSettings
from ptasr.data.sources import DataSource
from ptasr.data.text import TextNormalizer, Vocabulary
from ptasr.labelling.align import AlignSettings, align_recording, read_sentences, sentence_tokens, write_alignment
from ptasr.labelling.forced import align_sentences, uncovered_audio
from ptasr.recognition.transcript import Transcript

VOCAB = Vocabulary.build(["abcdefghijklmnopqrstuvwxyzãç"])
NORMALIZER = TextNormalizer()
FRAMES_PER_S = 50  # 320 samples per frame at 16 kHz


def spoken(plan: list[tuple[int, str]], frames: int, vocab: Vocabulary = VOCAB) -> torch.Tensor:
    """(T, V) log-probabilities of a model that hears each text of ``plan`` from its first frame on: each
    character two frames, a blank frame after it, and blank everywhere else (a confident, peaky CTC model)."""
    logits = torch.zeros(frames, len(vocab))
    logits[:, vocab.pad_id] = 8.0
    for first, text in plan:
        frame = first
        for token in vocab.encode(text):
            logits[frame:frame + 2] = 0.0
            logits[frame:frame + 2, token] = 8.0
            frame += 3
    return logits.log_softmax(dim=-1)


def span(first: int, text: str) -> tuple[int, int]:
    """Frames [first, end) of ``text`` as :func:`spoken` says it."""
    return first, first + 3 * len(text) - 1


def tokens(text: str) -> list[int]:
    return VOCAB.encode(text)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


# --- the algorithm on known emissions -------------------------------------------------------------------------


def test_sentences_land_on_their_frames() -> None:
    plan = [(20, "bom dia"), (70, "como vai"), (140, "ela mora em lisboa")]
    log_probs = spoken(plan, 220)
    found = align_sentences(log_probs, [tokens(t) for _, t in plan], VOCAB.pad_id, min_score=-1.0, search_frames=100)
    assert [(a.first, a.end) for a in found] == [span(*p) for p in plan]
    assert all(a.accepted and a.score > -0.01 for a in found)


def test_a_sentence_the_audio_lacks_is_rejected_not_forced_in() -> None:
    plan = [(20, "bom dia"), (140, "ela mora em lisboa")]
    text = ["bom dia", "o gato dorme no sofa", "ela mora em lisboa"]
    found = align_sentences(spoken(plan, 220), [tokens(t) for t in text], VOCAB.pad_id, -1.0, search_frames=100)
    assert [a.accepted for a in found] == [True, False, True]
    assert found[1].score < -3.0 and "not in the audio" in found[1].reason
    assert [(a.first, a.end) for a in found if a.accepted] == [span(*p) for p in plan]  # its neighbours unmoved


def test_a_passage_the_text_lacks_is_skipped_and_reported() -> None:
    plan = [(20, "bom dia"), (70, "isto nao esta no texto"), (160, "como vai")]
    log_probs = spoken(plan, 220)
    found = align_sentences(log_probs, [tokens("bom dia"), tokens("como vai")], VOCAB.pad_id, -1.0, search_frames=100)
    assert [(a.first, a.end, a.accepted) for a in found] == [(*span(*plan[0]), True), (*span(*plan[2]), True)]
    (first, end, passage), = uncovered_audio(log_probs, [(a.first, a.end) for a in found], VOCAB.pad_id,
                                             VOCAB.word_delimiter_id, min_tokens=6)
    assert VOCAB.decode(passage) == "isto nao esta no texto" and (first, end) == span(*plan[1])


def test_a_sentence_after_a_rejected_one_is_searched_further() -> None:
    # the second sentence is spoken but the model hears something else: rejected; the third is found past it,
    # in a window widened by the rejected sentence's length, although the search alone would not reach it
    plan = [(10, "bom dia"), (40, "xxxxx xxxxx xxxxx xxxxx xxxxx"), (140, "ela mora em lisboa")]
    text = ["bom dia", "o gato dorme no sofa aqui", "ela mora em lisboa"]
    found = align_sentences(spoken(plan, 220), [tokens(t) for t in text], VOCAB.pad_id, -1.0, search_frames=10)
    assert [a.accepted for a in found] == [True, False, True]
    assert (found[2].first, found[2].end) == span(*plan[2])


def test_an_empty_sentence_and_the_end_of_the_audio_are_reasons_not_errors() -> None:
    found = align_sentences(spoken([(5, "ab")], 20), [tokens("ab"), [], tokens("abcdefghijklmnop")], VOCAB.pad_id, -1.0, 5)
    assert [a.reason for a in found[1:]] == ["no characters to align", "the audio ended before it"]


# --- text in -----------------------------------------------------------------------------------------------


class Known:
    """A stand-in recognizer that hears ``plan`` in any audio: the recorded emissions of :func:`spoken`."""

    vocab, normalizer, samples_per_frame = VOCAB, NORMALIZER, 320

    def __init__(self, plan: list[tuple[int, str]]) -> None:
        self.plan = plan

    def transcribe(self, inputs: list[torch.Tensor], **options: object) -> list[Transcript]:
        frames = inputs[0].shape[0] // self.samples_per_frame
        return [Transcript("", "", inputs[0].shape[0] / 16000, log_probs=spoken(self.plan, frames))]


def test_transcripts_are_cut_into_sentences_and_unknown_characters_counted(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("\ufeffBom dia! Como vai?\n\n  O 2.º andar — ok…  Fim\n", encoding="utf-8")
    assert read_sentences(path) == ["Bom dia!", "Como vai?", "O 2.º andar — ok…", "Fim"]
    ids, unknown = sentence_tokens(Known([]), "O 2º andar, 2 vezes")
    assert unknown == {"2": 2, "º": 1}
    assert VOCAB.decode(ids) == "o andar vezes" and ids[0] != VOCAB.word_delimiter_id


def recording(path: Path, seconds: float, rate: int, fmt: str, subtype: str,
              loud: list[tuple[float, float]] | None = None) -> Path:
    """Faint noise with a tone during the ``loud`` stretches (seconds; default: all of it), ``seconds`` long."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    tone = np.zeros_like(t)
    for start, end in loud or [(0.0, seconds)]:
        tone[(t >= start) & (t < end)] = 0.3
    sf.write(path, (tone * np.sin(2 * np.pi * 220 * t) + 1e-4 * rng.standard_normal(t.shape)).astype(np.float32),
             rate, format=fmt, subtype=subtype)
    return path


def test_clips_manifest_and_rejections_from_a_real_recording(tmp_path: Path, caplog) -> None:
    plan = [(50, "bom dia"), (200, "isto nao esta no texto"), (400, "como vai")]
    # the first sentence's sound goes on 0.2 s past its last token (CTC emits a character at its onset)
    audio = recording(tmp_path / "long.opus", 12.0, 48000, "OGG", "OPUS", loud=[(1.0, 1.6), (4.0, 5.3), (8.0, 8.46)])
    text = ["Bom dia.", "O gato dorme no sofá.", "Como vai?"]
    aligned = align_recording(Known(plan), audio, text, AlignSettings())
    out = tmp_path / "out"
    assert write_alignment(out, [aligned], pad_s=0.25) == (2, 2)
    rows = read_rows(out / "manifest.csv")
    assert [r["text"] for r in rows] == ["Bom dia.", "Como vai?"]
    first, end = span(*plan[0])
    assert float(rows[0]["start"]) == first / 50 - 0.25 and end / 50 == 1.4
    assert float(rows[0]["end"]) == pytest.approx(1.6 + 0.25, abs=0.021)  # to the frame
    assert float(rows[1]["end"]) == pytest.approx(span(*plan[2])[1] / 50 + 0.25, abs=0.021)
    for row in rows:
        samples, rate = sf.read(out / row["path"])
        assert rate == 16000 and abs(len(samples) / rate - float(row["duration"])) < 1e-3
        assert float(row["score"]) > -0.01 and row["source"] == str(audio)
    rejected = read_rows(out / "rejected.csv")
    assert [(r["kind"], r["text"]) for r in rejected] == [("sentence", "O gato dorme no sofá."),
                                                          ("audio", "isto nao esta no texto")]
    assert float(rejected[0]["score"]) < -1.0 and float(rejected[1]["start"]) == 4.0
    # the manifest is a training source as it is, with a weight
    dm = SpeechDataModule([DataSource(str(out / "manifest.csv"), weight=2.0)], str(out / "manifest.csv"),
                          batching=BatchSettings(batch_size=2), loading=LoadingSettings(num_workers=0))
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert f"train <- manifest ({out / 'manifest.csv'}): kept 2 of 2" in caplog.text
    assert sorted(next(iter(dm.train_dataloader()))["ids"]) == sorted(str(out / r["path"]) for r in rows)


# --- the command -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt", VOCAB)


@pytest.mark.parametrize("rate,fmt,subtype,suffix", [(8000, "WAV", "PCM_16", "wav"), (44100, "FLAC", "PCM_24", "flac")])
def test_the_command_writes_a_manifest_from_recordings_at_other_rates(checkpoint: Path, tmp_path: Path, capsys,
                                                                      rate: int, fmt: str, subtype: str,
                                                                      suffix: str) -> None:
    # a random model aligns nothing well: with every score accepted, each sentence still gets a clip, in order
    recording(tmp_path / f"long.{suffix}", 6.0, rate, fmt, subtype)
    (tmp_path / "long.txt").write_text("Bom dia. Como vai?\nFim do 1.º dia\n", encoding="utf-8")
    (tmp_path / "pairs.tsv").write_text(f"long.{suffix}\tlong.txt\n", encoding="utf-8")
    code = main(["align", str(checkpoint), "--list", str(tmp_path / "pairs.tsv"), "-o", str(tmp_path / "out"),
                 "--min-score", "-1000"])
    out = capsys.readouterr().out
    assert code == 0 and "aligned 3 of 3 sentences in 1 recording(s)" in out
    assert "2 character(s) the model cannot emit, left out of the alignment: '1' x1, 'º' x1" in out
    rows = read_rows(tmp_path / "out" / "manifest.csv")
    assert [r["text"] for r in rows] == ["Bom dia.", "Como vai?", "Fim do 1.º dia"]
    starts = [float(r["start"]) for r in rows]
    assert starts == sorted(starts) and all(sf.info(tmp_path / "out" / r["path"]).samplerate == 16000 for r in rows)


def one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_errors_are_one_line(checkpoint: Path, tmp_path: Path, capsys) -> None:
    audio = recording(tmp_path / "a.wav", 1.0, 16000, "WAV", "PCM_16")
    text = tmp_path / "a.txt"
    text.write_text("Bom dia.\n", encoding="utf-8")
    out = str(tmp_path / "out")
    assert "no audio file at" in one_line_error(["align", str(checkpoint), "--audio", str(tmp_path / "x.wav"),
                                                 "--text", str(text), "-o", out], capsys)
    assert "no transcript file at" in one_line_error(["align", str(checkpoint), "--audio", str(audio), "--text",
                                                      str(tmp_path / "x.txt"), "-o", out], capsys)
    assert "no model at" in one_line_error(["align", str(tmp_path / "nope.ckpt"), "--audio", str(audio), "--text",
                                            str(text), "-o", out], capsys)
    assert "--audio and --text go together" in one_line_error(["align", str(checkpoint), "--audio", str(audio),
                                                                "-o", out], capsys)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.csv").write_text("mine\n")
    assert "exists (another alignment's output)" in one_line_error(["align", str(checkpoint), "--audio", str(audio),
                                                                    "--text", str(text), "-o", out], capsys)
    assert (tmp_path / "out" / "manifest.csv").read_text() == "mine\n"
