"""Data: sources (Kaggle, folder, archive), manifests, THE image decoding path and its safety
limits, probing, EDA and the Great Expectations suite. Used by the data stages and by serving."""
