"""The DreamBench folder layout: one folder per subject plus ``prompts_and_classes.txt``."""

from __future__ import annotations

from pathlib import Path

#: The copy shipped with dbexp: one subject (``dog``) and the dataset's credits and prompt file.
BUNDLED_ROOT = Path(__file__).parent / "assets" / "dreambench"
PROMPT_FILE = "prompts_and_classes.txt"


def read_classes(root: str | Path) -> dict[str, str]:
    """Subject name → class noun, from the ``subject_name,class`` table of the prompt file."""
    classes: dict[str, str] = {}
    in_table = False
    for line in (Path(root) / PROMPT_FILE).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line == "subject_name,class":
            in_table = True
        elif in_table and "," in line:
            subject, noun = line.split(",", 1)
            classes[subject.strip()] = noun.strip()
        elif in_table and line:
            break
    return classes


def prompt_vocabulary_text(root: str | Path = BUNDLED_ROOT) -> str:
    """The whole prompt file, as the word source for tokenizers dbexp builds itself."""
    return (Path(root) / PROMPT_FILE).read_text(encoding="utf-8")
