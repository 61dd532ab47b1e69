"""The toy world: a synthetic text-to-image world small enough for a CPU, in which DreamBooth's effects
are real and measurable (issue #7). ``world`` draws scenes and captions; more pieces follow."""
