"""Inputs: the XLM-R tokenizer; image files opened and decoded one way everywhere (``decoding``, with the header
bounds of ``headers`` and the threads or worker processes of ``decode_pool``) and preprocessed (``image_processing``);
the processor that holds both, and ``BatchFeature``."""
