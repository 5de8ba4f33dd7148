"""Evaluation: a trained model scored on a labelled set (``ptasr evaluate``; validation uses the scoring).

- :mod:`~ptasr.evaluation.scoring`: WER and CER of a corpus, the one implementation;
- :mod:`~ptasr.evaluation.evaluate`: read a test set, transcribe and score every clip, summarise, write;
- :mod:`~ptasr.evaluation.report`: every utterance on one HTML page (``--report``).
"""
