"""Export: the SipMask network as an ONNX model for ONNX Runtime."""
