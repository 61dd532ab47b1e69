"""``python -m dbexp.cache ls|du|prune``: what the shared cache holds, how big it is, and removing entries.

The cache root is the one runs use: ``--cache-dir``, else ``$DBEXP_CACHE_DIR``, else
``outputs/cache`` under ``$DBEXP_ROOT`` or the current folder (``paths.cache_dir``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from filelock import FileLock

from dbexp import CONF_DIR
from dbexp.console import announce, format_bytes
from dbexp.errors import UserInputError, exit_on_user_error

KINDS = ("models", "class_images", "latents", "text", "trained")


@dataclass
class Entry:
    kind: str
    key: str
    path: Path
    size: int
    last_used: float
    detail: str


def default_cache_dir() -> Path:
    """``paths.cache_dir`` as a run composes it."""
    from hydra import compose, initialize_config_dir

    from dbexp.config import register_configs

    register_configs()

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train")
    return Path(cfg.paths.cache_dir)


def entries(root: Path) -> list[Entry]:
    found: list[Entry] = []
    for kind in KINDS:
        folder = root / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue  # temporary files of a write in progress
            found.append(
                Entry(
                    kind,
                    path.stem if path.is_file() else path.name,
                    path,
                    _size(path),
                    _last_used(path),
                    _detail(kind, path),
                )
            )
    return found


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _last_used(path: Path) -> float:
    manifest = path / "manifest.json"
    if manifest.is_file():
        stamp = json.loads(manifest.read_text()).get("last_used")
        if stamp:
            return datetime.fromisoformat(stamp).timestamp()
    return path.stat().st_mtime


def _detail(kind: str, path: Path) -> str:
    if kind == "class_images" and (path / "manifest.json").is_file():
        manifest = json.loads((path / "manifest.json").read_text())
        fields = manifest["fields"]
        return (
            f"{manifest['count']} × {fields['class_prompt']!r} @{fields['resolution']}px, "
            f"{fields['num_inference_steps']} steps, cfg {fields['guidance_scale']}, seed {fields['seed']}"
        )
    if kind == "trained" and (path / "manifest.json").is_file():
        manifest = json.loads((path / "manifest.json").read_text())
        return f"{manifest['metrics'].get('step', '?')} steps, from {manifest.get('source_run')}"
    if kind == "models":
        if (path / "dbexp_architecture.json").is_file():
            return "SD-architecture model built from config (model.pretrained=null)"
        return "tiny DINO + CLIP metric models built from config (eval.metrics=tiny)"
    return ""


def cmd_ls(root: Path, args) -> None:
    rows = [e for e in entries(root) if args.kind in (None, e.kind)]
    if not rows:
        print("(empty)")
    for kind in KINDS:
        group = [e for e in rows if e.kind == kind]
        if not group:
            continue
        print(f"{kind} ({len(group)}, {format_bytes(sum(e.size for e in group))})")
        shown = group if (args.all or kind in ("models", "class_images", "trained")) else []
        for e in shown:
            used = datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M")
            print(f"  {e.key:<26} {format_bytes(e.size):>10}  used {used}  {e.detail}")
        if not shown:
            print("  (one file per image or prompt; --all lists them)")


def cmd_du(root: Path, args) -> None:
    everything = entries(root)
    for kind in KINDS:
        group = [e for e in everything if e.kind == kind]
        print(f"{kind:<13} {len(group):>6} entries {format_bytes(sum(e.size for e in group)):>11}")
    print(f"{'total':<13} {len(everything):>6} entries {format_bytes(sum(e.size for e in everything)):>11}")


def cmd_prune(root: Path, args) -> None:
    if not (args.all or args.older_than is not None or args.key):
        raise UserInputError(
            "prune: say what to remove: --older-than DAYS, --key KEY, or --all (with --kind to narrow)"
        )
    cutoff = time.time() - args.older_than * 86400 if args.older_than is not None else None
    chosen = [
        e
        for e in entries(root)
        if args.kind in (None, e.kind)
        and (not args.key or e.key in args.key)
        and (cutoff is None or e.last_used < cutoff)
    ]
    freed = 0
    for e in chosen:
        print(f"{'would remove' if args.dry_run else 'removing'} {e.kind}/{e.key} ({format_bytes(e.size)})")
        if args.dry_run:
            continue
        freed += e.size
        if e.path.is_dir():
            with FileLock(e.path / ".lock") if e.kind == "class_images" else contextlib.nullcontext():
                shutil.rmtree(e.path)
            (e.path.parent / f"{e.path.name}.lock").unlink(missing_ok=True)
        else:
            e.path.unlink(missing_ok=True)
    print(
        f"{len(chosen)} entries, {format_bytes(sum(e.size for e in chosen))}"
        + (" (dry run)" if args.dry_run else " freed")
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m dbexp.cache", description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", type=Path, help="cache root (default: paths.cache_dir of a run)")
    sub = ap.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list entries (built models, class-image sets, trained weights; --all: every file)")
    ls.add_argument("--kind", choices=KINDS)
    ls.add_argument("--all", action="store_true")
    sub.add_parser("du", help="sizes per kind")
    prune = sub.add_parser("prune", help="remove entries")
    prune.add_argument("--kind", choices=KINDS)
    prune.add_argument("--key", nargs="+", help="remove these keys")
    prune.add_argument("--older-than", type=float, metavar="DAYS", help="remove entries unused for DAYS days")
    prune.add_argument("--all", action="store_true", help="remove everything (of --kind)")
    prune.add_argument("--dry-run", action="store_true", help="only say what would go")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    with exit_on_user_error():
        root = (args.cache_dir or default_cache_dir()).expanduser().resolve()
        announce(f"cache: {root}")
        {"ls": cmd_ls, "du": cmd_du, "prune": cmd_prune}[args.command](root, args)


if __name__ == "__main__":
    sys.exit(main())
