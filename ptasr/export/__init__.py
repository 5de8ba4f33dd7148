"""Export: a training checkpoint as a model folder others load (``ptasr export``).

- :mod:`~ptasr.export.hf_folder`: the Hugging Face folder (weights, tokenizer, preprocessor, LM files);
- :mod:`~ptasr.export.onnx`: ``model.onnx`` and a recognizer that runs it;
- :mod:`~ptasr.export.model_card`: the folder's ``README.md``.
"""
