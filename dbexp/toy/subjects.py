"""Toy subjects: one specific object each, with a surface pattern the toy base model never saw,
photographed 4 times in varied contexts — a DreamBench-style folder (``<root>/<subject>/*.png`` and
``prompts_and_classes.txt``) that ``data.dreambench_root`` reads like the real one.

``python -m dbexp.toy.subjects --out DIR`` writes it (the package ships it in
``dbexp/assets/toy/subjects``; ``conf/data/toy.yaml`` points there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dbexp.atomic_files import atomic_path
from dbexp.dreambench import PROMPT_FILE
from dbexp.toy.world import Scene, render

#: name → what the object is (shape = class, colour, pattern) — fixed in every photo.
SUBJECTS = {
    "checkered_circle": {"shape": "circle", "color": "green", "pattern": "checkered"},
    "striped_square": {"shape": "square", "color": "blue", "pattern": "striped"},
    "dotted_triangle": {"shape": "triangle", "color": "orange", "pattern": "dotted"},
}
#: The contexts of the photos: what changes between them (position, background, a little jitter). Always
#: large: a small object's pattern cells are ~2 px, finer than the toy VAE draws (factor 2 latents).
CONTEXTS = (
    {"size": "large", "position": "middle", "background": "white", "jitter_x": 0.01, "jitter_y": -0.03},
    {"size": "large", "position": "left", "background": "gray", "jitter_x": 0.03, "jitter_y": 0.05},
    {"size": "large", "position": "right", "background": "black", "jitter_x": -0.02, "jitter_y": -0.06},
    {"size": "large", "position": "left", "background": "white", "jitter_x": -0.04, "jitter_y": 0.08},
)
RESOLUTION = 32


def subject_scenes(name: str) -> list[Scene]:
    return [Scene(**SUBJECTS[name], **context) for context in CONTEXTS]


def write_subjects(root: Path) -> Path:
    """The subjects' photos and the class table, written whole (into a fresh folder) or not at all."""
    with atomic_path(root) as staging:
        for name in SUBJECTS:
            (staging / name).mkdir(parents=True)
            for i, scene in enumerate(subject_scenes(name)):
                render(scene, RESOLUTION).save(staging / name / f"{i:02d}.png")
        table = "\n".join(f"{name},{spec['shape']}" for name, spec in SUBJECTS.items())
        (staging / PROMPT_FILE).write_text(f"Classes\n\nsubject_name,class\n{table}\n")
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dbexp.toy.subjects", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="a folder that does not exist yet")
    args = ap.parse_args(argv)
    if args.out.exists():
        print(f"--out {args.out}: exists; give a new folder (nothing is overwritten)", file=sys.stderr)
        return 2
    print(f"toy subjects: {write_subjects(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
