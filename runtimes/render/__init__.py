"""Rendering with Blender (Cycles, CPU) as a subprocess: the ``render-blender`` runtime.

``BlenderRuntime(context)`` is the entry-point factory; ``pixels_sha256(png)`` recomputes a frame's
receipt hash from its PNG (``runtimes.render.png``), which is all a requester or verifier needs to check
a frame. ``driver.py`` and ``scenes/`` hold the scripts that run inside Blender.
"""

from __future__ import annotations

from runtimes.render.png import pixels_sha256
from runtimes.render.runtime import BlenderRuntime

__all__ = ["BlenderRuntime", "pixels_sha256"]
