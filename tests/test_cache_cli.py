"""``python -m dbexp.cache``: list, sizes, prune (by kind, key, age; dry run)."""

import os
import re
import time
from pathlib import Path

import pytest

from dbexp.cache import entries, main
from dbexp.train import run


@pytest.fixture
def filled(make_cfg, tmp_path) -> Path:
    cache = tmp_path / "cache"
    run(make_cfg(f"paths.cache_dir={cache}", "reuse_trained=true"))
    return cache


def test_ls_and_du(filled, capsys):
    main(["--cache-dir", str(filled), "ls"])
    out = capsys.readouterr().out
    assert f"cache: {filled}" in out
    assert "class_images (1," in out and "2 × 'a photo of dog' @32px" in out
    assert "models (2," in out and "latents (7," in out and "text (2," in out
    assert "SD-architecture model built from config" in out and "metric models built from config" in out
    assert "trained (1," in out and "4 steps, from " in out
    assert re.search(r"\d\.\d [KMG]iB", out) and not re.search(r"\d [KMG]B\b", out)  # binary units, IEC names
    main(["--cache-dir", str(filled), "du"])
    total = sum(p.stat().st_size for p in filled.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    listed = sum(e.size for e in entries(filled))
    assert abs(listed - total) <= 4096  # lock files are empty
    assert "total" in capsys.readouterr().out


def test_prune_by_kind_key_age_and_dry_run(filled, capsys):
    before = {e.kind: e for e in entries(filled)}
    main(["--cache-dir", str(filled), "prune", "--kind", "latents", "--all", "--dry-run"])
    assert len([e for e in entries(filled) if e.kind == "latents"]) == 7
    main(["--cache-dir", str(filled), "prune", "--kind", "latents", "--all"])
    assert not [e for e in entries(filled) if e.kind == "latents"]
    main(["--cache-dir", str(filled), "prune", "--key", before["class_images"].key])
    assert not [e for e in entries(filled) if e.kind == "class_images"]
    main(["--cache-dir", str(filled), "prune", "--kind", "trained", "--all"])
    assert not [e for e in entries(filled) if e.kind == "trained"]
    old = time.time() - 10 * 86400
    for path in (filled / "text").iterdir():
        os.utime(path, (old, old))
    main(["--cache-dir", str(filled), "prune", "--older-than", "5"])
    kinds = {e.kind for e in entries(filled)}
    assert kinds == {"models"}  # text entries were unused for 10 days; the model was just used


def test_prune_needs_a_selector(filled, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--cache-dir", str(filled), "prune"])
    assert exit_.value.code == 2 and "say what to remove" in capsys.readouterr().err
