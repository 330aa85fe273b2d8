"""mnist-zoo export: ONNX, TorchScript, torch.export and int8 ONNX artifacts that verify themselves.

    python -m export lenet --onnx                 # writes artifacts/lenet.onnx, verified on the 10k test set
    python -m export --help

Python API (what bench/ and users import):
    export.to_onnx.export_onnx(model, path, *, opset=None, softmax=False, metadata=None) -> Path
    export.to_torchscript.export_torchscript(model, path) -> Path;  load_torchscript(path) -> (module, meta)
    export.to_pt2.export_pt2(model, path) -> Path;  load_pt2(path) -> (module, meta)
    export.quantize.quantize_int8(fp32_onnx_path, out_path, calibration_images) -> Path
    export.verify.ort_session(path, threads=1) -> onnxruntime.InferenceSession
Every artifact takes `image` float32 [batch, 1, 28, 28], normalised (pixel/255 - 0.1307) / 0.3081, and returns
`logits` [batch, 10].
"""
