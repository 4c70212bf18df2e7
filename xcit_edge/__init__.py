"""xcit-edge: XCiT image models to TFLite, ONNX and OpenVINO, validated and fused."""

__version__ = "0.1.0"
