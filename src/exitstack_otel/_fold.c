/* The in-process histograms' fold of a batch, compiled: sdk_histograms.HistogramSeries._fold's
   fast path in one pass instead of a sort.

   It answers what that path answers, exactly, or None for the Python code to do it: a batch of
   floats only (or of ints only) with every value in [0, inf), counted into the buckets as
   bisect_left(boundaries, value) counts it, summed in the order the values came (what one
   record() per value adds), and the first of the lowest and of the highest values kept. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#define MAX_BUCKETS 64

/* bisect_left over the boundaries: the first index whose boundary is >= value */
static inline Py_ssize_t
bucket_of(const double *bounds, Py_ssize_t nbounds, double value)
{
    Py_ssize_t low = 0, high = nbounds;
    while (low < high) {
        Py_ssize_t mid = (low + high) / 2;
        if (bounds[mid] < value) {
            low = mid + 1;
        }
        else {
            high = mid;
        }
    }
    return low;
}

/* an int that a double holds exactly, as a long long; -1 (no error set) where it is not one */
static int
exact_int(PyObject *value, long long *as_long)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (overflow || v > (1LL << 53) || v < -(1LL << 53)) {
        return -1;
    }
    *as_long = v;
    return 0;
}

/* item as a double, if it is of the batch's kind: a float, or an int that a double holds */
static inline int
value_of(PyObject *item, int floats, double *value)
{
    long long whole;
    if (floats) {
        if (!PyFloat_CheckExact(item)) {
            return -1;
        }
        *value = PyFloat_AS_DOUBLE(item);
        return 0;
    }
    if (!PyLong_CheckExact(item) || exact_int(item, &whole) < 0) {
        return -1;
    }
    *value = (double)whole;
    return 0;
}

/* fold_batch(values, boundaries, counts, start_sum): (sum, lowest, highest) with counts added
   into, or None (counts untouched) for the Python code */
static PyObject *
fold_batch(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyList_CheckExact(args[0]) || !PyTuple_CheckExact(args[1])
        || !PyList_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "fold_batch(values: list, boundaries: tuple, counts: list, start_sum)");
        return NULL;
    }
    PyObject *values = args[0], *boundaries = args[1], *counts = args[2], *start = args[3];
    Py_ssize_t n = PyList_GET_SIZE(values), nbounds = PyTuple_GET_SIZE(boundaries);
    if (n == 0 || nbounds >= MAX_BUCKETS || PyList_GET_SIZE(counts) != nbounds + 1) {
        Py_RETURN_NONE;
    }
    double bounds[MAX_BUCKETS];
    for (Py_ssize_t i = 0; i < nbounds; i++) {
        PyObject *bound = PyTuple_GET_ITEM(boundaries, i);
        if (!PyFloat_CheckExact(bound)) {
            Py_RETURN_NONE;
        }
        bounds[i] = PyFloat_AS_DOUBLE(bound);
    }
    Py_ssize_t added[MAX_BUCKETS] = {0};
    int floats = PyFloat_CheckExact(PyList_GET_ITEM(values, 0));
    /* the sum's start: a float batch adds onto float(start) (int + float is float(int) + float),
       an int batch onto an int */
    double float_sum = 0.0;
    long long int_sum = 0;
    if (floats && PyFloat_CheckExact(start)) {
        float_sum = PyFloat_AS_DOUBLE(start);
    }
    else if (floats && PyLong_CheckExact(start)) {
        float_sum = PyLong_AsDouble(start);
        if (float_sum == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    else if (floats || !PyLong_CheckExact(start) || exact_int(start, &int_sum) < 0) {
        Py_RETURN_NONE;
    }
    double value, low = 0.0, high = 0.0;
    Py_ssize_t lowest = 0, highest = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* what record() accepts, [0, inf); NaN fails both */
        if (value_of(PyList_GET_ITEM(values, i), floats, &value) < 0 || !(value >= 0.0 && value < INFINITY)) {
            Py_RETURN_NONE;
        }
        if (i == 0 || value < low) {
            low = value;
            lowest = i;
        }
        if (i == 0 || value > high) {
            high = value;
            highest = i;
        }
    }
    /* only a batch the fast path takes is counted, and summed in the order the values came */
    for (Py_ssize_t i = 0; i < n; i++) {
        (void)value_of(PyList_GET_ITEM(values, i), floats, &value); /* checked above */
        if (floats) {
            float_sum += value;
        }
        else if (__builtin_add_overflow(int_sum, (long long)value, &int_sum)) {
            Py_RETURN_NONE; /* counts not touched yet */
        }
        added[bucket_of(bounds, nbounds, value)] += 1;
    }
    PyObject *total = floats ? PyFloat_FromDouble(float_sum) : PyLong_FromLongLong(int_sum);
    if (total == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i <= nbounds; i++) {
        if (added[i] == 0) {
            continue;
        }
        PyObject *more = PyLong_FromSsize_t(added[i]);
        PyObject *count = more == NULL ? NULL : PyNumber_Add(PyList_GET_ITEM(counts, i), more);
        Py_XDECREF(more);
        if (count == NULL) {
            Py_DECREF(total);
            return NULL;
        }
        PyList_SetItem(counts, i, count); /* steals count */
    }
    PyObject *result = PyTuple_Pack(3, total, PyList_GET_ITEM(values, lowest), PyList_GET_ITEM(values, highest));
    Py_DECREF(total);
    return result;
}

static PyMethodDef module_methods[] = {
    {"fold_batch", (PyCFunction)(void (*)(void))fold_batch, METH_FASTCALL,
     "fold_batch(values, boundaries, counts, start_sum): (sum, lowest, highest), counts added "
     "into; or None for the Python code."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot module_slots[] = {
#ifdef Py_GIL_DISABLED
    /* called with the series' lock held, on lists no other code changes meanwhile */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef fold_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "exitstack_otel._fold",
    .m_doc = "The in-process histograms' fold of a batch, compiled (see exitstack_otel.sdk_histograms).",
    .m_size = 0,
    .m_methods = module_methods,
    .m_slots = module_slots,
};

PyMODINIT_FUNC
PyInit__fold(void)
{
    return PyModuleDef_Init(&fold_module);
}
