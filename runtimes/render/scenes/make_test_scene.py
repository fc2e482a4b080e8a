"""Builds the render runtime's test and benchmark scene; runs inside Blender, never imported by the node.

    blender --background --factory-startup --python runtimes/render/scenes/make_test_scene.py -- OUT.blend [--no-camera]

A ground plane, three objects with different materials, a sun and a point light, and a camera; the cube
moves and turns over frames 1-24, so every frame renders differently (the tests check that their pixel
hashes differ). Built from code rather than committed as a .blend so the repository holds no binaries and
the scene can be rebuilt by any Blender of the supported series. ``--no-camera`` leaves the camera out:
a scene that loads but cannot render, for the tests.
"""

from __future__ import annotations

import math
import sys

import bpy

FRAME_START, FRAME_END = 1, 24


def material(name: str, rgb: tuple[float, float, float], roughness: float, metallic: float = 0.0) -> bpy.types.Material:
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (*rgb, 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    bsdf.inputs["Metallic"].default_value = metallic
    return mat


def main(out: str, *, camera: bool = True) -> None:
    # Start from nothing: the factory scene's cube, light and camera would make the scene depend on
    # the factory startup file of whichever Blender built it.
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = FRAME_START, FRAME_END

    bpy.ops.mesh.primitive_plane_add(size=12, location=(0, 0, 0))
    bpy.context.object.data.materials.append(material("Ground", (0.55, 0.55, 0.5), 0.8))

    bpy.ops.mesh.primitive_cube_add(size=1.2, location=(-1.8, 0, 0.6))
    cube = bpy.context.object
    cube.data.materials.append(material("Red", (0.8, 0.1, 0.08), 0.4))
    # The animated object: a move across the frame and a half turn, keyed at both ends.
    for frame, x, angle in ((FRAME_START, -1.8, 0.0), (FRAME_END, 1.4, math.pi)):
        cube.location.x = x
        cube.rotation_euler.z = angle
        cube.keyframe_insert("location", frame=frame)
        cube.keyframe_insert("rotation_euler", frame=frame)

    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.7, location=(0.4, 1.6, 0.7), segments=32, ring_count=16)
    bpy.ops.object.shade_smooth()
    bpy.context.object.data.materials.append(material("Metal", (0.9, 0.8, 0.5), 0.25, metallic=1.0))

    bpy.ops.mesh.primitive_cylinder_add(radius=0.4, depth=1.6, location=(1.9, -1.2, 0.8))
    bpy.context.object.data.materials.append(material("Blue", (0.1, 0.25, 0.8), 0.5))

    bpy.ops.object.light_add(type="SUN", location=(4, -4, 8))
    sun = bpy.context.object
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(40), 0, math.radians(30))
    bpy.ops.object.light_add(type="POINT", location=(-3, -2, 3))
    bpy.context.object.data.energy = 400.0

    if camera:
        bpy.ops.object.camera_add(location=(0, -7.5, 4.2), rotation=(math.radians(63), 0, 0))
        scene.camera = bpy.context.object

    world = bpy.data.worlds.new("World")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.05, 0.06, 0.08, 1.0)
    scene.world = world

    scene.render.engine = "CYCLES"
    scene.render.resolution_x, scene.render.resolution_y = 160, 120
    bpy.ops.wm.save_as_mainfile(filepath=out, compress=False)


if __name__ == "__main__":
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    if len(argv) not in (1, 2) or argv[1:] not in ([], ["--no-camera"]):
        raise SystemExit("usage: blender -b --factory-startup --python make_test_scene.py -- OUT.blend [--no-camera]")
    main(argv[0], camera="--no-camera" not in argv)
