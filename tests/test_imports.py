"""vitlab never imports torchvision or mmcv: their compiled operators do not load with a CPU-only torch.

The timm tests put a stand-in torchvision on ``sys.path``, so a stray import would not fail there; this
scan of the sources catches it wherever it is written.
"""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "vitlab"
FORBIDDEN = ("torchvision", "mmcv", "mmdet", "mmseg", "mmpose")


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            roots.add(str(node.args[0].value).split(".")[0])
    return roots


def test_no_module_imports_torchvision_or_mmcv():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    offenders = {str(f.relative_to(SRC)): sorted(_imported_roots(f) & set(FORBIDDEN)) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}
