"""Content-addressed blobs: files too large for a frame (model files, scenes, proving keys), cut into
chunks, named by the hash of their manifest, served and fetched over ``/hyperion/blob/1``.

``manifest.py`` is the address and its checks (pure), ``store.py`` the files on disk (blocking),
``service.py`` the trio component that serves and fetches, and pulls models for ``hyperion-node models pull``.
"""
