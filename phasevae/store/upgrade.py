"""``phasevae upgrade``: rewrite a run directory of an earlier format in the current
one.

Format 0 (phasevae before digests) wrote spec.toml, meta.json and metrics.parquet
without digests; format 1 gave each file its digest but named no run. The current
format (:data:`phasevae.store.FORMAT`) names the run in every file, and the store
refuses a file without its digest or of another run. Upgrading verifies every digest
an older file has, takes the files that have none as they are (the user vouches for
them: upgrade only runs you trust), gives the run a new id and writes every file
anew with the same values (metrics.parquet keeps its bytes when it has a content
digest). spec.toml is written last, so a run killed during an upgrade is still of the
older format and a rerun upgrades it again.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from phasevae.safeio import KIB, META_BYTES, SPEC_BYTES, check_file, read_text
from phasevae.spec import SpecError, parse_toml, spec_from_dict
from phasevae.store import (
    MAX_ANALYSIS_BYTES,
    RunDir,
    RunDirError,
    canonical_json,
    digest_record,
    file_sha256,
    frame_digest,
    sha256_text,
)
from phasevae.store.runmeta import RunMeta

FORMAT_1_HEADER = "# phasevae run spec, sha256 "


def upgrade(path: str | Path) -> list[str] | None:
    """Upgrade the run at ``path``; None when it is already current, else the names
    of the files taken as they were (they had no digest to verify them by).

    Raises:
      RunDirError: not a run, a damaged file, checkpoints of an older format, or a
        run in use."""
    run = RunDir(path).existing()
    with run.lock():
        try:
            run.run_id()
            return None
        except RunDirError as e:
            if "earlier phasevae" not in str(e):
                raise
        if run.checkpoints.exists():
            raise RunDirError(
                f"{run.checkpoints.dir} holds checkpoints of an earlier phasevae, "
                "which upgrade does not rewrite: finish or extend the run with that "
                f"version first, or move {run.checkpoints.dir} out of the run (it "
                "then cannot be continued)"
            )
        vouched: list[str] = []
        text = _old_spec(run, vouched)
        meta = _old_json(run, run.meta_file, META_BYTES, vouched)
        run.id = secrets.token_hex(8)
        if run.metrics_file.exists():
            _upgrade_metrics(run, vouched)
        if run.meta_file.exists():
            run.write_meta(RunMeta.from_json(meta, str(run.meta_file)))
        analysis = run.path / "analysis.json"
        if analysis.exists():
            doc = _old_json(run, analysis, MAX_ANALYSIS_BYTES, vouched)
            identity = {"id": run.id, "spec": sha256_text(text)}
            identity["metrics"] = run._digests(run.metrics_file)[0]
            run.write_analysis(doc, identity)
        run.write_spec(text, run.id)  # last: the run is now of the current format
        return vouched


def _old_spec(run: RunDir, vouched: list[str]) -> str:
    """spec.toml's TOML text, its format-1 digest verified."""
    check_file(run.spec_file, "run spec", error=RunDirError)
    text = read_text(run.spec_file, "run spec", SPEC_BYTES, RunDirError)
    head, _, body = text.partition("\n")
    if head.startswith(FORMAT_1_HEADER):
        if head[len(FORMAT_1_HEADER) :] != sha256_text(body):
            raise _damaged(run.spec_file, "its digest does not match")
    else:
        body = text
        vouched.append(run.spec_file.name)
    try:
        spec_from_dict(parse_toml(body, str(run.spec_file)), str(run.spec_file))
    except SpecError as e:
        raise _damaged(run.spec_file, str(e)) from None
    return body


def _old_json(
    run: RunDir, path: Path, limit: int, vouched: list[str]
) -> dict[str, Any]:
    """A JSON object's content ({} when the file is missing), its digest verified
    when it has one; the run id of a half-finished upgrade dropped."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(read_text(path, path.name, limit, RunDirError))
    except (ValueError, RecursionError) as e:
        raise _damaged(path, f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _damaged(path, "not a JSON object")
    if "digest" in doc:
        if doc.pop("digest") != sha256_text(canonical_json(doc)):
            raise _damaged(path, "its digest does not match")
    else:
        vouched.append(path.name)
    doc.pop("run", None)
    return doc


def _upgrade_metrics(run: RunDir, vouched: list[str]) -> None:
    """Record metrics.parquet's digests under the run's new id; a file without a
    content digest is written again with one."""
    path = run.metrics_file
    check_file(path, "run metrics", error=RunDirError)
    record = digest_record(path)
    if record.exists():
        doc = json.loads(read_text(record, "run digest", 4 * KIB, RunDirError))
        known = doc.get("sha256", []) if isinstance(doc, dict) else doc
        if file_sha256(path) not in known:
            raise _damaged(path, "its digest does not match")
    else:
        vouched.append(record.name)
    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except Exception as e:  # pyarrow raises many types for a damaged file
        raise _damaged(path, f"{type(e).__name__}: {e}") from None
    digest = (table.schema.metadata or {}).get(b"phasevae_digest")
    df = table.to_pandas()
    if digest is None:
        vouched.append(path.name)
        record.unlink(missing_ok=True)
        run.write_metrics(df)
    elif digest.decode() != frame_digest(df):
        raise _damaged(path, "its digest does not match")
    else:
        run.record_digests(path, [file_sha256(path)])


def _damaged(path: Path, why: str) -> RunDirError:
    return RunDirError(f"{path} is damaged ({why}); upgrade does not vouch for it")
