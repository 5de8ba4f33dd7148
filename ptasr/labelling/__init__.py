"""Labelling: training data made from raw material (``ptasr align``, ``ptasr pseudo-label``).

- :mod:`~ptasr.labelling.forced`: CTC forced alignment of a long transcript, sentence by sentence, and the scores
  that find the sentences the audio lacks and the audio the text lacks;
- :mod:`~ptasr.labelling.align`: long recordings with their transcripts cut into clips and a training manifest;
- :mod:`~ptasr.labelling.pseudo`: untranscribed audio transcribed into a manifest, kept by confidence.
"""
