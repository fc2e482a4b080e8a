"""Each stream protocol of the node as sans-IO code: its ID, its limits, and the order its messages may come
in, written once as a transition table (h11's ``_state.py`` is the model). The services that speak a protocol
(the worker and requester of ``/hyperion/task/1``, the verifier and asker of ``/hyperion/verify/2``, both sides
of ``/hyperion/dialback/1``) hold a :class:`~hyperion_node.protocols.machine.Conversation` and tell it every
message they send and receive; one out of order is a :class:`ProtocolViolation` (the remote's fault: the
stream is dropped and the offence counted; the answering side, and a task's requester, also score the peer
down, while an asker that gets a bad answer drops it and tries elsewhere) or, for what we send, an
``InternalError``.

No module here imports trio, sockets or libp2p.
"""
