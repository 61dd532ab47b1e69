"""A synthetic text-to-image world, deterministic by seed.

A scene is one object — a shape (the class: circle, square, triangle) with a colour, a size, a
position, a surface pattern — on a plain background. Its caption follows one grammar::

    a photo of a [small|large] [<colour>] <shape> [on the left|in the middle|on the right] [on a <colour> background]

where bracketed parts may be left out (``drop``), so a model learns what an unnamed attribute looks
like on average. The base model's world has plain objects only; patterns (checkered, striped, dotted)
are what toy subjects have and the base model never saw. Images are drawn at 8× and reduced with a
box filter, so edges are anti-aliased at any size.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128), "blue": (90, 130, 200)}
SIZES = ("small", "large")
POSITIONS = ("left", "middle", "right")
PATTERNS = ("plain", "checkered", "striped", "dotted")
#: Attributes a caption can name, in caption order (the shape is always named).
ATTRIBUTES = ("size", "color", "shape", "position", "background")
POSITION_WORDS = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
WORDS = sorted(
    {"a", "photo", "of", "on", "the", "in", "background", *SHAPES, *COLORS, *BACKGROUNDS, *SIZES}
    | {w for phrase in POSITION_WORDS.values() for w in phrase.split()}
    | set(PATTERNS)
)


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    size: str
    position: str
    background: str
    pattern: str = "plain"
    jitter_x: float = 0.0  # offsets within the position's region, as fractions of the image
    jitter_y: float = 0.0

    def labels(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("jitter")}


def sample_scene(rng: random.Random, pattern: str = "plain", **fixed: str) -> Scene:
    """A random scene; ``fixed`` pins attributes (e.g. ``shape="circle"``). The object's colour never
    equals the background's."""
    attrs = {
        "shape": rng.choice(SHAPES),
        "size": rng.choice(SIZES),
        "position": rng.choice(POSITIONS),
        "background": rng.choice(list(BACKGROUNDS)),
    }
    attrs.update({k: v for k, v in fixed.items() if k != "color"})
    colors = [c for c in COLORS if c != attrs["background"]]
    attrs["color"] = fixed.get("color") or rng.choice(colors)
    return Scene(**attrs, pattern=pattern, jitter_x=rng.uniform(-0.06, 0.06), jitter_y=rng.uniform(-0.12, 0.12))


def caption(scene: Scene, named: set[str] | None = None) -> str:
    """The scene's caption naming the attributes in ``named`` (default: all); the shape is always named."""
    named = set(ATTRIBUTES) if named is None else named | {"shape"}
    words = ["a photo of a"]
    if "size" in named:
        words.append(scene.size)
    if "color" in named:
        words.append(scene.color)
    words.append(scene.shape)
    if "position" in named:
        words.append(POSITION_WORDS[scene.position])
    if "background" in named:
        words.append(f"on a {scene.background} background")
    return " ".join(words)


def random_caption(scene: Scene, rng: random.Random, drop: float = 0.3) -> tuple[str, set[str]]:
    """A caption with each optional attribute left out with probability ``drop``, and which it names."""
    named = {a for a in ATTRIBUTES if a == "shape" or rng.random() >= drop}
    return caption(scene, named), named


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a prompt asks for (words outside the grammar, e.g. an identifier, are ignored):
    ``"a photo of a sks red circle on the left"`` → ``{"color": "red", "shape": "circle", "position": "left"}``."""
    words = text.lower().split()
    asked: dict[str, str] = {}
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else ""
        if word in SHAPES:
            asked["shape"] = word
        elif word in SIZES:
            asked["size"] = word
        elif word in PATTERNS and word != "plain":
            asked["pattern"] = word
        elif word in BACKGROUNDS and following == "background":
            asked["background"] = word
        elif word in COLORS:
            asked["color"] = word
        elif word in POSITIONS and i > 0 and words[i - 1] == "the":
            asked["position"] = word
    return asked


def render(scene: Scene, resolution: int = 32, supersample: int = 8) -> Image.Image:
    """The scene as an RGB image of ``resolution`` pixels."""
    size = resolution * supersample
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    radius = size * (0.17 if scene.size == "small" else 0.3)
    cx = size * ({"left": 0.27, "middle": 0.5, "right": 0.73}[scene.position] + scene.jitter_x)
    cy = size * (0.5 + scene.jitter_y)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if scene.shape == "circle":
        draw.ellipse(box, fill=255)
    elif scene.shape == "square":
        draw.rectangle(box, fill=255)
    else:
        draw.polygon([(cx, cy - radius), (cx + radius, cy + radius * 0.8), (cx - radius, cy + radius * 0.8)], fill=255)
    image.paste(_surface(scene, size, radius), (0, 0), mask)
    return image.resize((resolution, resolution), Image.Resampling.BOX)


def _surface(scene: Scene, size: int, radius: float) -> Image.Image:
    """The object's colour with its pattern (cells scale with the object)."""
    base, light = COLORS[scene.color], (250, 250, 250)
    surface = Image.new("RGB", (size, size), base)
    if scene.pattern == "plain":
        return surface
    draw = ImageDraw.Draw(surface)
    cell = max(2, int(radius / 2.5))
    for y in range(0, size, cell):
        for x in range(0, size, cell):
            i, j = x // cell, y // cell
            light_cell = {"checkered": (i + j) % 2, "striped": j % 2}.get(scene.pattern, 0)
            if light_cell:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=light)
            elif scene.pattern == "dotted" and i % 2 and j % 2:
                draw.ellipse((x, y, x + cell - 1, y + cell - 1), fill=light)
    return surface


def scenes(seed: int, count: int, pattern: str = "plain", **fixed: str) -> list[Scene]:
    """``count`` scenes; scene i depends only on (seed, i)."""
    return [sample_scene(random.Random(f"{seed}:{i}"), pattern, **fixed) for i in range(count)]


def with_attribute(scene: Scene, **changes: str) -> Scene:
    return replace(scene, **changes)
