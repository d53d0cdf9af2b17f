"""``--max-accuracy-drop``: the searched plan against the best uniform ``--rank`` that meets the same drop, on
models trained here on real data that ships in a package (scikit-learn's digits): a classifier (examples/digits.py's
CNN; ONNX, TorchScript, ``.pt2``) and a non-classifier (a denoiser: noisy digit in, clean digit out; ONNX,
metric ``rel_l2`` with D as its ceiling).

For each model and D in 0.005, 0.01, 0.02 and the default (D = 0.01 with ``--data`` and no rank option; the
classifier's TorchScript and ``.pt2`` at D = 0.01 only) it
prints the chosen plan's speed-up at 1 thread batch 1 (the search's own measurement, with its interval) and at
batch 32 (throughput), parameters kept, the metric before/after (held-out, measured on the returned file), plans
measured and wall time; then, for ranks 1…4 converted uniformly (calibrated on the same samples), the same
figures, and the best uniform rank meeting D (the fastest measured one whose drop is within D and that is
faster than the original). Speed-ups are measured in one run side by side with the original; the machine is
shared and noisy: two plans within each other's interval are a tie.

Usage: python benchmarks/search.py [--quick]    (--quick: ONNX classifier only, D 0.01)
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))

from digits import data, train  # noqa: E402

import converter  # noqa: E402

DROPS: list[float | None] = [0.005, 0.01, 0.02, None]  # None: the default with --data
BATCH = 32
COMMON = {"throughput_batch": BATCH, "latency_runs": 30}


class Denoiser(nn.Module):
    """A non-classifier: a noisy 16×16 digit in, the clean digit out."""

    def __init__(self, w: int = 32) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, w, 3, padding=1)
        self.c2 = nn.Conv2d(w, w, 3, padding=1)
        self.c3 = nn.Conv2d(w, w, 3, padding=1)
        self.c4 = nn.Conv2d(w, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.c1(x))
        y = F.relu(self.c2(y))
        y = F.relu(self.c3(y))
        return x - self.c4(y)


def train_denoiser(epochs: int = 25) -> tuple[Denoiser, np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    xtr, _, xte, _ = data()
    g = torch.Generator().manual_seed(1)
    ntr = xtr + 0.3 * torch.randn(xtr.shape, generator=g)
    nte = xte + 0.3 * torch.randn(xte.shape, generator=g)
    model = Denoiser()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(epochs):
        for i in range(0, len(ntr), 64):
            loss = F.mse_loss(model(ntr[i:i + 64]), xtr[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        err = F.mse_loss(model(nte), xte).item() / F.mse_loss(nte, xte).item()
    print(f"denoiser: test MSE {err:.2f} of the noisy input's")
    return model, ntr.numpy(), nte.numpy()


def export(model: nn.Module, x: torch.Tensor, folder: Path, stem: str) -> dict[str, Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:1],), folder / f"{stem}.onnx", dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}})
        torch.jit.save(torch.jit.script(model), str(folder / f"{stem}.pt"))
        ep = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        torch.export.save(ep, str(folder / f"{stem}.pt2"))
    return {"onnx": folder / f"{stem}.onnx", "torchscript": folder / f"{stem}.pt", "pt2": folder / f"{stem}.pt2"}


def row(name: str, r: converter.Report, wall: float, extra: str = "") -> dict:
    acc = r.accuracy
    metric = acc.metric if acc is not None else "?"
    before = acc.original if acc is not None else None
    after = None
    if acc is not None:
        after = {"calibrated": acc.calibrated, "data_free": acc.data_free, "finetuned": acc.finetuned}[acc.kept]
    if r.search is not None:
        metric = r.search.metric
        before = r.search.original if r.search.original is not None else before
        chosen = next((p for p in r.search.plans if p.chosen), None)
        if chosen is not None:
            after = chosen.metric
            extra += f" {chosen.step} plan {chosen.plan}: {', '.join(chosen.options)}"
        elif not r.converted_layers:
            after = 0.0 if metric == "rel_l2" else before
    lat = r.latency
    sp1 = f"{lat.speedup:.2f} ({lat.speedup_low:.2f}–{lat.speedup_high:.2f})" if lat else "1.00 (unchanged)"
    spb = f"{lat.throughput.speedup:.2f}" if lat and lat.throughput else "—"
    share = f"{r.params.converted / r.params.original:.0%}" if r.params.original and r.params.converted else "—"
    plans = len(r.search.plans) if r.search is not None else "—"
    fmt = (lambda v: "—" if v is None else f"{v:.4f}") if metric == "rel_l2" else \
        (lambda v: "—" if v is None else f"{100 * v:.1f} %")
    print(f"| {name} | {sp1} | {spb} | {share} | {fmt(before)} → {fmt(after)} | {plans} | {wall:.0f} s |{extra}",
          flush=True)
    drop = None
    if before is not None and after is not None:
        drop = after if metric == "rel_l2" else before - after
    faster = bool(lat and lat.speedup_low > 1.0)
    return {"speedup": lat.speedup if lat else 1.0, "drop": drop, "faster": faster}


def run(src: Path, out: Path, **options) -> tuple[converter.Report, float]:
    t0 = time.perf_counter()
    r = converter.convert(src, out, **options, **COMMON).report
    return r, time.perf_counter() - t0


def bench(title: str, src: Path, data_npz: Path, eval_npz: Path, tmp: Path, drops: list[float | None],
          extra: dict, ranks: tuple[int, ...] = (1, 2, 3, 4)) -> None:
    print(f"\n### {title}\n")
    print("| run | speed-up b1 (95 % interval) | speed-up b32 | params kept | metric before → after | plans "
          "| wall |")
    print("|---|---|---|---|---|---|---|")
    uniform = {}
    for k in ranks:
        r, wall = run(src, tmp / f"u{k}{src.suffix}", rank=k, data=data_npz, eval=eval_npz, **extra)
        uniform[k] = row(f"`--rank {k}`", r, wall)
    for d in drops:
        opts = {} if d is None else {"max_accuracy_drop": d}
        r, wall = run(src, tmp / f"s{src.suffix}", data=data_npz, eval=eval_npz, **opts, **extra)
        res = row("default (`--data`, D = 0.01)" if d is None else f"`--max-accuracy-drop {d}`", r, wall)
        bound = 0.01 if d is None else d
        ok = {k: u for k, u in uniform.items() if u["drop"] is not None and u["drop"] <= bound + 1e-9
              and u["faster"]}
        best = max(ok.items(), key=lambda kv: kv[1]["speedup"], default=None)
        verdict = "no uniform rank meets D" if best is None else (
            f"best uniform: rank {best[0]} at {best[1]['speedup']:.2f}× → search/uniform "
            f"{res['speedup'] / best[1]['speedup']:.2f}")
        print(f"|  ↳ {verdict} | | | | | | |", flush=True)


def main() -> None:
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        xtr, _, xte, yte = data()
        clf, _, _ = train()
        files = export(clf, xte, tmp, "digits")
        np.savez(tmp / "calib.npz", inputs=xtr[:256].numpy())
        np.savez(tmp / "test.npz", inputs=xte.numpy(), labels=yte.numpy())
        with torch.no_grad():
            print(f"digits classifier: test top-1 {(clf(xte).argmax(1) == yte).float().mean().item():.3f}")
        formats = ["onnx"] if quick else ["onnx", "torchscript", "pt2"]
        for fmt in formats:
            extra = {"input_shape": "x=1x1x16x16"} if fmt == "torchscript" else {}
            # every D on ONNX; TorchScript and .pt2 (torch's CPU kernels) at the default's D
            drops = DROPS if fmt == "onnx" and not quick else [0.01]
            bench(f"digits classifier, {fmt} (top-1 on 397 labelled test images; 256 unlabeled calibration "
                  "samples)", files[fmt], tmp / "calib.npz", tmp / "test.npz", tmp, drops, extra)
        if quick:
            return
        den, ntr, nte = train_denoiser()
        dfiles = export(den, torch.from_numpy(nte), tmp, "denoiser")
        np.savez(tmp / "dcalib.npz", inputs=ntr[:256])
        np.savez(tmp / "dtest.npz", inputs=nte)
        bench("digits denoiser, onnx (rel_l2 to the original's output on 397 test images, D its ceiling)",
              dfiles["onnx"], tmp / "dcalib.npz", tmp / "dtest.npz", tmp, DROPS, {"search_metric": "rel_l2"})


if __name__ == "__main__":
    main()
