/* An unwind's first step, run as a spare task: eager.py's hot path, compiled.

   It does what eager.py's pure-Python path does (that path stays, and is tested, for wherever
   this does not build), at a fraction of the cost: PyIter_Send hands back what the coroutine
   returned with no StopIteration to make and catch, and the context copy is entered and left
   without a call through context.run(). Both paths store into the same private map of asyncio's
   running tasks, which eager.py checks before a spare first stands in. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    PyObject *current_tasks; /* asyncio.tasks._current_tasks, as eager.py found it */
    PyObject *pending;       /* eager.Pending */
} module_state;

static inline module_state *
get_state(PyObject *module)
{
    return (module_state *)PyModule_GetState(module);
}

/* A done future of value (a new reference, stolen), made by loop as asyncio makes them. */
static PyObject *
done_future(PyObject *loop, PyObject *value)
{
    PyObject *future = PyObject_CallMethod(loop, "create_future", NULL);
    if (future != NULL) {
        /* not PyObject_CallMethod(..., "O", value): that would unpack a tuple value */
        PyObject *set_result = PyObject_GetAttrString(future, "set_result");
        PyObject *set = set_result == NULL ? NULL : PyObject_CallOneArg(set_result, value);
        Py_XDECREF(set_result);
        if (set == NULL) {
            Py_CLEAR(future);
        }
        Py_XDECREF(set);
    }
    Py_DECREF(value);
    return future;
}

/* first_step(loop, stand_in, coro, if_false)

   Sends None into coro once, in a copy of the current context, while stand_in is loop's current
   task. If coro ends: if_false when it returned False, else a done future of what it returned;
   what it raises is raised. If it suspends: Pending(None, coro, yielded, context). If it cannot
   start (loop runs no task now, or its task already is stand_in: this is an unwind started
   inside stand_in's own first step): Pending(None, coro, None, None), coro untouched. The
   request's task is loop's current task again whatever happened. */
static PyObject *
first_step(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "first_step() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *loop = args[0], *stand_in = args[1], *coro = args[2], *if_false = args[3];
    module_state *state = get_state(module);
    if (state->current_tasks == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "first_step() before setup()");
        return NULL;
    }

    PyObject *request = PyDict_GetItemWithError(state->current_tasks, loop); /* borrowed */
    if (request == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if (request == NULL || request == stand_in) {
        return PyObject_CallFunctionObjArgs(state->pending, Py_None, coro, Py_None, Py_None, NULL);
    }
    Py_INCREF(request);
    PyObject *context = PyContext_CopyCurrent();
    if (context == NULL) {
        Py_DECREF(request);
        return NULL;
    }
    if (PyDict_SetItem(state->current_tasks, loop, stand_in) < 0) {
        Py_DECREF(request);
        Py_DECREF(context);
        return NULL;
    }
    PyObject *value = NULL;
    PySendResult sent = PYGEN_ERROR;
    int entered = PyContext_Enter(context) == 0;
    if (entered) {
        sent = PyIter_Send(coro, Py_None, &value);
    }

    /* the request's task and context back, what the send raised kept aside meanwhile */
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *raised = sent == PYGEN_ERROR ? PyErr_GetRaisedException() : NULL;
#else
    PyObject *raised_type = NULL, *raised = NULL, *raised_tb = NULL;
    if (sent == PYGEN_ERROR) {
        PyErr_Fetch(&raised_type, &raised, &raised_tb);
    }
#endif
    int restored = PyDict_SetItem(state->current_tasks, loop, request);
    Py_DECREF(request);
    if (restored == 0 && entered) {
        restored = PyContext_Exit(context);
    }
    if (restored < 0) {
        /* only when memory runs out; the send's own outcome is lost with it */
        Py_XDECREF(value);
#if PY_VERSION_HEX >= 0x030C0000
        Py_XDECREF(raised);
#else
        Py_XDECREF(raised_type);
        Py_XDECREF(raised);
        Py_XDECREF(raised_tb);
#endif
        Py_DECREF(context);
        return NULL;
    }
    if (sent == PYGEN_ERROR) {
#if PY_VERSION_HEX >= 0x030C0000
        PyErr_SetRaisedException(raised);
#else
        PyErr_Restore(raised_type, raised, raised_tb);
#endif
        Py_DECREF(context);
        return NULL;
    }
    if (sent == PYGEN_RETURN) {
        Py_DECREF(context);
        if (value == Py_False) {
            Py_DECREF(value);
            return Py_NewRef(if_false);
        }
        return done_future(loop, value);
    }
    PyObject *pending = PyObject_CallFunctionObjArgs(state->pending, Py_None, coro, value, context, NULL);
    Py_DECREF(value);
    Py_DECREF(context);
    return pending;
}

/* setup(current_tasks, pending): the map first_step stores into, and what it answers with. */
static PyObject *
setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyDict_CheckExact(args[0]) || !PyType_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "setup(current_tasks: dict, pending: type)");
        return NULL;
    }
    module_state *state = get_state(module);
    Py_XSETREF(state->current_tasks, Py_NewRef(args[0]));
    Py_XSETREF(state->pending, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *state = get_state(module);
    Py_VISIT(state->current_tasks);
    Py_VISIT(state->pending);
    return 0;
}

static int
module_clear(PyObject *module)
{
    module_state *state = get_state(module);
    Py_CLEAR(state->current_tasks);
    Py_CLEAR(state->pending);
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyMethodDef module_methods[] = {
    {"first_step", (PyCFunction)(void (*)(void))first_step, METH_FASTCALL,
     "first_step(loop, stand_in, coro, if_false): coro's first step, run as stand_in."},
    {"setup", (PyCFunction)(void (*)(void))setup, METH_FASTCALL,
     "setup(current_tasks, pending): asyncio's running-task map and eager.Pending."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot module_slots[] = {
#ifdef Py_GIL_DISABLED
    /* the dict is thread-safe; the rest is the calling thread's own */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef first_step_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "exitstack_otel._first_step",
    .m_doc = "An unwind's first step, run as a spare task (see exitstack_otel.eager).",
    .m_size = sizeof(module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__first_step(void)
{
    return PyModuleDef_Init(&first_step_module);
}
