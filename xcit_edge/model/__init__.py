"""XCiT in Keras 3 (TensorFlow backend) and the checkpoint key mapping."""

from xcit_edge.model.xcit import XCiT, build_model

__all__ = ["XCiT", "build_model"]
