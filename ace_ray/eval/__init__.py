"""Evaluation: retrieval metrics, FAISS indexes, baselines, reports."""
