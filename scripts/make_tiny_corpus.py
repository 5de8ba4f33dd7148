"""Build the bundled corpus ``ptasr/assets/cv-tiny-pt/``: synthetic Portuguese speech in Common Voice's layout.

Why synthetic: the demo (``python train.py fit``) and the data tests must run offline, on two CPU cores, in
minutes. Real Common Voice clips cannot be redistributed inside the package in useful numbers and a tiny
model trained from random weights cannot learn them in ten minutes. espeak-ng speech from a closed
vocabulary can be learnt that fast, and written in the exact release layout it exercises the same code
path as a real release (TSV parsing, clip_durations.tsv, 48 kHz MP3 decoding, resampling).

What it makes (deterministic: same seed -> byte-identical output; run it again and ``git diff`` is empty):

- sentences: short (3-6 words) grammatical Portuguese from templates over a closed vocabulary of about
  200 words (subjects, conjugated verbs, objects, numbers with gender agreement, places with the
  contractions no/na/ao/à/do/da), with accents (ã, ç, é, ê, á, à, ó, ô, í, ú, õ) and punctuation
  (. , ? ! and a few quotes, hyphens and ellipses that the reference normaliser drops);
- speakers: espeak-ng voices ``pt`` (European) and ``pt-br`` (Brazilian) times voice variants; one
  speaker = one (voice, variant) = one ``client_id`` (sha512 of the name, hex, like Common Voice's);
- every utterance gets its own rate (140-190 words per minute), pitch (30-70), amplitude, silence padding
  and white noise (30-45 dB SNR), and is written as 48 kHz mono MP3 (32 kbit/s CBR) in ``clips/``;
- splits like Common Voice's CorporaCreator: dev and test sentences never occur in train (as whole
  sentences; every word of theirs does occur in train), and speakers are disjoint across splits except one
  speaker shared between train and dev and one between train and test (Common Voice shares few speakers too,
  and it lets the demo's WER measure both seen and unseen voices);
- files: train.tsv, dev.tsv, test.tsv, validated.tsv (= all three), invalidated.tsv and other.tsv (header
  only), clip_durations.tsv (``clip\\tduration[ms]``), with the pre-v17 column set ``client_id path sentence
  up_votes down_votes age gender accent locale segment``.

Usage::

    python scripts/make_tiny_corpus.py                 # writes ptasr/assets/cv-tiny-pt
    python scripts/make_tiny_corpus.py --out /tmp/cv   # elsewhere

Needs the ``espeak-ng`` program (Debian package espeak-ng) and soundfile with libsndfile >= 1.1 (MP3 writing).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import shutil
import subprocess
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

SEED = 20241126
SAMPLE_RATE = 48_000  # Common Voice releases are 48 kHz mono MP3
OLD_COLUMNS = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent", "locale",
               "segment"]
SPLIT_SIZES = {"train": 420, "dev": 50, "test": 50}
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "ptasr" / "assets" / "cv-tiny-pt"

# ---------------------------------------------------------------------------------------------------------
# The closed vocabulary. Nouns carry gender ("m"/"f"); verbs are conjugated for the four persons we use.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Noun:
    singular: str
    plural: str
    gender: str  # "m" or "f": picks the article, the number word (dois/duas) and the adjective form


def _nouns(spec: str) -> list[Noun]:
    """Parse ``"pão/pães m, maçã/maçãs f"`` into nouns."""
    nouns = []
    for item in spec.split(","):
        forms, gender = item.split()
        singular, plural = forms.split("/")
        nouns.append(Noun(singular, plural, gender))
    return nouns


FOOD = _nouns("pão/pães m, maçã/maçãs f, bolo/bolos m, peixe/peixes m, sopa/sopas f, laranja/laranjas f, "
              "queijo/queijos m, limão/limões m, banana/bananas f, ovo/ovos m")
DRINK = _nouns("café/cafés m, água/águas f, leite/leites m, chá/chás m, sumo/sumos m")
THINGS = _nouns("livro/livros m, carta/cartas f, chave/chaves f, caixa/caixas f, relógio/relógios m, "
                "camisa/camisas f, sapato/sapatos m, bicicleta/bicicletas f, guarda-chuva/guarda-chuvas m, "
                "jornal/jornais m, flor/flores f, lápis/lápis m, mala/malas f, cadeira/cadeiras f, "
                "chapéu/chapéus m, lâmpada/lâmpadas f")
READABLE = _nouns("livro/livros m, carta/cartas f, jornal/jornais m, revista/revistas f, mensagem/mensagens f, "
                  "lição/lições f")
WATCHABLE = _nouns("filme/filmes m, barco/barcos m, lua/luas f, casa/casas f, ônibus/ônibus m, estrela/estrelas f, "
                   "comboio/comboios m, montanha/montanhas f")
OPENABLE = _nouns("porta/portas f, janela/janelas f, caixa/caixas f, loja/lojas f, mala/malas f, garrafa/garrafas f")
ANIMALS = _nouns("gato/gatos m, cão/cães m, pássaro/pássaros m, cavalo/cavalos m, vaca/vacas f, galinha/galinhas f")
PEOPLE = _nouns("menino/meninos m, menina/meninas f, professor/professores m, médica/médicas f, "
                "vizinho/vizinhos m, aluna/alunas f, irmão/irmãos m, avó/avós f, avô/avôs m, mãe/mães f, "
                "pai/pais m, criança/crianças f")
NAMES = [("Ana", "f"), ("João", "m"), ("Maria", "f"), ("Pedro", "m"), ("Sofia", "f"), ("Lucas", "m"),
         ("Beatriz", "f"), ("Tiago", "m"), ("Clara", "f"), ("Rui", "m"), ("Inês", "f"), ("José", "m")]
# place phrase after "em" and after "a" (movement): contractions no/na, ao/à; cities take no article
PLACES = [("na escola", "à escola"), ("no mercado", "ao mercado"), ("na praia", "à praia"),
          ("no parque", "ao parque"), ("na cidade", "à cidade"), ("no campo", "ao campo"),
          ("na praça", "à praça"), ("no hospital", "ao hospital"), ("na igreja", "à igreja"),
          ("em Lisboa", "a Lisboa"), ("no Porto", "ao Porto"), ("em Coimbra", "a Coimbra"),
          ("em São Paulo", "a São Paulo"), ("em Brasília", "a Brasília"), ("no Recife", "ao Recife"),
          ("em Salvador", "a Salvador")]
TIMES = ["hoje", "amanhã", "agora", "cedo", "tarde", "sempre", "também", "à noite", "de manhã", "à tarde"]
NUMBERS = {2: ("dois", "duas"), 3: ("três", "três"), 4: ("quatro", "quatro"), 5: ("cinco", "cinco"),
           6: ("seis", "seis"), 7: ("sete", "sete"), 8: ("oito", "oito"), 9: ("nove", "nove"), 10: ("dez", "dez")}
# adjective forms: m.sg, f.sg, m.pl, f.pl
ADJECTIVES = [("bonito", "bonita", "bonitos", "bonitas"), ("novo", "nova", "novos", "novas"),
              ("velho", "velha", "velhos", "velhas"), ("pequeno", "pequena", "pequenos", "pequenas"),
              ("grande", "grande", "grandes", "grandes"), ("limpo", "limpa", "limpos", "limpas"),
              ("caro", "cara", "caros", "caras"), ("barato", "barata", "baratos", "baratas")]
FOOD_ADJECTIVES = [("quente", "quente", "quentes", "quentes"), ("frio", "fria", "frios", "frias"),
                   ("bom", "boa", "bons", "boas"), ("doce", "doce", "doces", "doces"),
                   ("pronto", "pronta", "prontos", "prontas")]
PERSON_ADJECTIVES = [("cansado", "cansada", "cansados", "cansadas"), ("feliz", "feliz", "felizes", "felizes"),
                     ("alto", "alta", "altos", "altas"), ("contente", "contente", "contentes", "contentes"),
                     ("doente", "doente", "doentes", "doentes"), ("ocupado", "ocupada", "ocupados", "ocupadas")]

# person keys: "1s" eu, "3s" ele/ela/você/names/singular nouns, "1p" nós, "3p" eles/elas/plural nouns
VERBS_WITH_OBJECTS = {
    "comer": ({"1s": "como", "3s": "come", "1p": "comemos", "3p": "comem"}, FOOD),
    "comprar": ({"1s": "compro", "3s": "compra", "1p": "compramos", "3p": "compram"}, FOOD + THINGS),
    "vender": ({"1s": "vendo", "3s": "vende", "1p": "vendemos", "3p": "vendem"}, FOOD + THINGS),
    "beber": ({"1s": "bebo", "3s": "bebe", "1p": "bebemos", "3p": "bebem"}, DRINK),
    "ler": ({"1s": "leio", "3s": "lê", "1p": "lemos", "3p": "leem"}, READABLE),
    "escrever": ({"1s": "escrevo", "3s": "escreve", "1p": "escrevemos", "3p": "escrevem"}, READABLE),
    "ver": ({"1s": "vejo", "3s": "vê", "1p": "vemos", "3p": "veem"}, WATCHABLE + ANIMALS),
    "abrir": ({"1s": "abro", "3s": "abre", "1p": "abrimos", "3p": "abrem"}, OPENABLE),
    "fechar": ({"1s": "fecho", "3s": "fecha", "1p": "fechamos", "3p": "fecham"}, OPENABLE),
    "procurar": ({"1s": "procuro", "3s": "procura", "1p": "procuramos", "3p": "procuram"}, THINGS + ANIMALS),
    "encontrar": ({"1s": "encontro", "3s": "encontra", "1p": "encontramos", "3p": "encontram"}, THINGS + ANIMALS),
    "trazer": ({"1s": "trago", "3s": "traz", "1p": "trazemos", "3p": "trazem"}, FOOD + DRINK + THINGS),
    "levar": ({"1s": "levo", "3s": "leva", "1p": "levamos", "3p": "levam"}, FOOD + THINGS),
    "lavar": ({"1s": "lavo", "3s": "lava", "1p": "lavamos", "3p": "lavam"}, THINGS),
    "querer": ({"1s": "quero", "3s": "quer", "1p": "queremos", "3p": "querem"}, FOOD + DRINK + THINGS),
    "ter": ({"1s": "tenho", "3s": "tem", "1p": "temos", "3p": "têm"}, THINGS + ANIMALS),
    "fazer": ({"1s": "faço", "3s": "faz", "1p": "fazemos", "3p": "fazem"}, _nouns("bolo/bolos m, sopa/sopas f")),
}
ANIMAL_VERBS = {"comer", "beber", "ver", "procurar", "encontrar"}
LIVE = {"1s": "moro", "3s": "mora", "1p": "moramos", "3p": "moram"}
WORK = {"1s": "trabalho", "3s": "trabalha", "1p": "trabalhamos", "3p": "trabalham"}
GO = {"1s": "vou", "3s": "vai", "1p": "vamos", "3p": "vão"}
LIKE = {"1s": "gosto", "3s": "gosta", "1p": "gostamos", "3p": "gostam"}
BE_STATE = {"1s": "estou", "3s": "está", "1p": "estamos", "3p": "estão"}


@dataclass(frozen=True)
class Subject:
    text: str
    person: str  # "1s", "3s", "1p" or "3p"
    gender: str
    plural: bool


def _article(noun: Noun, plural: bool, definite: bool = True) -> str:
    if definite:
        return {("m", False): "o", ("f", False): "a", ("m", True): "os", ("f", True): "as"}[(noun.gender, plural)]
    return "um" if noun.gender == "m" else "uma"


def _adjective(forms: tuple[str, str, str, str], gender: str, plural: bool) -> str:
    return forms[(gender == "f") + 2 * plural]


def _subject(rng: random.Random, animals: bool = False) -> Subject:
    """A person (or, where ``animals``, also an animal) in any of the four persons."""
    kind = rng.random()
    if kind < 0.3:
        name, gender = rng.choice(NAMES)
        return Subject(name, "3s", gender, False)
    if kind < 0.55:
        text, person, gender = rng.choice([("eu", "1s", "m"), ("ele", "3s", "m"), ("ela", "3s", "f"),
                                           ("você", "3s", "f"), ("nós", "1p", "m"), ("eles", "3p", "m"),
                                           ("elas", "3p", "f")])
        return Subject(text, person, gender, person.endswith("p"))
    noun = rng.choice(PEOPLE + ANIMALS if animals else PEOPLE)
    plural = rng.random() < 0.3
    words = f"{_article(noun, plural)} {noun.plural if plural else noun.singular}"
    return Subject(words, "3p" if plural else "3s", noun.gender, plural)


def _object_phrase(rng: random.Random, nouns: list[Noun]) -> str:
    noun = rng.choice(nouns)
    style = rng.random()
    if style < 0.45:
        return f"{_article(noun, False)} {noun.singular}"
    if style < 0.65:
        return f"{_article(noun, False, definite=False)} {noun.singular}"
    number = rng.choice(list(NUMBERS))
    return f"{NUMBERS[number][noun.gender == 'f']} {noun.plural}"


def _sentence_body(rng: random.Random) -> tuple[str, str]:
    """One sentence without its final punctuation, and that punctuation."""
    verb = rng.choice(sorted(VERBS_WITH_OBJECTS))
    template = rng.random()
    # animals eat, drink, see and like things; only people read, sell or live somewhere
    subject = _subject(rng, animals=(template < 0.4 and verb in ANIMAL_VERBS) or 0.64 <= template < 0.72)
    negate = "não " if rng.random() < 0.15 else ""
    if template < 0.4:
        forms, objects = VERBS_WITH_OBJECTS[verb]
        tail = f" {rng.choice(TIMES)}" if rng.random() < 0.2 else ""
        return f"{subject.text} {negate}{forms[subject.person]} {_object_phrase(rng, objects)}{tail}", "."
    if template < 0.52:
        verb = rng.choice([LIVE, WORK])
        return f"{subject.text} {negate}{verb[subject.person]} {rng.choice(PLACES)[0]}", "."
    if template < 0.64:
        return f"{subject.text} {negate}{GO[subject.person]} {rng.choice(PLACES)[1]} {rng.choice(TIMES)}", "."
    if template < 0.72:
        noun = rng.choice(FOOD + DRINK + ANIMALS)
        de = "do" if noun.gender == "m" else "da"
        return f"{subject.text} {negate}{LIKE[subject.person]} {de} {noun.singular}", rng.choice(".!")
    if template < 0.8:
        adjective = _adjective(rng.choice(PERSON_ADJECTIVES), subject.gender, subject.plural)
        return f"{subject.text} {negate}{BE_STATE[subject.person]} {adjective}", rng.choice(".!")
    if template < 0.87:
        noun, adjectives = rng.choice([(n, FOOD_ADJECTIVES) for n in FOOD + DRINK] + [(n, ADJECTIVES) for n in THINGS])
        plural = rng.random() < 0.3
        adjective = _adjective(rng.choice(adjectives), noun.gender, plural)
        verb = ("são" if plural else "é") if rng.random() < 0.5 else ("estão" if plural else "está")
        return f"{_article(noun, plural)} {noun.plural if plural else noun.singular} {verb} {adjective}", "."
    if template < 0.93:
        noun = rng.choice(THINGS + ANIMALS + PEOPLE)
        return f"onde está {_article(noun, False)} {noun.singular}", "?"
    forms, objects = VERBS_WITH_OBJECTS[rng.choice(["comer", "beber", "querer", "comprar", "ler"])]
    person = rng.choice(["3s", "3p"])
    who = "você" if person == "3s" else "vocês"
    return f"{who} {forms[person]} {_object_phrase(rng, objects)}", "?"


def _decorate(body: str, end: str, rng: random.Random) -> str:
    """Capitalise and punctuate; sometimes add what the reference normaliser removes (commas, quotes, …)."""
    text = body[0].upper() + body[1:] + end
    roll = rng.random()
    if roll < 0.08:
        text = rng.choice(["Sim, ", "Bem, ", "Olha, "]) + body + end
    elif roll < 0.11:
        text = text[:-1] + "…"
    elif roll < 0.13:
        # Common Voice sentences carry unmatched quotes: the reason TSVs must be read with QUOTE_NONE
        text = '"' + text
    return text


def normalised(text: str) -> str:
    """The reference normaliser's view of a sentence, to compare sentences and count words."""
    text = re.sub(r"[,?.!\-;:\"“%‘”�—’…–]", "", unicodedata.normalize("NFC", text)).lower()
    return " ".join(text.split())


