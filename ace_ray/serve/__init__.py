"""The search service (paper 4.7): an offline index job (product embeddings -> FAISS, hot-query cache) and
the Ray Serve application (query encoder, FAISS index actor, HTTP ingress) that answers queries with it."""
