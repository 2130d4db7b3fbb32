# cython: language_level=3
"""Compiled twin of :mod:`topgun.server._sessionpath_py` (same decoding, counting, dispatch,
reports and sends).

What a session's hub holds for every message (decoder, limits, processor table, receive
counters) is read once per hub and kept at C level; the message's kind comes from a table keyed
by its class.
"""

from cpython.object cimport PyObject
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem

import asyncio
import inspect

from topgun.server import _sessionpath_py

__all__ = ["on_message", "send_frame"]

cdef object _CLOSED = _sessionpath_py.SessionState.CLOSED
cdef object _OPEN = _sessionpath_py.SessionState.OPEN
cdef dict _RECEIVED_KEY = _sessionpath_py.RECEIVED_KEY
cdef dict _WIRE_NAME = _sessionpath_py.WIRE_NAME
cdef object _isawaitable = inspect.isawaitable
cdef object _ensure_future = asyncio.ensure_future
# message class -> its kind (``msg.TYPE`` is a class attribute: a lookup through the type's MRO)
cdef dict _KINDS = {}


cdef class _HubState:
    """What ``on_message`` reads of a hub: set when the hub is built and never rebound."""
    cdef object decode, limits
    cdef dict by_kind, received

    def __init__(self, hub):
        self.decode = hub.decode
        self.limits = hub.limits
        self.by_kind = hub.processors.by_kind
        self.received = hub.received


cdef _HubState _hub_state(hub):
    st = hub._path_state
    if type(st) is not _HubState:
        st = _HubState(hub)
        hub._path_state = st
    return <_HubState>st


def on_message(session, data):
    """One complete binary message from the transport (see the pure twin)."""
    cdef object state = session.state, msg, kind, handler, key, result
    cdef _HubState st
    cdef PyObject* p
    if state is _CLOSED:
        return
    st = _hub_state(session.hub)
    try:
        msg = st.decode(data, st.limits)
    except Exception as exc:
        session._on_decode_error(exc)
        return
    if state is _OPEN and session._task is None:
        p = PyDict_GetItem(_KINDS, type(msg))
        if p != NULL:
            kind = <object>p
        else:
            kind = msg.TYPE
            _KINDS[type(msg)] = kind
        p = PyDict_GetItem(st.by_kind, kind)
        if p != NULL:
            handler = <object>p
            key = _RECEIVED_KEY[kind]
            p = PyDict_GetItem(st.received, key)
            PyDict_SetItem(st.received, key, (<object>p + 1) if p != NULL else 1)
            try:
                result = handler(session, msg)
            except Exception as exc:
                session._report_failure(_WIRE_NAME[kind], exc)
                return
            if result is not None and _isawaitable(result):
                session._task = _ensure_future(session._run_queue(result))
            return
    session._on_decoded(msg, len(data))


def send_frame(session, data):
    """Queue one encoded frame; drop the connection if its outbound queue is over its bound."""
    cdef object send_bounded, conn
    if session.state is _CLOSED:
        return
    send_bounded = session._send_bounded
    if send_bounded is not None:
        if send_bounded(data, session._max_out_bytes, session._max_out_frames):
            session._slow_consumer()
        return
    conn = session.conn
    conn.send(data)
    if conn.outbound_bytes() > session._max_out_bytes or conn.outbound_frames() > session._max_out_frames:
        session._slow_consumer()