def make_sentences(rng: random.Random) -> dict[str, list[str]]:
    """Sentences per split: eval sentences unseen in train as sentences, made only of train words."""
    pool: dict[str, str] = {}
    while len(pool) < 3000:
        text = _decorate(*_sentence_body(rng), rng)
        if 3 <= len(normalised(text).split()) <= 6:
            pool.setdefault(normalised(text), text)
    keys = list(pool)
    rng.shuffle(keys)
    train_keys = keys[: SPLIT_SIZES["train"]]
    train_words = {word for key in train_keys for word in key.split()}
    eval_keys = [key for key in keys[SPLIT_SIZES["train"]:] if set(key.split()) <= train_words]
    dev_keys = eval_keys[: SPLIT_SIZES["dev"]]
    test_keys = eval_keys[SPLIT_SIZES["dev"]: SPLIT_SIZES["dev"] + SPLIT_SIZES["test"]]
    return {"train": [pool[k] for k in train_keys], "dev": [pool[k] for k in dev_keys],
            "test": [pool[k] for k in test_keys]}


# ---------------------------------------------------------------------------------------------------------
# Speakers: (voice, variant) pairs with made-up Common Voice metadata
# ---------------------------------------------------------------------------------------------------------

MALE_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]
FEMALE_VARIANTS = ["f1", "f2", "f3", "f4", "f5"]
# held-out speakers per eval split; the first of each list also speaks in train (see module docstring)
EVAL_SPEAKERS = {"dev": [("pt", "m5"), ("pt", "f4"), ("pt-br", "m6")],
                 "test": [("pt-br", "m2"), ("pt-br", "f3"), ("pt", "m7")]}
