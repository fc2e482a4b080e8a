"""Signed proof-of-work receipts, the hash-chained ledger, settlement epochs, rewards and reputation.

Pure modules (no trio, no sockets, no database): ``receipt``, ``dispute``, ``merkle``, ``epochs``,
``rewards``, ``reputation``, ``messages``, ``codec``, ``signing``, ``money``, ``exceptions``. ``chain`` keeps
the ledger in the node's store; ``service`` is the daemon component around it. Import from the submodules:
this package imports nothing itself, so that using a pure module never pulls in the store or trio.
"""
