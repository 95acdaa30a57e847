"""A reader's test: the code of each model file's modules can be read without opening another file but layers.py.

Inside every method of the nn.Module classes of the model files but ``__init__`` (which composes the model from
submodules, wherever their classes live), each call is to a submodule (``self.conv1(x)``), to a method, or to a
function that is defined in the same file, in ldm/layers.py, in torch or einops, or is a Python builtin. A speed device or helper living elsewhere (an in-place dialect, a weight cache) would fail this test: those
belong in ldm/fast.py, applied from outside the models."""
import ast
import builtins
from pathlib import Path

import pytest

LDM = Path(__file__).resolve().parents[1] / "ldm"
MODEL_FILES = ["vae.py", "vq.py", "unet.py", "transformer.py", "layers.py"]
ALLOWED_MODULES = ("ldm.layers", "torch", "einops", "math", "numbers", "dataclasses")


def imported_names(tree: ast.Module) -> dict[str, str]:
    """name -> the module it comes from, for `import x [as y]` and `from x import y [as z]`."""
    names = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = node.module
    return names


def called_roots(function: ast.FunctionDef) -> set[str]:
    """The first name of every call: `F.silu(x)` -> F, `check_indices(...)` -> check_indices, `self.x(...)` -> self."""
    roots = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            func = node.func
            while isinstance(func, (ast.Attribute, ast.Subscript, ast.Call)):
                func = func.value if not isinstance(func, ast.Call) else func.func
            if isinstance(func, ast.Name):
                roots.add(func.id)
    return roots


@pytest.mark.parametrize("name", MODEL_FILES)
def test_model_code_calls_only_its_own_file_layers_torch_and_einops(name):
    tree = ast.parse((LDM / name).read_text())
    imports = imported_names(tree)
    local = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    modules = [n for n in tree.body if isinstance(n, ast.ClassDef)
               and any(ast.unparse(b) in ("nn.Module", "LatentScaling", "PretrainedMixin") for b in n.bases)]
    assert modules, f"{name}: no nn.Module classes found"
    outside = []
    for cls in modules:
        for method in (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name != "__init__"):
            params = {a.arg for a in method.args.args + method.args.kwonlyargs}
            assigned = {t.id for n in ast.walk(method) if isinstance(n, (ast.Assign, ast.For, ast.comprehension))
                        for t in ast.walk(n.target if not isinstance(n, ast.Assign) else n.targets[0])
                        if isinstance(t, ast.Name)}
            for root in called_roots(method) - params - assigned - local - {"self", "cls", "super"}:
                source = imports.get(root)
                if source is None and hasattr(builtins, root):
                    continue
                if source is None or not source.startswith(ALLOWED_MODULES):
                    outside.append(f"{cls.name}.{method.name} calls {root} (from {source})")
    assert not outside, f"{name}: " + "; ".join(outside)


def test_the_speed_devices_live_in_fast_py_only():
    """Weight caches keyed on storage, in-place activations and layout branches. (In-place updates of state, like
    the VQ codebook's EMA buffers, are the algorithm and stay in vq.py.)"""
    for name in MODEL_FILES:
        text = (LDM / name).read_text()
        for device in (".data_ptr(", "._version", "inplace=", "channels_last", "is_current_stream_capturing"):
            assert device not in text, f"ldm/{name} uses {device!r}; speed devices belong in ldm/fast.py"
