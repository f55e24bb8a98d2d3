"""Jetson bundle: a folder to copy onto the board that builds and times the engines there.

``stage`` (:func:`make_bundle`, behind ``rmtdeploy bundle``) writes the ONNX graphs, the target's
``build_engine.sh`` (trtexec lines for TensorRT 10 and 11, DLA when the target has it), the
self-contained ``bench_on_device.py`` (this folder; Python + TensorRT only) and a README.

The package imports nothing itself: ``bench_on_device`` is a mechanism (the TensorRT runner binds engines
with it, a floor below the benchmark), ``stage`` the stage that ships it.
"""