AGES = ["", "teens", "twenties", "thirties", "fourties", "fifties", "sixties"]


@dataclass(frozen=True)
class Speaker:
    voice: str
    variant: str
    age: str
    accent: str

    @property
    def client_id(self) -> str:
        return hashlib.sha512(f"espeak-ng {self.voice}+{self.variant}".encode()).hexdigest()

    @property
    def gender(self) -> str:
        return "male" if self.variant.startswith("m") else "female"


def make_speakers(rng: random.Random) -> dict[str, list[Speaker]]:
    everyone = [Speaker(voice, variant, rng.choice(AGES), "portugal" if voice == "pt" else "brasil")
                for voice in ("pt", "pt-br") for variant in MALE_VARIANTS + FEMALE_VARIANTS]
    by_key = {(s.voice, s.variant): s for s in everyone}
    held_out = {key for keys in EVAL_SPEAKERS.values() for key in keys[1:]}
    train = [s for s in everyone if (s.voice, s.variant) not in held_out]
    return {"train": train, **{split: [by_key[key] for key in keys] for split, keys in EVAL_SPEAKERS.items()}}


# ---------------------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------------------


def synthesise(text: str, speaker: Speaker, rng: random.Random, workdir: Path) -> np.ndarray:
    """espeak-ng speech at 48 kHz, float64 (S,): trimmed, padded with 0.05-0.2 s of silence, light noise."""
    wav = workdir / "utterance.wav"
    rate, pitch, amplitude = rng.randint(140, 190), rng.randint(30, 70), rng.randint(80, 150)
    command = ["espeak-ng", "-v", f"{speaker.voice}+{speaker.variant}", "-s", str(rate), "-p", str(pitch),
               "-a", str(amplitude), "-w", str(wav), text]
    subprocess.run(command, check=True, capture_output=True)
    speech, rate_in = sf.read(wav, dtype="float32")
    speech = _trim(speech, rate_in)
    speech = torchaudio.functional.resample(torch.from_numpy(speech), rate_in, SAMPLE_RATE).numpy().astype(np.float64)
    pads = [np.zeros(int(SAMPLE_RATE * rng.uniform(0.05, 0.2))) for _ in range(2)]
    audio = np.concatenate([pads[0], speech, pads[1]])
    snr_db = rng.uniform(30, 45)
    noise_rms = np.sqrt(np.mean(speech**2)) / 10 ** (snr_db / 20)
    audio += np.random.default_rng(rng.getrandbits(32)).normal(0.0, noise_rms, audio.shape)
    return np.clip(audio, -1.0, 1.0)


