"""Builds the scenes of tests/render/test_sandbox.py; runs inside Blender, never imported by the tests.

    blender --background --factory-startup --python tests/render/hostile_scenes.py -- OUT_DIR

Each scene is a grey plane under a sun, seen from above at 32x24 with 1 sample, frame range 1-1, plus one
thing a hostile peer would add, saved as OUT_DIR/<name>.blend with its paths exactly as written here
(``relative_remap=False``: Blender would otherwise rewrite absolute paths relative to the .blend):

    plain                  compositing on (Render Layers -> Composite), nothing else
    absolute-image         an image texture read from /etc/hostname, not packed
    parent-image           an image texture read from //../x.png (outside the job directory), not packed
    packed-image           a red image texture packed into the .blend, its path pointing nowhere
    file-output-absolute   a compositor File Output node writing to OUT_DIR/escape-absolute/
    file-output-parent     a File Output node writing to //../escape-parent/ (beside the job directory)
    library                an object linked from OUT_DIR/lib.blend
    font                   a text object in a font read from OUT_DIR/font.woff2 (a copy of Blender's own)
    freestyle              a Freestyle style module (Python) that writes OUT_DIR/freestyle-ran
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import bpy


def base() -> tuple[Any, Any]:
    """A fresh scene with the plane, its material, a sun and a camera; (scene, material)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.frame_start = scene.frame_end = 1
    scene.render.engine = "CYCLES"
    scene.render.resolution_x, scene.render.resolution_y = 32, 24
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False  # Debian's Blender has no OpenImageDenoise: the controls render as saved
    bpy.ops.mesh.primitive_plane_add(size=4)
    material = bpy.data.materials.new("Surface")
    material.use_nodes = True
    material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (0.5, 0.5, 0.5, 1.0)
    bpy.context.object.data.materials.append(material)
    bpy.ops.object.light_add(type="SUN", location=(0, 0, 5))
    bpy.context.object.data.energy = 3.0
    bpy.ops.object.camera_add(location=(0, 0, 6), rotation=(0, 0, 0))
    scene.camera = bpy.context.object
    return scene, material


def textured(material: Any, image: Any) -> None:
    nodes = material.node_tree.nodes
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = image
    material.node_tree.links.new(texture.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"])


def file_image(name: str, path: str) -> Any:
    """An image datablock that reads ``path`` (which need not exist while building)."""
    image = bpy.data.images.new(name, 4, 4)
    image.source = "FILE"
    image.filepath = path
    return image


def file_output(scene: Any, base_path: str) -> None:
    scene.use_nodes = True
    tree = scene.node_tree
    node = tree.nodes.new("CompositorNodeOutputFile")
    node.base_path = base_path
    tree.links.new(tree.nodes["Render Layers"].outputs["Image"], node.inputs[0])


def save(out: str, name: str) -> None:
    bpy.ops.wm.save_as_mainfile(filepath=os.path.join(out, f"{name}.blend"), relative_remap=False, compress=False)


def main(out: str) -> None:
    scene, _ = base()
    scene.use_nodes = True
    save(out, "plain")

    _, material = base()
    textured(material, file_image("hostname", "/etc/hostname"))
    save(out, "absolute-image")

    _, material = base()
    textured(material, file_image("outside", "//../x.png"))
    save(out, "parent-image")

    _, material = base()
    red = bpy.data.images.new("red", 4, 4)
    red.pixels = [1.0, 0.0, 0.0, 1.0] * 16
    red.pack()
    red.filepath = "/nonexistent/red.png"  # packed data is read from the .blend whatever the path says
    textured(material, red)
    assert red.packed_file is not None
    assert red.source == "FILE", red.source
    save(out, "packed-image")

    scene, _ = base()
    file_output(scene, os.path.join(out, "escape-absolute") + os.sep)
    save(out, "file-output-absolute")

    scene, _ = base()
    file_output(scene, "//../escape-parent/")
    save(out, "file-output-parent")

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_cube_add(size=1)
    bpy.context.object.name = "Borrowed"
    save(out, "lib")
    scene, _ = base()
    with bpy.data.libraries.load(os.path.join(out, "lib.blend"), link=True) as (_, linked):
        linked.objects = ["Borrowed"]
    scene.collection.objects.link(linked.objects[0])
    save(out, "library")

    scene, _ = base()
    font_path = os.path.join(out, "font.woff2")
    shutil.copyfile(os.path.join(bpy.utils.system_resource("DATAFILES"), "fonts", "DejaVuSans.woff2"), font_path)
    bpy.ops.object.text_add(location=(0, 0, 0.1))
    bpy.context.object.data.font = bpy.data.fonts.load(font_path)
    save(out, "font")

    scene, _ = base()
    scene.render.use_freestyle = True
    settings = scene.view_layers[0].freestyle_settings
    settings.mode = "SCRIPT"
    module = bpy.data.texts.new("style.py")
    module.write(f"open({os.path.join(out, 'freestyle-ran')!r}, 'w').write('ran')\n")
    settings.modules.new().script = module
    save(out, "freestyle")


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--") + 1])
