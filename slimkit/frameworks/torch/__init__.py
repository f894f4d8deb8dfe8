"""PyTorch adapter: discovery, wrappers, masks and files for ``torch.nn.Module`` models."""
