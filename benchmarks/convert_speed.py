"""Conversion speed and peak memory on a ResNet-50-sized model (issue 2's target).

Prints, for ONNX, TorchScript and .pt2:
  - load+save: reading the file into the adapter and writing it back (no conversion),
  - convert:   load, find convs, plan (both orders, SVDs), rewrite, save — `convert(verify=False)`,
  - the ratio convert / (load+save)       (target: at most 2),
  - ONNX only: plain `onnx.load` + `onnx.save` of the same file, and the ratio convert / plain (target: ≤ 1.5),
  - peak RSS of each, above the process's baseline after imports, as a multiple of the file size (target: < 3).
Each measurement runs in a fresh subprocess; its peak is VmHWM after resetting the high-water mark just
before the step (Linux), minus the RSS at that point (imports excluded). Timings are the median of N runs,
interleaved, because this machine is noisy.

Each child imports what its step needs before the clock starts (converter and the format's adapter; onnx for
the plain baseline), so imports are not counted on either side.

Usage: python benchmarks/convert_speed.py [--runs 3] [--formats onnx,torchscript,pt2] [--rank 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, sys, time
from pathlib import Path
import converter
from converter.formats import detect_format
mode, src, out, rank = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
adapter = detect_format(src)
converter.convert  # the pipeline's own lazy imports, outside the clock like onnx's below
if mode == "plain":
    import onnx
base = status_kb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current RSS
    f.write("5")
t0 = time.perf_counter()
if mode == "plain":  # the baseline: what a user's own onnx.load + onnx.save of the same file costs
    onnx.save(onnx.load(str(src)), str(out))
elif mode == "loadsave":
    work = out.parent / "work"; work.mkdir(exist_ok=True)
    model = adapter.load(src, work)
    adapter.save(model, out)
else:
    converter.convert(src, out, rank=rank, verify=False)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "peak_above_base_kb": status_kb("VmHWM") - base}))
"""


def build(fmt: str, folder: Path) -> Path:
    import torch

    sys.path.insert(0, str(HERE))
    from _models import ResNet50

    torch.manual_seed(0)
    model = ResNet50().eval()
    x = torch.randn(1, 3, 224, 224)
    if fmt == "onnx":
        path = folder / "resnet50.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "batch"}})
    elif fmt == "pt2":
        path = folder / "resnet50.pt2"
        program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, str(path))
    else:
        path = folder / "resnet50.pt"
        torch.jit.save(torch.jit.script(model), str(path))
    return path


def run(mode: str, src: Path, folder: Path, rank: int) -> dict:
    out = folder / f"out-{mode}{src.suffix}"
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(out), str(rank)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--formats", default="onnx,torchscript,pt2")
    ap.add_argument("--rank", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for fmt in args.formats.split(","):
            src = build(fmt, folder)
            size = src.stat().st_size
            ls, cv, pl = [], [], []
            for _ in range(args.runs):  # interleaved: the machine's noise hits both alike
                ls.append(run("loadsave", src, folder, args.rank))
                cv.append(run("convert", src, folder, args.rank))
                if fmt == "onnx":
                    pl.append(run("plain", src, folder, args.rank))
            t_ls = statistics.median(r["seconds"] for r in ls)
            t_cv = statistics.median(r["seconds"] for r in cv)
            m_ls = max(r["peak_above_base_kb"] for r in ls) * 1024
            m_cv = max(r["peak_above_base_kb"] for r in cv) * 1024
            print(f"[{fmt}] model {size / 2**20:.1f} MiB, {args.runs} runs, rank {args.rank}")
            print(f"  load+save  {t_ls:7.3f} s   peak RSS +{m_ls / 2**20:7.1f} MiB ({m_ls / size:.2f}× model)")
            print(f"  convert    {t_cv:7.3f} s   peak RSS +{m_cv / 2**20:7.1f} MiB ({m_cv / size:.2f}× model)")
            print(f"  ratio convert / (load+save) = {t_cv / t_ls:.2f}   (target ≤ 2)")
            if pl:
                t_pl = statistics.median(r["seconds"] for r in pl)
                print(f"  onnx.load+onnx.save {t_pl:7.3f} s")
                print(f"  ratio convert / (onnx.load + onnx.save) = {t_cv / t_pl:.2f}   (target ≤ 1.5)")


if __name__ == "__main__":
    main()
