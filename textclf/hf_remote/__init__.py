"""The Hugging Face face of a textclf classifier: a config and a model class that
`AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)` loads.

These two files are copied verbatim into every `best/` folder and every exported `hf` folder,
so they import nothing from textclf: only torch and transformers.
"""
