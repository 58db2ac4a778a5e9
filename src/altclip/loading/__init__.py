"""Checkpoints: the key map and tensor files (``checkpoint``), ``from_pretrained``/``save_pretrained``
(``pretrained``), the Hub, the registry of known checkpoints and shapes, and random-weight checkpoint writers."""
