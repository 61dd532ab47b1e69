"""The toy world: a synthetic text-to-image world small enough for a CPU, in which DreamBooth's effects
are real and measurable. ``world`` draws scenes and captions; ``oracle`` reads them back from pictures."""
