"""onnx_post stands alone: no module imports fxq or torch at load time, and `python -m onnx_post` checks and
verifies a real fxq FP8 file in a process where importing torch or fxq fails."""
import ast
import subprocess
import sys
from pathlib import Path

import torch

import fxq

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"torch", "fxq"}


def _module_level_imports(tree: ast.Module) -> set[str]:
    """Top-level package names imported outside any function or class body."""
    found, stack = set(), list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        stack.extend(ast.iter_child_nodes(node))
    return found


def test_no_onnx_post_module_imports_fxq_or_torch_at_module_level():
    files = sorted((ROOT / "onnx_post").rglob("*.py"))
    assert len(files) >= 15
    bad = {str(f.relative_to(ROOT)): sorted(_module_level_imports(ast.parse(f.read_text())) & FORBIDDEN)
           for f in files}
    assert {k: v for k, v in bad.items() if v} == {}


def test_scan_sees_imports_inside_try_and_if():
    tree = ast.parse("try:\n    import torch\nexcept ImportError:\n    pass\nif 1:\n    from fxq import ops\n"
                     "def f():\n    import numpy\n")
    assert _module_level_imports(tree) == {"torch", "fxq"}


class ReluMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(64, 64), torch.nn.Linear(64, 32)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_python_m_onnx_post_runs_without_torch_and_fxq(tmp_path):
    x = torch.randn(8, 64)
    qm = fxq.quantize(ReluMLP().eval(), x, [x, torch.randn(8, 64)], progress=False)
    path = qm.export_onnx(tmp_path / "mlp.onnx", dtype=torch.float16).path
    code = ("import sys; sys.modules['torch'] = None; sys.modules['fxq'] = None\n"
            "import runpy; sys.argv = ['onnx_post', *sys.argv[1:]]\n"
            "runpy.run_module('onnx_post', run_name='__main__')\n")
    run = subprocess.run([sys.executable, "-c", code, str(path), "--strict", "--verify"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "GEMMs: 2/2 ready" in run.stdout and ": finite" in run.stdout and "ReluQuantRewrite" in run.stdout
    no_torch = subprocess.run([sys.executable, "-c", code.replace("runpy.run_module", "import torch #")],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert no_torch.returncode != 0 and "ModuleNotFoundError" in no_torch.stderr  # the block is real
