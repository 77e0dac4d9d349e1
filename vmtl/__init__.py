"""vmtl: multi-task video understanding served on NVIDIA Triton.

One frozen VideoMAE trunk with VMT-Adapters runs once per clip; light task heads (with DLM prompts
from auxiliary tasks) read its features. docs/architecture.md is the map.
"""

__version__ = "0.1.0"
