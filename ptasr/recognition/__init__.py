"""Recognition: a trained model turned into text (``ptasr transcribe``).

- :mod:`~ptasr.recognition.recognizer`: :class:`~ptasr.recognition.recognizer.Recognizer`, a model with its
  vocabulary and normaliser that transcribes audio of any length (chunked), with word timestamps;
- :mod:`~ptasr.recognition.inputs`: what it takes (paths, encoded bytes, waveforms) as 16 kHz mono audio;
- :mod:`~ptasr.recognition.transcript`: what it gives back (:class:`~ptasr.recognition.transcript.Transcript`);
- :mod:`~ptasr.recognition.devices`: ``--device`` and ``--dtype``;
- :mod:`~ptasr.recognition.trained_model`: the trained-model format, read from a checkpoint or a model folder.
"""
