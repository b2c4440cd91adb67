"""textclf: fine-tune BERT-family encoders for text classification, competition style."""

__version__ = "0.1.0"


def __getattr__(name):
    # Imported lazily: `import textclf` stays cheap for the config and data stages.
    if name == "Predictor":
        from .predict import Predictor

        return Predictor
    if name == "process":  # data_process from Python, tables (pandas, pyarrow) or files: data.process_tables
        from .data import process_tables

        return process_tables
    raise AttributeError(f"module 'textclf' has no attribute {name!r}")
