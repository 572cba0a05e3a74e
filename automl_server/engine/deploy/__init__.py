"""Deployment: export a trained network (ONNX, TFLite) and check the export."""
