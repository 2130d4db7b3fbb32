# Slotted classes seen from C: the compiled twins read and write the fields of slotted
# dataclasses (ClientOp, OpResult) at their fixed offsets, skipping the frozen __setattr__
# and the keyword __init__ that cost more than the rest of a decoded op or an ack.
from cpython.object cimport PyObject, PyTypeObject

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        const char* name
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    PyObject* PyType_GenericAlloc(PyTypeObject*, Py_ssize_t) except NULL


cdef inline Py_ssize_t member_offset(type cls, str name) except -2:
    """Offset of slot ``name`` in instances of ``cls``; -1 when it is not a plain slot."""
    import types  # called while a module initialises only

    d = cls.__dict__.get(name)
    if d is None or type(d) is not types.MemberDescriptorType:
        return -1
    return (<PyMemberDescrObject*>d).d_member.offset
