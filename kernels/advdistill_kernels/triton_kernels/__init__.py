"""Triton kernels of the ``triton`` backend, one per module; import only where triton exists."""
