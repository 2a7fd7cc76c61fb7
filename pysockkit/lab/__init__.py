"""The state lab: hold a real socket in any TCP state, on loopback, unprivileged.

``reproduce(state)`` builds the state with plain socket calls on 127.0.0.1
(or ::1), waits until the kernel reports it, and keeps it there until the
``with`` block ends.  No root, no firewall rule: each recipe uses only
what any user may do, and the kernel's own rules do the rest (a full accept queue drops a SYN; TCP_DEFER_ACCEPT drops a bare ACK; a
FIN cannot be sent while unsent data sits behind a zero window; a
half-closed connection stays half-closed).  ``docs/states.md`` explains
each recipe, the measured timings and the traps.

How each state is seen:

- ``"TCP_INFO"`` -- ``getsockopt(TCP_INFO)`` on the socket in the state.
  Used whenever there is a file descriptor to ask.
- ``"sock_diag"`` -- the kernel's socket table (NETLINK_SOCK_DIAG, exact
  lookup by 4-tuple, listener fallback detected).  Used for what has no
  descriptor: TIME_WAIT (a timewait sock) and SYN_RCVD request sockets.

Linux keeps a half-open connection as a *request socket* (state
``NEW_SYN_RECV`` = 12) until it is complete; sock_diag and ``ss`` report
it as ``SYN_RCVD`` (3) with inode 0.  ``reproduce(TcpState.NEW_SYN_RECV)``
therefore observes ``SYN_RCVD`` and says so in ``scene.note``.  A full
socket in SYN_RCVD, with a descriptor, comes only from a simultaneous open
whose SYN-ACK is lost; dropping it needs a socket filter and so
CAP_NET_ADMIN, which ``unshare -Urn`` grants in a private network
namespace: ``reproduce(TcpState.SYN_RCVD, on_fd=True)`` runs a helper
there and receives the socket's descriptor back over a Unix socket.

What lingers after the block: every socket the lab opened is closed, and
aborted (RST) where a FIN would leave an orphan behind.  A TIME_WAIT scene
leaves its timewait sock for 60 s (the kernel's fixed 2*MSL; nothing an
unprivileged process can shorten), which is the point of it.

Conversations: ``conversation(name)`` plays a whole scenario -- the
handshake, the four-way close, a lost final ACK, a keepalive probe, ...
(``conversations()`` lists them) -- in a private network namespace and
returns its :class:`pysockkit.Recording`: every segment, captured, beside
both ends' states (``docs/packets.md``).

Example::

    >>> import pysockkit as sk
    >>> with sk.lab.reproduce(sk.TcpState.CLOSE_WAIT) as scene:
    ...     print(scene.observed.name, scene.observed_by)
    ...     print(sk.tcp_info(scene.sock).state.name)
    CLOSE_WAIT TCP_INFO
    CLOSE_WAIT
    >>> print(sk.lab.states())  # doctest: +SKIP
    state         observed      by         needs          how
    LISTEN        LISTEN        TCP_INFO   -              bind() + listen()
    ...
"""

from __future__ import annotations

from .._conversation import ConversationTable, conversation, conversations
from ._build import reproduce
from ._netns import _lo_up as _lo_up  # tests bring lo up in their own namespaces
from .recipes import ALL_STATES, LabUnavailable, Recipe, RecipeTable, states
from .scene import Scene
from .survey import Outcome, Survey, survey

__all__ = [
    "ALL_STATES",
    "ConversationTable",
    "LabUnavailable",
    "Outcome",
    "Recipe",
    "RecipeTable",
    "Scene",
    "Survey",
    "conversation",
    "conversations",
    "reproduce",
    "states",
    "survey",
]
