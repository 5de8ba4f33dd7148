"""Decoding: CTC outputs into token ids and words (``ptasr transcribe/evaluate --lm``, ``ptasr lm``).

- :mod:`~ptasr.decoding.greedy`: best-path decoding;
- :mod:`~ptasr.decoding.lm`: beam search with a KenLM n-gram LM, the search for its weights, an LM's files;
- :mod:`~ptasr.decoding.ngram`: building that LM (``ptasr lm build``): modified Kneser-Ney, written as ARPA.
"""
