"""Triton kernels, one module per family. These modules import nothing else of medkernels but
``_common`` (the shared activation and store helpers), so a family is vendored as its module plus
``_common.py``; ``medkernels`` sets ``TRITON_INTERPRET=1`` before importing
them when no GPU is present."""
