"""Self-contained model bundles: ``ctrkit export CKPT --format onnx|torchscript|savedmodel --out DIR``.

A bundle is a directory holding the model as ONNX (``model.onnx``), TorchScript (``model.pt``) or
a TensorFlow SavedModel (``savedmodel/``), the dataset's encoder (``encoder.npz``: raw rows ->
ids) and ``manifest.json`` (:mod:`ctrkit.export.manifest`). The graph takes the encoded tensors
(``sparse`` int32 ``[B, F]``, ``dense`` float32 ``[B, n_dense]``, ``seq_<name>`` int32 ``[B, L]``,
batch dimension free) and returns click probabilities ``probability`` float32 ``[B]``.

* :func:`export_bundle` writes one (:mod:`ctrkit.export.bundle`); any checkpoint exports to every
  format (a checkpoint of the other framework is converted first);
* :func:`load_bundle` reads one back as a :class:`~ctrkit.export.loaded.BundleModel` with the
  interface of :class:`ctrkit.api.Model`, scoring with the runtime alone; ``ctrkit.load(DIR)``
  does the same for a bundle directory.

The submodules import their framework lazily: ``import ctrkit.export`` is light.
"""

from __future__ import annotations

from ctrkit.export.manifest import FORMATS, MANIFEST_FILE, is_bundle, read_manifest


def export_bundle(checkpoint, fmt, out, **options):
    """See :func:`ctrkit.export.bundle.export_bundle`."""
    from ctrkit.export.bundle import export_bundle as export

    return export(checkpoint, fmt, out, **options)


def load_bundle(path, **options):
    """See :func:`ctrkit.export.loaded.load_bundle`."""
    from ctrkit.export.loaded import load_bundle as load

    return load(path, **options)


__all__ = ["FORMATS", "MANIFEST_FILE", "export_bundle", "is_bundle", "load_bundle", "read_manifest"]
