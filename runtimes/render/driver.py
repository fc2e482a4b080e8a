"""Runs inside Blender (``blender --background --python driver.py -- JOB``); never imported by the node.

JOB is one JSON object (see ``runtimes.render.request.RenderRequest.driver_job``). The driver opens the
scene, audits it (the sandbox, below), pins every setting that changes pixels between runs or machines,
renders the frames one by one into the job's output directory, and reports on stdout, one line per event,
each line ``@@hyperion-render@@ {json}``:

    {"event": "scene", "frame_start", "frame_end", "scene", "version", "build_hash", "settings", "sandbox"}
    {"event": "frame", "frame", "path", "seconds"}   after each frame's PNG is written
    {"event": "error", "kind", "message"}           then exit status 3
    {"event": "done"}

Kinds of error: "scene" (Blender did not read the file: garbage, truncated, from a newer Blender),
"unsafe" (the sandbox refused the scene), "frame_range", "engine", "render" (the scene loads but does not
render: no camera, say). Anything else that raises is a bug here, and exits with status 2.

The sandbox. The scene comes from a peer on the open internet; it must neither read nor write a file
outside its job directory (the worker's keys, other jobs' scenes), nor run code. ``--disable-autoexec``
already keeps drivers and registered text blocks from running; the rest is this audit, in two halves:

* What writes files is removed, because the frame we return is the render result, and a writer only ever
  adds files: File Output nodes (from every node tree), compositing (``scene.use_nodes`` and
  ``render.use_compositing``), the sequencer (``render.use_sequencer``), the EXR render cache
  (``render.use_render_cache``, written to the temporary directory), and every scene's output path is
  pointed into the job's output directory. Paths that Blender never reads during a render (a text's
  external file, a brush icon, an uncached ocean's bake directory) are cleared as well. Clearing these
  cannot make a render read anything. The catch is that a scene whose look comes from its compositor or
  sequencer renders without them, and the receipt's settings say so ("compositing": false).
* What reads a file outside the .blend is refused, because no clearing makes such a scene render as its
  author meant: an image, font, sound or volume that is not packed, a movie clip, an Alembic/USD cache
  file, a linked library, a mesh-cache, multires or cached-ocean file, a fluid domain or a point cache on
  disk, an image or movie strip, an external IES file. OSL script nodes and Freestyle style modules are
  refused too: OSL's texture() opens any path it is given, and Freestyle runs its modules' Python even
  under ``--disable-autoexec`` (Blender 3.4.1, checked: a module's open(...) wrote its file). A refusal
  fails the task with the datablock and the path; packed data is accepted, it is inside the .blend.
  Every path is refused alike, absolute, parent-relative (``//../``) or relative: the job directory
  holds only the scene, so a relative path either finds nothing or the node's own files.

When: Blender evaluates a scene as soon as it has read it (fonts, mesh caches, volumes and simulations
open their files then; strace shows it), so the audit cannot come after loading. The driver starts with
no scene, opens it with ``wm.open_mainfile``, and audits from a ``load_post`` handler, which Blender 3.4
calls after reading the file and before that first evaluation (``wm_file_read_post``). What still
happens before the audit is reading the .blend itself, which opens the .blend files of linked libraries
(Blender's reader, which rejects anything that is not a .blend): their data is refused before it can
reach a frame.

What the audit walks, from Blender 3.4's ``bpy.types.BlendData`` (every collection, with every
``FILE_PATH``/``DIR_PATH``/``FILENAME`` string property that their types and nested types hold, listed
by walking ``bl_rna``): libraries, images, fonts, sounds, movieclips, cache_files, volumes (their
``filepath``), texts (``filepath``), brushes (``icon_filepath``); objects' modifiers (MeshCache,
Multires, Ocean, Fluid, and the point caches of Cloth, Soft Body, Dynamic Paint and particle systems),
scenes' rigid body caches, sequencer strips and Freestyle settings; the nodes of every node tree
(``ShaderNodeScript``, ``ShaderNodeTexIES``, ``CompositorNodeOutputFile``). Collections with no path of
their own (meshes, materials, worlds, ...) reach files only through the datablocks above. Paths that are
not read during a render are left alone: ``BakeSettings.filepath`` and Dynamic Paint's
``image_output_path`` (used by bake operators only), sequencer proxies (with the sequencer off),
``LibraryWeakReference.filepath`` (a name for re-use on append), and the UI's file-browser paths. Last,
``bpy.utils.blend_paths`` (Blender's own list of external files, the one File > External Data uses)
backs the walk up: a path it lists that the walk let through refuses the scene.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

import bpy

MARK = "@@hyperion-render@@"
# Image sources that Blender reads from a file (bpy.types.Image.source); GENERATED and VIEWER are made in memory.
FILE_SOURCES = frozenset({"FILE", "SEQUENCE", "MOVIE", "TILED"})
# A VectorFont with this path is the font compiled into Blender (bpy.types.VectorFont.filepath).
BUILTIN_FONT = "<builtin>"
# Findings named in the one-line refusal; the rest are counted. A scene may hold thousands of images.
SHOWN_FINDINGS = 3
# Names and paths come from the peer: quoted, escaped (repr) and cut so the message stays one line.
SHOWN_CHARS = 160


def emit(event: str, **fields: Any) -> None:
    # flush: the node reads events as they happen; Blender's stdout is a pipe, so block-buffered.
    print(MARK, json.dumps({"event": event, **fields}), flush=True)


def fail(kind: str, message: str) -> None:
    emit("error", kind=kind, message=message)
    sys.stdout.flush()
    # os._exit: SystemExit inside --python is caught and reported by Blender, which then goes on to
    # quit normally; the node wants this run to stop here with a status it can tell apart.
    os._exit(3)


def shown(text: str) -> str:
    quoted = repr(text)
    return quoted if len(quoted) <= SHOWN_CHARS else quoted[: SHOWN_CHARS - 4] + "...'"


class Sandbox:
    """One audit of the loaded ``bpy.data``: what it refuses (one line each) and what it cleared."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir
        self.refused: list[str] = []
        self.cleared: list[str] = []

    def reads(self, what: str, path: str, how: str = "reads") -> None:
        self.refused.append(f"{what} {how} {shown(path)}")

    def run(self) -> list[str]:
        """Refuse (exit) or return what was cleared; see the module docstring for the reasons."""
        self.datablocks()
        self.objects()
        self.scenes()
        self.node_trees()
        if not self.refused:
            # After the clearing above, so that what was cleared is not listed. packed=False leaves packed data
            # out (in 3.4 its docstring says the opposite; checked: a packed image is listed with packed=True).
            # An empty path names no file: Blender lists one for an ocean or a volume that has none.
            for path in bpy.utils.blend_paths(absolute=False, packed=False, local=False):
                if path:
                    self.reads("the scene (Blender lists an external file)", path, how="at")
        if self.refused:
            more = len(self.refused) - SHOWN_FINDINGS
            fail("unsafe", "the scene uses files outside the .blend or runs code: "
                 + "; ".join(self.refused[:SHOWN_FINDINGS]) + (f" (and {more} more)" if more > 0 else ""))
        return self.cleared

    def datablocks(self) -> None:
        for library in bpy.data.libraries:
            # Refused even when packed (Library.packed_file): linking is the way a scene pulls in other files.
            self.reads(f"library {shown(library.name)}", library.filepath, how="links")
        for image in bpy.data.images:
            if image.source in FILE_SOURCES and image.filepath and not image_is_packed(image):
                self.reads(f"image {shown(image.name)}", image.filepath)
        for font in bpy.data.fonts:
            if font.filepath != BUILTIN_FONT and font.packed_file is None:
                self.reads(f"font {shown(font.name)}", font.filepath)
        for sound in bpy.data.sounds:
            if sound.filepath and sound.packed_file is None:
                self.reads(f"sound {shown(sound.name)}", sound.filepath)
        # OpenVDB grids; a volume with no path (filled by modifiers or nodes) reads nothing.
        for volume in bpy.data.volumes:
            if volume.filepath and volume.packed_file is None:
                self.reads(f"volume {shown(volume.name)}", volume.filepath)
        # Movie clips and Alembic/USD cache files cannot be packed: a path is always a file on disk.
        for clip in bpy.data.movieclips:
            if clip.filepath:
                self.reads(f"movie clip {shown(clip.name)}", clip.filepath)
        for cache in bpy.data.cache_files:
            if cache.filepath:
                self.reads(f"cache file {shown(cache.name)}", cache.filepath)
        # A text's content is saved in the .blend and only an operator reloads it from its file (strace: no
        # open on load or render); its path goes so that blend_paths does not list it.
        for text in bpy.data.texts:
            if text.filepath:
                self.cleared.append(f"path of text {shown(text.name)} ({shown(text.filepath)})")
                text.filepath = ""
        # A custom brush icon is loaded for the UI's previews only, never in the background.
        for brush in bpy.data.brushes:
            if brush.icon_filepath:
                self.cleared.append(f"icon path of brush {shown(brush.name)} ({shown(brush.icon_filepath)})")
                brush.use_custom_icon = False
                brush.icon_filepath = ""

    def objects(self) -> None:
        for obj in bpy.data.objects:
            owner = f"object {shown(obj.name)}"
            for modifier in obj.modifiers:
                what = f"{modifier.type.lower().replace('_', ' ')} modifier {shown(modifier.name)} of {owner}"
                if modifier.type == "MESH_CACHE" and modifier.filepath:
                    self.reads(what, modifier.filepath)
                elif modifier.type == "MULTIRES" and modifier.is_external:
                    self.reads(what, modifier.filepath)
                elif modifier.type == "OCEAN":
                    if modifier.is_cached:
                        self.reads(what, modifier.filepath)
                    elif modifier.filepath:  # the bake operator's directory: never read while not cached
                        self.cleared.append(f"bake path of {what} ({shown(modifier.filepath)})")
                        modifier.filepath = ""
                elif modifier.type == "FLUID" and modifier.fluid_type == "DOMAIN":
                    # Mantaflow reads and writes its simulation there on every frame change, baked or not.
                    self.reads(what, modifier.domain_settings.cache_directory, how="keeps its simulation in")
                elif modifier.type == "DYNAMIC_PAINT" and modifier.canvas_settings is not None:
                    for surface in modifier.canvas_settings.canvas_surfaces:
                        self.point_cache(f"surface {shown(surface.name)} of {what}", surface.point_cache)
                # Cloth and Soft Body keep theirs on the modifier.
                self.point_cache(what, getattr(modifier, "point_cache", None))
            for system in obj.particle_systems:
                what = f"particle system {shown(system.name)} of {owner}"
                self.point_cache(what, system.point_cache)
                if system.cloth is not None:  # hair dynamics
                    self.point_cache(f"hair dynamics of {what}", system.cloth.point_cache)

    def point_cache(self, what: str, cache: Any) -> None:
        if cache is None:
            return
        for item in cache.point_caches:  # the cache's list, itself included
            if item.use_external:
                self.reads(what, item.filepath, how="reads its point cache from")
            elif item.use_disk_cache:
                # Blender's disk cache directory: "blendcache_" and the .blend's name, beside it.
                name = os.path.splitext(os.path.basename(bpy.data.filepath))[0]
                self.reads(what, f"//blendcache_{name}/", how="keeps its point cache on disk in")

    def scenes(self) -> None:
        for scene in bpy.data.scenes:
            owner = f"scene {shown(scene.name)}"
            render = scene.render
            # All three are on in a new scene; listed as cleared only where they had something to do.
            if scene.use_nodes and render.use_compositing:
                self.cleared.append(f"compositing of {owner}")
            if render.use_sequencer and scene.sequence_editor is not None and scene.sequence_editor.sequences_all:
                self.cleared.append(f"sequencer of {owner}")
            if render.use_render_cache:
                self.cleared.append(f"render cache of {owner}")
            scene.use_nodes = render.use_compositing = render.use_sequencer = render.use_render_cache = False
            # The driver sets each frame's own path; until then no scene's output points anywhere else.
            render.filepath = self.output_dir + os.sep
            if scene.rigidbody_world is not None:
                self.point_cache(f"rigid body world of {owner}", scene.rigidbody_world.point_cache)
            if scene.sequence_editor is not None:
                for strip in scene.sequence_editor.sequences_all:  # meta strips' contents included
                    what = f"{strip.type.lower()} strip {shown(strip.name)} of {owner}"
                    if strip.type == "IMAGE":
                        first = strip.elements[0].filename if len(strip.elements) else ""
                        self.reads(what, os.path.join(strip.directory, first))
                    elif strip.type == "MOVIE":
                        self.reads(what, strip.filepath)
                    # Sound, movie clip and text strips use sound, clip and font datablocks: checked above.
            for layer in scene.view_layers:
                settings = layer.freestyle_settings
                if settings.mode != "SCRIPT":
                    continue
                for module in settings.modules:
                    if module.use and module.script is not None:
                        self.refused.append(f"view layer {shown(layer.name)} of {owner} runs the Freestyle "
                                            f"Python module {shown(module.script.name)}")

    def node_trees(self) -> None:
        trees = [(f"node group {shown(group.name)}", group) for group in bpy.data.node_groups]
        for kind, collection in (("material", bpy.data.materials), ("world", bpy.data.worlds),
                                 ("light", bpy.data.lights), ("scene", bpy.data.scenes),
                                 ("line style", bpy.data.linestyles), ("texture", bpy.data.textures)):
            trees += [(f"{kind} {shown(block.name)}", block.node_tree) for block in collection
                      if getattr(block, "node_tree", None) is not None]
        for owner, tree in trees:
            for node in list(tree.nodes):  # a copy: File Output nodes are removed while walking
                what = f"node {shown(node.name)} in {owner}"
                if node.bl_idname == "CompositorNodeOutputFile":
                    self.cleared.append(f"File Output {what} ({shown(node.base_path)})")
                    tree.nodes.remove(node)
                elif node.bl_idname == "ShaderNodeScript" and node.mode == "EXTERNAL":
                    self.reads(f"OSL script {what}", node.filepath)
                elif node.bl_idname == "ShaderNodeScript":
                    self.refused.append(f"OSL script {what} runs OSL code, which can open any file (texture())")
                elif node.bl_idname == "ShaderNodeTexIES" and node.mode == "EXTERNAL":
                    self.reads(f"IES {what}", node.filepath)


