/* The int a single lookup returns, without allocating one on every call.
 *
 * Rules of this file:
 *
 * - A single lookup (PrefixTable.most_specific / first_match) answers with a
 *   rule index, a Python int.  Rule indexes above 256 are not among
 *   CPython's cached small ints, so PyLong_FromLong allocates one, and the
 *   caller, who mostly looks at it once, frees it: ~110 of the call's
 *   ~450 instructions (callgrind, on the bench's keys and a one-prefix
 *   table), more than the lookup itself.
 * - acl_answer_int keeps the last such int in the table (*cache, one owned
 *   reference).  When that reference is the only one left -- every caller
 *   has let go of it -- no one else can see the object, so it is rewritten
 *   in place with the new value and returned again.  An int anyone still
 *   holds (in a variable, a list, a dict) has a reference count above 1 and
 *   is never touched: the lookup then allocates a fresh int and keeps that
 *   one instead.
 * - Only ints of one positive digit are rewritten (256 < v < 2**PyLong_SHIFT):
 *   the object keeps its size and sign, and only its digit changes.  Others
 *   (-1, 0..256, which CPython caches anyway, and the rest) come from
 *   PyLong_FromLong.
 * - It runs with the GIL held and calls no Python code between the count
 *   check and the rewrite.  Builds without a GIL (Py_GIL_DISABLED), where a
 *   count of 1 proves nothing, and CPython versions whose int layout this
 *   file does not know, always allocate.
 */
#ifndef ACL_ANSWER_H
#define ACL_ANSWER_H

#include <Python.h>
#include <stdint.h>

#if !defined(Py_GIL_DISABLED) && !defined(PYPY_VERSION)
#  if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#    define ACL_ANSWER_DIGIT(o) (((PyLongObject *)(o))->ob_digit[0])
#  elif PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030F0000
#    define ACL_ANSWER_DIGIT(o) (((PyLongObject *)(o))->long_value.ob_digit[0])
#  endif
#endif

/* 1 when this build rewrites answers in place (the tests check it is on
 * where it should be). */
#ifdef ACL_ANSWER_DIGIT
#define ACL_ANSWER_REUSES 1
#else
#define ACL_ANSWER_REUSES 0
#endif

/* A new reference to an int of value v; *cache is the table's kept int
 * (NULL at first, one owned reference after). */
static inline PyObject *acl_answer_int(PyObject **cache, int32_t v)
{
#ifdef ACL_ANSWER_DIGIT
    int one_digit = v > 256 && (int64_t)v < ((int64_t)1 << PyLong_SHIFT);
    PyObject *o = *cache;
    if (one_digit && o != NULL && Py_REFCNT(o) == 1) {
        ACL_ANSWER_DIGIT(o) = (digit)v;
        Py_INCREF(o);
        return o;
    }
    o = PyLong_FromLong(v);
    if (one_digit && o != NULL) {
        Py_XDECREF(*cache);     /* an int someone still holds: theirs now */
        Py_INCREF(o);
        *cache = o;
    }
    return o;
#else
    (void)cache;
    return PyLong_FromLong(v);
#endif
}

#endif
