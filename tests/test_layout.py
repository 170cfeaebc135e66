"""The floor plan holds: imports flow down the stages, no name is used twice, at most twelve
modules sit directly in ``handjax/``, and matplotlib is imported in one place (plus the
console's backend setting). Read from the source with ``ast``; nothing is imported."""
import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "handjax"

# The stages, bottom up: a module may import its own stage and the ones below it.
STAGES = [
    ("errors", "console", "cache"),            # what every stage may use
    ("metrics", "losses", "ordinal"),          # the base layer: objectives, study metrics
    ("data",),
    ("models",),
    ("config",),                               # names the models and data it configures
    ("evaluation",),
    ("report",),
    ("train",),                                # a run: fit, then evaluate and report
    ("model",),                                # a finished run's model, loaded
    # the commands and their one handler (cli.command); serve is the web page's command
    ("cli", "predict", "validate", "compare", "tune", "serve", "__init__"),
    ("bench",),
]
RANK = {name: i for i, names in enumerate(STAGES) for name in names}


def modules():
    return [p for p in ROOT.rglob("*.py") if "pages" not in p.parts]


def stage(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported(path: Path) -> set[str]:
    """The first part after ``handjax.`` of every handjax import in ``path``, at any depth
    (function-level imports count: they are arrows too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "handjax":
                out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names
                    if a.name.startswith("handjax.")}
    return out


def test_every_module_has_a_stage():
    assert {stage(p) for p in modules()} <= set(RANK)


def test_imports_flow_down_the_stages():
    up = [(str(p.relative_to(ROOT)), name) for p in modules() for name in imported(p)
          if name in RANK and RANK[name] > RANK[stage(p)]]
    assert up == [], f"imports running back up a stage: {up}"


def test_at_most_twelve_modules_directly_in_handjax_and_no_name_twice():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= 12, top
    names = Counter(p.stem for p in modules() if p.stem not in ("__init__", "__main__"))
    assert [n for n, c in names.items() if c > 1] == []


def test_matplotlib_is_imported_by_the_plots_and_the_console_only():
    def uses(path):
        return any(isinstance(n, (ast.Import, ast.ImportFrom)) and "matplotlib" in (
            getattr(n, "module", None) or " ".join(a.name for a in n.names))
            for n in ast.walk(ast.parse(path.read_text())))
    users = {str(p.relative_to(ROOT)) for p in modules() if uses(p)}
    assert "report/plots.py" in users and users <= {"console.py", "report/plots.py"}, users
