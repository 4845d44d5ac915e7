"""Running models: the card every exported file and checkpoint carries (``card``), the engines (ONNX Runtime,
OpenVINO, LiteRT, torch: ``engines``), the one predict driver (``predict``) and what feeds it: resumable archive
jobs (``jobs``), videos, cameras and streams (``video``), tiled evaluation (``tiled_eval``).

No module here imports torch when it loads: they run in the ``runtime`` install.
"""
