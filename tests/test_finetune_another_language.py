"""Fine-tuning a model already fine-tuned in another language, end to end: train the demo briefly on the bundled
Portuguese corpus, export it (``ptasr export``), then fine-tune that folder on a small Spanish corpus made here
with espeak-ng. The CTC head is rebuilt for the Spanish symbols, the Portuguese rows of shared symbols carried.
"""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import HANG_S, SMALL_MODEL, SMALL_RUN

from ptasr.cli import main as ptasr_main
from ptasr.train.cli import cli_main

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")

# Short Spanish sentences: ñ, which the Portuguese corpus does not have, and letters it does.
SPANISH = [
    "el niño come pan", "la niña bebe agua", "mañana vamos al mar", "el señor lee un libro",
    "la casa es pequeña", "un año tiene doce meses", "el perro corre mucho", "mi madre canta bien",
    "los niños juegan hoy", "ella escribe una carta", "el tren llega tarde", "hace frío en enero",
    "me gusta el café", "el gato duerme aquí", "ustedes hablan español", "la montaña es alta",
    "compramos fruta fresca", "el sol brilla fuerte", "mi hermano estudia", "la puerta está abierta",
    "tenemos dos perros", "el cielo es azul", "quiero una manzana", "el río es largo",
    "la señora baila", "mañana llueve mucho", "el campo es verde", "leemos en la cama",
    "el pájaro vuela alto", "la cuña de madera",
]


def _spanish_corpus(folder: Path) -> tuple[Path, Path]:
    """espeak-ng clips (22.05 kHz WAV) and two manifests: the first 24 sentences to train on, the rest to validate."""
    clips = folder / "clips"
    clips.mkdir(parents=True)
    rows = []
    for index, sentence in enumerate(SPANISH):
        path = clips / f"es_{index:03d}.wav"
        subprocess.run(["espeak-ng", "-v", "es", "-s", "160", "-w", str(path), sentence], check=True,
                       capture_output=True, timeout=HANG_S)
        rows.append({"path": f"clips/{path.name}", "text": sentence})
    manifests = []
    for name, part in (("train", rows[:24]), ("dev", rows[24:])):
        manifest = folder / f"{name}.csv"
        with open(manifest, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=["path", "text"])
            writer.writeheader()
            writer.writerows(part)
        manifests.append(manifest)
    return manifests[0], manifests[1]


def test_fine_tuning_an_exported_portuguese_model_on_spanish(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 1. The demo, briefly (the training tests' tiny model), on the bundled Portuguese corpus.
    portuguese = cli_main(["fit", f"--trainer.logger.init_args.save_dir={tmp_path / 'pt'}", *SMALL_MODEL, *SMALL_RUN,
                           "--trainer.max_steps=4", "--trainer.max_time=null"])
    portuguese_vocab = portuguese.datamodule.vocab
    checkpoint = tmp_path / "pt" / "demo" / "version_0" / "checkpoints" / "last.ckpt"
    # 2. Exported as a Hugging Face folder.
    assert ptasr_main(["export", str(checkpoint), str(tmp_path / "pt-model")]) == 0
    assert (tmp_path / "pt-model" / "vocab.json").is_file()
    # 3. Fine-tuned from that folder on Spanish.
    train, dev = _spanish_corpus(tmp_path / "es")
    with caplog.at_level(logging.INFO, logger="ptasr.model.convert"):
        spanish = cli_main(["fit", f"--trainer.logger.init_args.save_dir={tmp_path / 'es-runs'}", *SMALL_MODEL,
                            *SMALL_RUN, f"--model.pretrained={tmp_path / 'pt-model'}",
                            f"--data.train={train}", f"--data.val={dev}",
                            "--trainer.max_steps=4", "--trainer.max_time=null"])
    spanish_vocab = spanish.datamodule.vocab
    assert "ñ" in spanish_vocab.tokens and "ñ" not in portuguese_vocab.tokens
    shared = set(spanish_vocab.tokens) & set(portuguese_vocab.tokens)
    new = [token for token in spanish_vocab.tokens if token not in shared]
    [line] = [r.getMessage() for r in caplog.records if "CTC head rebuilt" in r.getMessage()]
    assert f"{len(spanish_vocab)}-symbol vocabulary: {len(shared)} rows carried over" in line
    assert f"{len(new)} new ({' '.join(new)})" in line
    # It trained: every update, a finite loss, and a checkpoint of the Spanish head.
    assert spanish.trainer.global_step == 4
    assert torch.isfinite(spanish.trainer.callback_metrics["train/loss"])
    saved = torch.load(tmp_path / "es-runs" / "demo" / "version_0" / "checkpoints" / "last.ckpt",
                       map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4 and saved["ptasr"]["vocab"]["tokens"] == spanish_vocab.tokens
    assert saved["state_dict"]["model.lm_head.weight"].shape[0] == len(spanish_vocab)
