# C-level clock and timestamp comparison shared by the compiled twins.
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_SIZE, PyTuple_GET_ITEM
from cpython.long cimport PyLong_CheckExact
from cpython.unicode cimport PyUnicode_Compare

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1


cdef long long c_wall_ms() noexcept nogil
cdef int ts_cmp_slow(object a, object b) except -2
cdef bint ts_fields(object remote, long long* rm, long long* rc) except -1


cdef inline int ts_cmp(object a, object b) except -2:
    """-1/0/1 comparing two timestamps by (millis, counter, node_id) without building tuples."""
    cdef object am, bm, ac, bc, an, bn
    cdef long long x, y
    cdef int ovf = 0
    if PyTuple_Check(a) and PyTuple_Check(b) and PyTuple_GET_SIZE(a) >= 3 and PyTuple_GET_SIZE(b) >= 3:
        am = <object>PyTuple_GET_ITEM(a, 0)
        bm = <object>PyTuple_GET_ITEM(b, 0)
        ac = <object>PyTuple_GET_ITEM(a, 1)
        bc = <object>PyTuple_GET_ITEM(b, 1)
        if PyLong_CheckExact(am) and PyLong_CheckExact(bm) and PyLong_CheckExact(ac) and PyLong_CheckExact(bc):
            x = PyLong_AsLongLongAndOverflow(am, &ovf)
            if ovf == 0:
                y = PyLong_AsLongLongAndOverflow(bm, &ovf)
            if ovf == 0:
                if x != y:
                    return -1 if x < y else 1
                x = PyLong_AsLongLongAndOverflow(ac, &ovf)
                if ovf == 0:
                    y = PyLong_AsLongLongAndOverflow(bc, &ovf)
                if ovf == 0:
                    if x != y:
                        return -1 if x < y else 1
                    an = <object>PyTuple_GET_ITEM(a, 2)
                    bn = <object>PyTuple_GET_ITEM(b, 2)
                    if an is bn:
                        return 0
                    if type(an) is str and type(bn) is str:
                        return PyUnicode_Compare(an, bn)
    return ts_cmp_slow(a, b)


cdef class HLC:
    cdef readonly str node_id
    cdef public long long max_drift_ms
    cdef public bint strict
    cdef object _wall
    cdef long long _millis
    cdef long long _counter

    cdef long long _now_ms(self) except? -1
    cdef int c_update(self, object remote) except -1
    cdef int c_advance(self, long long rm, long long rc, long long t) except -1
    cdef object c_now(self)
