"""Ray Train loops: CE-BERT pretraining (and, on the same machinery, fine-tuning)."""
