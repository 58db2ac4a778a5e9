"""Datasets read from user files (image-caption pairs as CSV, JSON Lines or WebDataset tars; parallel text), shared by
training and evaluation, and the multilingual captions random checkpoints train their tokenizer on (captions.txt)."""
