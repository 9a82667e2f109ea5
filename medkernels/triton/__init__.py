"""Triton kernels, one module per family. These modules import nothing else of medkernels,
so they can be vendored alone; ``medkernels`` sets ``TRITON_INTERPRET=1`` before importing
them when no GPU is present."""
