"""Jetson bundle: a folder to copy onto the board that builds and times the engines there.

``stage`` (:func:`make_bundle`, behind ``rmtdeploy bundle``) writes the ONNX graphs, the target's
``build_engine.sh`` (trtexec lines for TensorRT 10 and 11, DLA when the target has it), the
self-contained ``bench_on_device.py`` (this folder; Python + TensorRT only) and a README.
"""

from rmtdeploy.bundle.stage import BUNDLE_TARGET_PREFIX, make_bundle

__all__ = ["BUNDLE_TARGET_PREFIX", "make_bundle"]
