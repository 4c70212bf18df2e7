"""Graph stage: load a SavedModel signature, freeze it, canonicalize it, adapt its input.

Every target backend starts from the same `PreparedGraph`, so a rewrite done here (the
GELU canonicalization, the XCA fusion) is inherited by all of them.
"""

from xcit_edge.graph.freeze import PREPARE_STEPS, PreparedGraph, prepare

__all__ = ["PREPARE_STEPS", "PreparedGraph", "prepare"]