def image_is_packed(image: Any) -> bool:
    """Whether Blender reads all of the image from the .blend: for UDIMs, every tile is packed."""
    if not image.packed_files:
        return False
    if image.source == "TILED":
        packed = {item.tile_number for item in image.packed_files}
        return all(tile.number in packed for tile in image.tiles)
    return bool(image.source == "FILE")  # sequences and movies cannot be packed


def open_scene(job: dict[str, Any]) -> list[str]:
    """Open the scene with the sandbox run before Blender evaluates it; what the sandbox cleared."""
    audits: list[list[str]] = []

    def audit(*_args: Any) -> None:
        try:
            audits.append(Sandbox(job["output_dir"]).run())
        except BaseException:
            # Blender prints a handler's exception and carries on loading: that would render an unaudited
            # scene. A bug here stops the run instead, with the status of any other driver bug.
            traceback.print_exc()
            sys.stdout.flush()
            os._exit(2)

    # persistent: a plain handler is dropped when a file is loaded, before load_post is called.
    handler = bpy.app.handlers.persistent(audit)
    bpy.app.handlers.load_post.append(handler)
    try:
        # use_scripts=False: as --disable-autoexec, for this load too.
        bpy.ops.wm.open_mainfile(filepath=job["scene"], load_ui=True, use_scripts=False)
    except RuntimeError as exc:  # Blender's report: "Error: File format is not supported in file '...'"
        # The node's paths are not the requester's business: the file is "scene.blend" to them.
        reason = str(exc).strip().removeprefix("Error: ").replace(job["scene"], "scene.blend")
        fail("scene", f"Blender cannot read the scene: {reason}")
    finally:
        bpy.app.handlers.load_post.remove(handler)
    if os.path.abspath(bpy.data.filepath or "") != os.path.abspath(job["scene"]):
        fail("scene", "Blender could not read the scene file (not a .blend, truncated, or from a newer Blender)")
    if len(audits) != 1:  # fail closed: never render a scene the sandbox has not seen
        raise RuntimeError(f"the sandbox ran {len(audits)} times while the scene loaded, not once")
    return audits[0]


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
        # Turned off by the sandbox (see the module docstring): the frame is the render result as is.
        "compositing": bool(render.use_compositing and scene.use_nodes),
        "sequencer": bool(render.use_sequencer),
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
        # Also keeps Cycles from writing tiles to the temporary directory (it does so for tiled renders).
        cycles.use_auto_tile = False
        pinned.update(device="CPU", samples=job["samples"], seed=job["seed"], animated_seed=False,
                      adaptive_sampling=False, denoising=False, auto_tile=False)
    else:
        scene.eevee.taa_render_samples = job["samples"]
        pinned.update(samples=job["samples"])
    return pinned


def main(job: dict[str, Any]) -> None:
    cleared = open_scene(job)
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
         version=bpy.app.version_string, build_hash=bpy.app.build_hash.decode(errors="replace"), settings=settings,
         sandbox=cleared)
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
