"""Training: the model factory and THE evaluation transform, data loading, the training loop,
ImageNet weights, metrics and reports. Imports torch: stage modules import it inside functions."""
