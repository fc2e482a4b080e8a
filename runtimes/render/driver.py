"""Runs inside Blender (``blender --background SCENE --python driver.py -- JOB``); never imported by the node.

JOB is one JSON object (see ``runtimes.render.request.RenderRequest.driver_job``). The driver pins every
setting that changes pixels between runs or machines, renders the frames one by one into the job's output
directory, and reports on stdout, one line per event, each line ``@@hyperion-render@@ {json}``:

    {"event": "scene", "frame_start", "frame_end", "scene", "version", "build_hash", "settings"}
    {"event": "frame", "frame", "path", "seconds"}   after each frame's PNG is written
    {"event": "error", "kind", "message"}           then exit status 3
    {"event": "done"}

Kinds of error: "scene" (Blender did not load the file: it then carries on with its default scene, so
this check is what keeps a broken upload from rendering a default cube), "frame_range", "engine",
"render" (the scene loads but does not render: no camera, say). Anything else that raises is a bug here,
and ``--python-exit-code`` turns it into a non-zero exit.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import bpy

MARK = "@@hyperion-render@@"


def emit(event: str, **fields: Any) -> None:
    # flush: the node reads events as they happen; Blender's stdout is a pipe, so block-buffered.
    print(MARK, json.dumps({"event": event, **fields}), flush=True)


def fail(kind: str, message: str) -> None:
    emit("error", kind=kind, message=message)
    sys.stdout.flush()
    # os._exit: SystemExit inside --python is caught and reported by Blender, which then goes on to
    # quit normally; the node wants this run to stop here with a status it can tell apart.
    os._exit(3)


def pin_settings(scene: bpy.types.Scene, job: dict[str, Any]) -> dict[str, Any]:
    """Settings that decide the pixels, forced to the job's values; returned for the receipt's evidence."""
    render = scene.render
    render.engine = job["engine"]
    render.resolution_x, render.resolution_y = job["width"], job["height"]
    render.resolution_percentage = 100
    render.use_border = False
    # Fixed threads: the thread count is recorded with the result, and "auto" would differ per machine.
    render.threads_mode = "FIXED"
    render.threads = job["threads"]
    # Dithering adds noise when floats are quantised to 8 bits; off, so the bytes depend on the render only.
    render.dither_intensity = 0.0
    # Stamping burns the date and render time into the pixels.
    render.use_stamp = False
    render.use_file_extension = False
    image = render.image_settings
    image.file_format = "PNG"
    image.color_mode = "RGBA"
    image.color_depth = "8"
    pinned: dict[str, Any] = {
        "engine": job["engine"],
        "resolution": [job["width"], job["height"]],
        "threads": job["threads"],
        "dither": 0.0,
        "color": "RGBA8",
        "view_transform": scene.view_settings.view_transform,
    }
    if job["engine"] == "CYCLES":
        cycles = scene.cycles
        cycles.device = "CPU"
        cycles.samples = job["samples"]
        cycles.seed = job["seed"]
        cycles.use_animated_seed = False
        # Adaptive sampling stops pixels at a noise threshold measured on the run's own samples: on
        # by default, and a source of run-to-run differences when timing changes the tile order.
        cycles.use_adaptive_sampling = False
        # Debian's Blender is built without OpenImageDenoise: denoising (on by default) fails the render.
        cycles.use_denoising = False
        scene.view_layers[0].cycles.denoising_store_passes = False
        cycles.use_auto_tile = False
        pinned.update(device="CPU", samples=job["samples"], seed=job["seed"], animated_seed=False,
                      adaptive_sampling=False, denoising=False, auto_tile=False)
    else:
        scene.eevee.taa_render_samples = job["samples"]
        pinned.update(samples=job["samples"])
    return pinned


def main(job: dict[str, Any]) -> None:
    if os.path.abspath(bpy.data.filepath or "") != os.path.abspath(job["scene"]):
        fail("scene", "Blender could not read the scene file (not a .blend, truncated, or from a newer Blender)")
    scene = bpy.context.scene
    try:
        scene.render.engine = job["engine"]
    except TypeError:  # bpy's answer to an enum value it does not have
        fail("engine", f"this Blender has no render engine {job['engine']!r}")
    start, end = job["frame_start"], job["frame_end"]
    if not scene.frame_start <= start <= end <= scene.frame_end:
        fail("frame_range", f"frames {start}-{end} are outside the scene's range {scene.frame_start}-{scene.frame_end}")
    settings = pin_settings(scene, job)
    emit("scene", frame_start=scene.frame_start, frame_end=scene.frame_end, scene=scene.name,
         version=bpy.app.version_string, build_hash=bpy.app.build_hash.decode(errors="replace"), settings=settings)
    for frame in range(start, end + 1):
        began = time.perf_counter()
        scene.frame_set(frame)
        path = os.path.join(job["output_dir"], f"frame_{frame:06d}.png")
        scene.render.filepath = path
        try:
            bpy.ops.render.render(write_still=True)
        except RuntimeError as exc:  # Blender's report on a scene it cannot render: no camera, a bad node
            fail("render", f"Blender cannot render frame {frame} of this scene: {str(exc).strip()}")
        emit("frame", frame=frame, path=path, seconds=round(time.perf_counter() - began, 4))
    emit("done")


main(json.loads(sys.argv[sys.argv.index("--") + 1]))
