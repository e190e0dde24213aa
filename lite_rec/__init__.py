"""lite-rec: Lite-LLM4Rec sequential recommendation as an offline/online pipeline."""

__version__ = "0.1.0"
