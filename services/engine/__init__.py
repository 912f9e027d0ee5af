"""The engine: model registry, scheduler and ONNX Runtime decoder behind the `Generate` stream."""
