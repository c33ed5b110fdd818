"""Is the analysis unchanged by a refactor (issue 29)? Re-analyses every committed run
under results/ with the phasevae found on the path and writes {run: analysis} as
canonical JSON; ``compare`` says which runs differ between two such files (bit for
bit: the floats as JSON writes them).

    PYTHONPATH=OLD_CHECKOUT python studies/unchanged.py dump before.json
    python studies/unchanged.py dump after.json
    python studies/unchanged.py compare before.json after.json

It works with the flat layout (``phasevae.analysis.analyze``) and with packages by
stage (``phasevae.analysis.curves.analyze``).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "results"


def analyze_fn():
    module = importlib.import_module("phasevae.analysis")
    if hasattr(module, "analyze"):
        return module.analyze
    return importlib.import_module("phasevae.analysis.curves").analyze


def dump(out: str) -> None:
    from phasevae.store import RunDir

    analyze, found = analyze_fn(), {}
    for spec in sorted(ROOT.rglob("spec.toml")):
        run = RunDir(spec.parent)
        meta = run.meta()
        if not isinstance(meta, dict):  # the typed record (since RunMeta)
            meta = meta.to_json() if meta else {}
        if meta.get("status") != "complete":
            continue
        name = spec.parent.relative_to(ROOT).as_posix()
        try:
            doc = analyze(run.metrics(), meta["spectrum"], run.spec().model.latent_dim)
        except ValueError as e:  # too few points: the same refusal both ways
            doc = {"refused": str(e)}
        if hasattr(doc, "to_json"):  # the typed record: its document, unversioned
            doc = {k: v for k, v in doc.to_json().items() if k != "format_version"}
        found[name] = json.loads(json.dumps(doc, sort_keys=True, default=str))
        print(name, file=sys.stderr)
    Path(out).write_text(json.dumps(found, sort_keys=True, indent=0))
    print(f"{len(found)} runs re-analysed into {out}")


def compare(a: str, b: str) -> int:
    """Runs in both files that differ (runs in one only are listed apart)."""
    before, after = json.loads(Path(a).read_text()), json.loads(Path(b).read_text())
    common = sorted(before.keys() & after.keys())
    differ = [k for k in common if before[k] != after[k]]
    print(f"{len(common)} runs in both: {len(differ)} differ")
    for k in differ:
        print("  differs:", k)
    for k in sorted(before.keys() ^ after.keys()):
        print("  in one file only:", k)
    return 1 if differ else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["dump"]:
        dump(sys.argv[2])
    elif sys.argv[1:2] == ["compare"]:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
