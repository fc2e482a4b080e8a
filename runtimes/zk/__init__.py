"""Zero-knowledge proving: Groth16 on BN254, interoperable with snarkjs and circom (``zk-groth16``).

``Groth16Runtime(context)`` is the entry-point factory. ``prove_files(zkey, wtns, out_dir)`` proves from
files without a daemon and writes snarkjs's ``proof.json`` / ``public.json``; ``verify_files`` checks them
against a ``verification_key.json``.

Names are imported on first use: a proving worker process imports this package too, and should not pay
for trio and the runtime when all it runs is arithmetic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtimes.zk.files import prove_files, prove_wasm_files
    from runtimes.zk.runtime import Groth16Runtime, check_final
    from runtimes.zk.verifier import verify_files

_EXPORTS = {
    "Groth16Runtime": "runtimes.zk.runtime",
    "check_final": "runtimes.zk.runtime",
    "prove_files": "runtimes.zk.files",
    "prove_wasm_files": "runtimes.zk.files",
    "verify_files": "runtimes.zk.verifier",
}

__all__ = ["Groth16Runtime", "check_final", "prove_files", "prove_wasm_files", "verify_files"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
