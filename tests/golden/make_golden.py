"""Regenerate ``smoke_confusions.json``: the smoke cells' confusion matrices.

    python tests/golden/make_golden.py

Only for a change that means to alter results (say so in the commit message)."""
import json
import sys
import tempfile
from pathlib import Path

from handjax import config
from handjax.train import run as train


def main() -> None:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model, loss in [("vgg16", "categorical"), ("vgg19", "custom")]:
            spec = config.parse_run(config.cell(model, loss, "smoke"))
            results = train.run(spec, Path(tmp) / f"{model}_{loss}")
            out[f"{model}_{loss}"] = {k: v["confusion"] for k, v in results["decisions"].items()}
    path = Path(__file__).with_name("smoke_confusions.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
