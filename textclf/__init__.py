"""textclf: fine-tune BERT-family encoders for text classification, competition style."""

__version__ = "0.1.0"
