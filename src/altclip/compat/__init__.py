"""The transformers-compatible surface over our classes: the members transformers' tools read off a model
(``modeling``) and the Auto classes (``auto``). Nothing here is needed to run AltCLIP; it is what lets code written for
transformers run unchanged."""
