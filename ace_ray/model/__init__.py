"""CE-BERT / ACE-BERT: the multimodal encoder, its pretraining heads and losses."""
