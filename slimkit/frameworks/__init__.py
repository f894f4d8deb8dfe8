"""Framework adapters: PyTorch (``slimkit.frameworks.torch``) and Keras (``slimkit.frameworks.tensorflow``)."""
