"""Score exported artifacts in a fresh process with their runtime only (no ctrkit): the export tests run it.

``python score_bundles.py FORMAT JOBS.json``: ``JOBS.json`` lists ``{"bundle", "inputs", "out"}``;
``inputs`` is an ``.npz`` of the graph's input arrays by input name. For each job the artifact is
loaded with onnxruntime (``onnx``), ``torch.jit.load`` (``torchscript``) or ``tf.saved_model.load``
(``savedmodel``) and scores the rows twice: as one batch, and in batches of 7 rows (another batch
size). ``out`` gets ``{"full": [B], "chunked": [B]}`` as ``.npz`` (plus the opset found in an ONNX
file). Last, ``JOBS.json.done`` records the modules of ctrkit that were imported (none expected).
"""

import json
import sys

import numpy as np

CHUNK = 7


def onnx_scorer(bundle, manifest):
    import onnx
    import onnxruntime as ort

    path = f"{bundle}/{manifest['artifact']}"
    opset = next(o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx"))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    output = manifest["output"]["name"]
    return (lambda arrays: session.run([output], arrays)[0]), {"opset": opset}


def torchscript_scorer(bundle, manifest):
    import torch

    module = torch.jit.load(f"{bundle}/{manifest['artifact']}", map_location="cpu").eval()
    names = [t["name"] for t in manifest["inputs"]]

    def score(arrays):
        with torch.inference_mode():
            return module(*(torch.from_numpy(arrays[name]) for name in names)).numpy()

    return score, {}


def savedmodel_scorer(bundle, manifest):
    import tensorflow as tf

    serve = tf.saved_model.load(f"{bundle}/{manifest['artifact']}").signatures["serving_default"]
    output = manifest["output"]["name"]
    return (lambda arrays: serve(**{k: tf.constant(v) for k, v in arrays.items()})[output].numpy()), {}


def main(fmt, jobs_file):
    opener = {"onnx": onnx_scorer, "torchscript": torchscript_scorer, "savedmodel": savedmodel_scorer}[fmt]
    for job in json.load(open(jobs_file)):
        manifest = json.load(open(f"{job['bundle']}/manifest.json"))
        score, extra = opener(job["bundle"], manifest)
        with np.load(job["inputs"]) as archive:
            arrays = {t["name"]: archive[t["name"]].astype(t["dtype"]) for t in manifest["inputs"]}
        rows = len(arrays["sparse"])
        full = score(arrays)
        chunked = np.concatenate([score({k: v[s:s + CHUNK] for k, v in arrays.items()}) for s in range(0, rows, CHUNK)])
        np.savez(job["out"], full=full, chunked=chunked, **extra)
    imported = sorted(name for name in sys.modules if name == "ctrkit" or name.startswith("ctrkit."))
    json.dump({"ctrkit_modules": imported}, open(jobs_file + ".done", "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