def _trim(speech: np.ndarray, sample_rate: int) -> np.ndarray:
    """Drop espeak's leading and trailing silence (10 ms frames below 1 % of the peak)."""
    frame = sample_rate // 100
    energies = np.abs(speech[: len(speech) // frame * frame]).reshape(-1, frame).max(axis=1)
    voiced = np.flatnonzero(energies > 0.01 * energies.max())
    return speech[voiced[0] * frame: (voiced[-1] + 1) * frame]


def write_mp3(path: Path, audio: np.ndarray) -> int:
    """Write 48 kHz MP3 at the lowest MPEG-1 bit rate (32 kbit/s CBR) and return its duration in ms."""
    sf.write(path, audio, SAMPLE_RATE, format="MP3", compression_level=0.99, bitrate_mode="CONSTANT")
    return round(sf.info(path).frames * 1000 / SAMPLE_RATE)


# ---------------------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------------------


def write_tsv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    # Common Voice writes LF line ends, no quoting (sentences keep their quotes verbatim)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(columns) + "\n")
        for row in rows:
            f.write("\t".join(row[c] for c in columns) + "\n")


def build(out: Path, seed: int) -> None:
    rng = random.Random(seed)
    sentences = make_sentences(rng)
    speakers = make_speakers(rng)
    clip_ids = rng.sample(range(19_000_000, 40_000_000), sum(len(v) for v in sentences.values()))
    if out.exists():
        shutil.rmtree(out / "clips", ignore_errors=True)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, str]]] = {}
    durations: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("train", "dev", "test"):
            rows[split] = []
            for text in sentences[split]:
                speaker = speakers[split][len(rows[split]) % len(speakers[split])]
                name = f"common_voice_pt_{clip_ids.pop(0)}.mp3"
                duration_ms = write_mp3(out / "clips" / name, synthesise(text, speaker, rng, Path(tmp)))
                durations.append({"clip": name, "duration[ms]": str(duration_ms)})
                rows[split].append({"client_id": speaker.client_id, "path": name, "sentence": text, "up_votes": "2",
                                    "down_votes": "0", "age": speaker.age, "gender": speaker.gender,
                                    "accent": speaker.accent, "locale": "pt", "segment": ""})
    for split, split_rows in rows.items():
        write_tsv(out / f"{split}.tsv", split_rows, OLD_COLUMNS)
    write_tsv(out / "validated.tsv", rows["train"] + rows["dev"] + rows["test"], OLD_COLUMNS)
    write_tsv(out / "invalidated.tsv", [], OLD_COLUMNS)
    write_tsv(out / "other.tsv", [], OLD_COLUMNS)
    write_tsv(out / "clip_durations.tsv", sorted(durations, key=lambda r: r["clip"]), ["clip", "duration[ms]"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="corpus folder (default: the bundled one)")
    parser.add_argument("--seed", type=int, default=SEED, help="changes every sentence, voice and clip id")
    args = parser.parse_args()
    torch.set_num_threads(1)  # resampling short clips; more threads only add contention
    build(args.out, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
