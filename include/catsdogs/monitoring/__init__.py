"""Watching the model in production: what each prediction records, the training-time reference
profile it is compared with, drift and out-of-distribution scores."""
