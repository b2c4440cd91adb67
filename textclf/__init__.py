"""textclf: fine-tune BERT-family encoders for text classification, competition style."""

__version__ = "0.1.0"


def __getattr__(name):
    # Imported lazily: `import textclf` stays cheap for the config and data stages.
    if name == "Predictor":
        from .predict import Predictor

        return Predictor
    raise AttributeError(f"module 'textclf' has no attribute {name!r}")
