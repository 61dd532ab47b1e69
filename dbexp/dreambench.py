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


#: DreamBench's live subjects (its 9 dogs and cats) get the live-subject prompt list.
LIVE_CLASSES = frozenset({"dog", "cat"})


def read_prompt_templates(root: str | Path = BUNDLED_ROOT) -> dict[str, list[str]]:
    """The 25 evaluation prompt templates for ``object`` and ``live`` subjects, as
    ``"a {token} {class_noun} in the jungle"`` templates (the file writes them as Python ``format`` calls)."""
    sets: dict[str, list[str]] = {}
    current = None
    for line in (Path(root) / PROMPT_FILE).read_text(encoding="utf-8").splitlines():
        if line.strip() == "Object Prompts":
            current = sets.setdefault("object", [])
        elif line.strip() == "Live Subject Prompts":
            current = sets.setdefault("live", [])
        elif current is not None and ".format(unique_token, class_token)" in line:
            template = line.strip().split("'")[1]
            current.append(template.replace("{0}", "{token}").replace("{1}", "{class_noun}"))
    return sets


def prompt_set_for(class_noun: str) -> str:
    """``live`` for DreamBench's live subjects (dogs, cats), ``object`` for everything else."""
    return "live" if class_noun.strip().lower() in LIVE_CLASSES else "object"


def prompt_vocabulary_text(root: str | Path = BUNDLED_ROOT) -> str:
    """The whole prompt file, as the word source for tokenizers dbexp builds itself."""
    return (Path(root) / PROMPT_FILE).read_text(encoding="utf-8")
