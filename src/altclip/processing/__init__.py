"""Inputs: the XLM-R tokenizer, image opening and preprocessing (``image_processing``), the processor that holds both,
and ``BatchFeature``."""
