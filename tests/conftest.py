"""Test setup: the repository root on sys.path (tests run from a checkout, installed or not)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import medkernels  # noqa: E402,F401  (sets TRITON_INTERPRET before any Triton kernel is defined)
