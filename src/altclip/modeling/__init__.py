"""Modelling: the configs, the two towers (``text``, ``vision``) and the whole model, the blocks they share
(``layers``), their outputs, CUDA graphs, int8/int4 quantization, and the CLIP teacher's text tower (``clip_text``)."""
