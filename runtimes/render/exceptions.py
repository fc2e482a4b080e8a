"""Errors of the Blender render runtime, each saying who is at fault (see ``hyperion_node.errors``)."""

from __future__ import annotations

from hyperion_node.errors import EnvironmentProblem, HyperionError, RuntimeUnavailable, UserError


class BadRenderRequest(UserError):
    """A task payload that is not a render job this node accepts: a missing or mistyped field, a resolution,
    sample count or engine out of bounds. The message names the field and what was expected."""


class MalformedScene(BadRenderRequest):
    """The ``.blend`` bytes are not a scene Blender can read (garbage, truncated, from a newer Blender), are
    over the size limit, or do not match the SHA-256 the payload gives for them."""


class UnsafeScene(BadRenderRequest):
    """A scene the render sandbox refuses (``runtimes/render/driver.py``): it reads a file outside the .blend
    (an unpacked image, font, sound or volume, a movie clip, a linked library, a cache on disk) or runs code
    (OSL, Freestyle modules). The message names each datablock and its path; Blender rendered nothing."""


class FrameRangeError(BadRenderRequest):
    """The frame range is empty (end before start) or outside the scene's own frame range."""


class MalformedImage(HyperionError):
    """A PNG this node cannot decode. From our own Blender that is a bug; from a peer, the peer's fault:
    the caller decides, so this derives from the root only."""


class BlenderFailed(EnvironmentProblem):
    """Blender exited, crashed or was killed before finishing a scene it had read; carries its last output."""


class RenderTimeout(EnvironmentProblem):
    """Blender went silent for longer than the configured limit (loading the scene, or one frame) and was
    killed with its whole process group."""


__all__ = [
    "BadRenderRequest",
    "BlenderFailed",
    "FrameRangeError",
    "HyperionError",
    "MalformedImage",
    "MalformedScene",
    "RenderTimeout",
    "RuntimeUnavailable",
    "UnsafeScene",
]
