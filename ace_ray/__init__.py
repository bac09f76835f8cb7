"""ace-ray: ACE-BERT multimodal e-commerce retrieval, trained and served on Ray."""

__version__ = "0.1.0"
