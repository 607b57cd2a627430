"""faultwatch export: FP32/INT8 ONNX and INT8 TFLite model bundles with a parity gate."""
